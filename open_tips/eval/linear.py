"""Linear probes trained on cached frozen features: classification on CLS, and a generic dense trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from open_tips.eval.metrics import topk_accuracy


def _standardise(train: torch.Tensor, *others: torch.Tensor):
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def train_linear(features: torch.Tensor, targets: torch.Tensor, num_outputs: int, epochs: int = 100,
                 lr: float = 1e-2, weight_decay: float = 1e-4, desc: str = "linear probe") -> nn.Linear:
    """Full-batch AdamW on a linear layer with cross-entropy (targets: class indices)."""
    torch.manual_seed(0)
    layer = nn.Linear(features.shape[1], num_outputs)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        optimizer.zero_grad()
        F.cross_entropy(layer(features), targets.long()).backward()
        optimizer.step()
    return layer


def linear_accuracy(train_features, train_labels, test_features, test_labels, num_classes: int,
                    weight_decays: tuple[float, ...] = (1e-4, 1e-2, 1e-1), epochs: int = 100) -> dict[str, float]:
    """Picks the weight decay on a held-out fifth of the training set, retrains on all of it, reports
    test accuracy."""
    train_x, test_x = _standardise(train_features.float(), test_features.float())
    train_y, test_y = train_labels.long(), test_labels.long()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(train_x.shape[0], generator=generator)
    cut = max(1, train_x.shape[0] // 5)
    held, fit = order[:cut], order[cut:]
    best_wd, best_acc = weight_decays[0], -1.0
    for wd in weight_decays:
        layer = train_linear(train_x[fit], train_y[fit], num_classes, epochs, weight_decay=wd)
        with torch.no_grad():
            acc = topk_accuracy(layer(train_x[held]), train_y[held], (1,))["top1"]
        if acc > best_acc:
            best_wd, best_acc = wd, acc
    layer = train_linear(train_x, train_y, num_classes, epochs, weight_decay=best_wd)
    with torch.no_grad():
        result = topk_accuracy(layer(test_x), test_y, (1, 5))
    result["weight_decay"] = best_wd
    return result
