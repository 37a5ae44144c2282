"""Surface-normal linear probe (3-vector per pixel, normalised), angular errors. Normals can be derived
from a depth map when none are given."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from open_tips.eval.dense_probe import dense_inputs, fit_dense_probe, predict
from open_tips.eval.metrics import angular_errors


def normals_from_depth(depth: torch.Tensor) -> torch.Tensor:
    """[N, H, W] depth -> [N, H, W, 3] unit normals from image-space depth gradients (orthographic)."""
    dz_dy, dz_dx = torch.gradient(depth, dim=(1, 2))
    scale = depth.shape[-1] / 10.0  # pixels per metre-ish, keeps slopes comparable to depths in metres
    normal = torch.stack([-dz_dx * scale, -dz_dy * scale, torch.ones_like(depth)], dim=-1)
    return F.normalize(normal, dim=-1)


def normals_probe(train_features: dict, train_normals: torch.Tensor, test_features: dict,
                  test_normals: torch.Tensor, with_cls: bool = True, epochs: int = 40) -> dict[str, float]:
    train_x, test_x = dense_inputs(train_features, with_cls), dense_inputs(test_features, with_cls)

    def loss(logits, target):
        return (1 - F.cosine_similarity(logits, target.permute(0, 3, 1, 2), dim=1)).mean()

    probe = fit_dense_probe(train_x, train_normals, 3, loss, epochs=epochs, desc="normals probe")
    prediction = predict(probe, test_x, tuple(test_normals.shape[1:3])).permute(0, 2, 3, 1)
    return angular_errors(prediction, test_normals)
