"""Metric functions shared by the evaluation tasks: pure functions on tensors, no model, no I/O.

Conventions: segmentation labels are class indices with ``IGNORE`` (255) for unlabelled pixels; depth is in
metres with 0 (or any non-positive value) marking invalid pixels; normals are 3-vectors (normalised here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE
) -> torch.Tensor:
    """[C, C] int64 counts, rows = ground truth, columns = prediction. Pixels whose target is
    ``ignore_index`` (or outside 0..C-1) are left out; predictions outside 0..C-1 raise, since they would
    silently land in a wrong cell."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.numel()} pixels, target {target.numel()}")
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    pred, target = pred[keep], target[keep]
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted class outside 0..{num_classes - 1}")
    index = target * num_classes + pred
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()


def per_class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """[C] float64 IoU per class; NaN for classes absent from both ground truth and predictions."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp_min(1), torch.full_like(union, math.nan))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the ground truth or the predictions (mmseg's nanmean)."""
    iou = per_class_iou(confusion)
    present = ~iou.isnan()
    return float(iou[present].mean()) if bool(present.any()) else math.nan


def pixel_accuracy(confusion: torch.Tensor) -> float:
    total = confusion.sum()
    return float(confusion.diag().sum() / total) if total > 0 else math.nan


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, float]:
    return {"miou": mean_iou(confusion), "pixel_accuracy": pixel_accuracy(confusion)}


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Fraction of rows of ``scores`` [N, C] whose label is among the k highest scores, as ``top{k}``
    (k is capped at C: with 3 classes top-5 is 1)."""
    labels = labels.to(scores.device).long()
    out = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        out[f"top{k}"] = float((top == labels[:, None]).any(dim=1).float().mean())
    return out


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred.reshape(-1) == labels.reshape(-1).to(pred.device)).float().mean())


def recall_at_k(
    similarity: torch.Tensor, positives: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10), chunk: int = 1024
) -> dict[str, float]:
    """similarity [Q, G]; positives bool [Q, G] (a query may have several correct gallery items).
    R@k = fraction of queries with at least one correct item among their k most similar. Ties count
    pessimistically: a correct item ranks behind every wrong item of the same score, so that constant
    (e.g. collapsed) features score chance or below, never a perfect 1."""
    if similarity.shape != positives.shape:
        raise ValueError(
            f"similarity {tuple(similarity.shape)} and positives {tuple(positives.shape)} differ"
        )
    hits = torch.zeros(len(ks), dtype=torch.long)
    for start in range(0, similarity.shape[0], chunk):
        sim = similarity[start : start + chunk].float()
        pos = positives[start : start + chunk].to(sim.device)
        best_positive = sim.masked_fill(~pos, -math.inf).amax(dim=1, keepdim=True)
        # rank of the best positive = number of negatives scoring at least as high
        rank = ((sim >= best_positive) & ~pos).sum(dim=1)
        valid = pos.any(dim=1)
        for i, k in enumerate(ks):
            hits[i] += int(((rank < k) & valid).sum())
    return {f"R@{k}": float(hits[i]) / max(similarity.shape[0], 1) for i, k in enumerate(ks)}


def depth_metrics(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> dict[str, float]:
    """RMSE (metres), delta1 (fraction with max(p/t, t/p) < 1.25) and absolute relative error over the
    valid pixels (default: target > 0)."""
    if valid is None:
        valid = target > 0
    p, t = pred[valid].double(), target[valid].double()
    if p.numel() == 0:
        return {"rmse": math.nan, "delta1": math.nan, "abs_rel": math.nan}
    p = p.clamp_min(1e-6)  # a non-positive prediction is maximally wrong in ratio terms, not a division error
    ratio = torch.maximum(p / t, t / p)
    return {
        "rmse": float(((p - t) ** 2).mean().sqrt()),
        "delta1": float((ratio < 1.25).double().mean()),
        "abs_rel": float(((p - t).abs() / t).mean()),
    }


def angular_error_degrees(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between ``pred`` and ``target`` [..., 3] (both normalised here)."""
    pred = F.normalize(pred.double(), dim=-1)
    target = F.normalize(target.double(), dim=-1)
    # atan2(|a x b|, a . b) is accurate near 0 and 180 degrees, where arccos of a clamped dot product is not
    cross = torch.linalg.cross(pred, target, dim=-1).norm(dim=-1)
    return torch.rad2deg(torch.atan2(cross, (pred * target).sum(-1)))


def angular_errors(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> dict[str, float]:
    """Surface-normal metrics in degrees: mean, median, RMSE, and the fractions within 11.25 / 22.5 / 30
    degrees. ``valid`` [...] selects pixels (default: targets of non-zero length)."""
    if valid is None:
        valid = target.norm(dim=-1) > 0
    angles = angular_error_degrees(pred, target)[valid]
    if angles.numel() == 0:
        return {
            k: math.nan
            for k in (
                "angular_mean",
                "angular_median",
                "angular_rmse",
                "within_11.25",
                "within_22.5",
                "within_30",
            )
        }
    return {
        "angular_mean": float(angles.mean()),
        "angular_median": float(angles.median()),
        "angular_rmse": float((angles**2).mean().sqrt()),
        "within_11.25": float((angles < 11.25).double().mean()),
        "within_22.5": float((angles < 22.5).double().mean()),
        "within_30": float((angles < 30).double().mean()),
    }


# Metrics where a smaller value is better (report.compare marks the best run per row with these).
LOWER_IS_BETTER = frozenset({"rmse", "abs_rel", "angular_mean", "angular_median", "angular_rmse"})
