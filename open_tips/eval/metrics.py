"""Metric functions shared by the evaluation tasks (pure, on tensors)."""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """[C, C] counts, rows = ground truth, columns = prediction; ``ignore_index`` pixels are left out."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over classes that occur in the ground truth or the predictions."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    if not bool(present.any()):
        return float("nan")
    return float((true_positive[present] / union[present]).mean())


def pixel_accuracy(confusion: torch.Tensor) -> float:
    total = confusion.sum()
    return float(confusion.diag().sum() / total) if total > 0 else float("nan")


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    out = {}
    for k in ks:
        k_eff = min(k, scores.shape[1])
        top = scores.topk(k_eff, dim=1).indices
        out[f"top{k}"] = float((top == labels[:, None]).any(dim=1).float().mean())
    return out


def recall_at_k(similarity: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """similarity [Q, G]; positives bool [Q, G] (a query may have several correct gallery items). Recall@k =
    fraction of queries with a correct item among the k best."""
    out = {}
    order = similarity.argsort(dim=1, descending=True)
    hits = torch.gather(positives, 1, order)
    for k in ks:
        out[f"R@{k}"] = float(hits[:, :k].any(dim=1).float().mean())
    return out


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    if valid is None:
        valid = target > 0
    p, t = pred[valid].double(), target[valid].double()
    rmse = float(((p - t) ** 2).mean().sqrt())
    ratio = torch.maximum(p / t.clamp_min(1e-6), t / p.clamp_min(1e-6))
    return {"rmse": rmse, "delta1": float((ratio < 1.25).double().mean()),
            "abs_rel": float(((p - t).abs() / t.clamp_min(1e-6)).mean())}


def angular_errors(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """pred/target [..., 3] (normalised here); degrees."""
    pred = torch.nn.functional.normalize(pred.double(), dim=-1)
    target = torch.nn.functional.normalize(target.double(), dim=-1)
    cosine = (pred * target).sum(-1).clamp(-1.0, 1.0)
    angles = torch.rad2deg(torch.arccos(cosine))
    if valid is not None:
        angles = angles[valid]
    return {"angular_rmse": float((angles**2).mean().sqrt()), "angular_mean": float(angles.mean()),
            "within_11.25": float((angles < 11.25).double().mean())}
