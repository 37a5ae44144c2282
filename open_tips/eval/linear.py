"""Linear classification probe on frozen CLS features, trained on cached features.

Protocol: features standardised with the training set's mean and std (what the BatchNorm in front of
DINOv2's linear head does at eval time); a small grid over learning rate x weight decay (AdamW, decoupled
weight decay) or over the L2 strength (L-BFGS), each fitted on 80 % of the training set and scored on the
other 20 %; the best setting is refitted on the whole training set and evaluated once on the test set.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from open_tips.eval.metrics import topk_accuracy


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train`` and ``others`` shifted and scaled by the training set's per-dimension mean and std."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).nan_to_num(1.0).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def train_linear(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    optimizer: str = "adamw",
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    epochs: int = 100,
    batch_size: int = 4096,
    seed: int = 0,
) -> nn.Linear:
    """A linear classifier fitted with cross-entropy. ``adamw``: ``epochs`` passes of mini-batches of
    ``batch_size`` (one full batch for small sets) under a cosine schedule; ``lbfgs``: full-batch L-BFGS
    with strong Wolfe line search and an L2 penalty ``weight_decay`` / 2 * |W|^2 (``lr`` unused)."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(features.shape[1], num_classes).to(features.device)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=generator)
        layer.bias.zero_()
    labels = labels.long().to(features.device)
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            layer.parameters(),
            lr=1.0,
            max_iter=epochs,
            history_size=20,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(layer(features), labels) + 0.5 * weight_decay * layer.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return layer
    if optimizer != "adamw":
        raise ValueError(f"optimizer must be adamw or lbfgs, got {optimizer!r}")
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-features.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps_per_epoch))
    for _ in range(epochs):
        order = torch.randperm(features.shape[0], generator=generator).to(features.device)
        for start in range(0, features.shape[0], batch_size):
            index = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(layer(features[index]), labels[index]).backward()
            opt.step()
            schedule.step()
    return layer


def linear_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    optimizer: str = "adamw",
    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1),
    weight_decays: tuple[float, ...] = (1e-4, 1e-2, 1e-1),
    epochs: int = 100,
    held_out: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """top-1 / top-5 test accuracy of the best grid setting (chosen on a held-out part of the training
    set); the chosen setting and its held-out accuracy go under ``settings``."""
    train_x, test_x = standardise(train_features.float(), test_features.float())
    train_y, test_y = train_labels.long(), test_labels.long()
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed))
    cut = int(round(train_x.shape[0] * held_out))
    if not 0 < cut < train_x.shape[0]:
        raise ValueError(f"cannot hold out {held_out:.0%} of {train_x.shape[0]} training features")
    held, fit = order[:cut], order[cut:]
    grid = list(itertools.product((1.0,) if optimizer == "lbfgs" else lrs, weight_decays))
    best = (-1.0, grid[0])
    for lr, wd in tqdm(grid, desc=f"linear probe ({optimizer} grid)", leave=False, disable=not progress):
        layer = train_linear(
            train_x[fit],
            train_y[fit],
            num_classes,
            optimizer=optimizer,
            lr=lr,
            weight_decay=wd,
            epochs=epochs,
            seed=seed,
        )
        with torch.no_grad():
            score = topk_accuracy(layer(train_x[held]), train_y[held], (1,))["top1"]
        if score > best[0]:  # strictly better: ties keep the earlier (smaller lr / weight decay) setting
            best = (score, (lr, wd))
    held_score, (lr, wd) = best
    layer = train_linear(
        train_x, train_y, num_classes, optimizer=optimizer, lr=lr, weight_decay=wd, epochs=epochs, seed=seed
    )
    with torch.no_grad():
        result: dict = topk_accuracy(layer(test_x), test_y, (1, 5))
    result["settings"] = {"optimizer": optimizer, "lr": lr, "weight_decay": wd, "held_out_top1": held_score}
    return result
