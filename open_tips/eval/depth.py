"""Depth linear probe: patch (+CLS) features classify 256 depth bins; the prediction is the expectation
over bin centres (softmax-weighted), reported as RMSE, delta1 and absolute relative error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from open_tips.eval.dense_probe import dense_inputs, fit_dense_probe, predict
from open_tips.eval.metrics import depth_metrics


def bin_centres(num_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0) -> torch.Tensor:
    return torch.linspace(min_depth, max_depth, num_bins)


def depth_probe(train_features: dict, train_depth: torch.Tensor, test_features: dict, test_depth: torch.Tensor,
                num_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0, with_cls: bool = True,
                epochs: int = 40) -> dict[str, float]:
    """depth maps [N, H, W] in metres; 0 = invalid."""
    centres = bin_centres(num_bins, min_depth, max_depth)
    train_x, test_x = dense_inputs(train_features, with_cls), dense_inputs(test_features, with_cls)

    def loss(logits, target):
        valid = target > 0
        bins = torch.bucketize(target.clamp(min_depth, max_depth), (centres[1:] + centres[:-1]) / 2)
        ce = F.cross_entropy(logits, bins, reduction="none")
        return (ce * valid).sum() / valid.sum().clamp_min(1)

    probe = fit_dense_probe(train_x, train_depth, num_bins, loss, epochs=epochs, desc="depth probe")
    logits = predict(probe, test_x, tuple(test_depth.shape[1:]))
    prediction = (logits.softmax(dim=1) * centres[None, :, None, None]).sum(dim=1)
    return depth_metrics(prediction, test_depth, test_depth > 0)


def read_depth(path: str | Path, scale: float = 1000.0) -> np.ndarray:
    """A depth map in metres from .npy (metres) or a 16-bit PNG in millimetres (``scale`` units per metre)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    return np.asarray(Image.open(path), dtype=np.float32) / scale


def resize_depth(depth: np.ndarray, size: int) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.fromarray(depth.astype(np.float32), mode="F").resize((size, size),
                                                                                               Image.NEAREST)))
