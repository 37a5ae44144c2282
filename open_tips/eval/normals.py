"""Surface-normal linear probe: patch (+CLS) features regress a 3-vector per pixel (normalised), trained with
the cosine loss; angular mean / median / RMSE and the fractions within 11.25 / 22.5 / 30 degrees.

Where a dataset has no normals they are derived from its depth (``normals_from_depth``): image-space
depth gradients under an orthographic camera, +z toward the viewer, slopes measured in metres per tenth
of the image width (the convention of the built-in dataset's ``normals``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from open_tips.eval.dense_probe import dense_inputs, fit_dense_probe, predict_chunks
from open_tips.eval.features import FeatureSet
from open_tips.eval.metrics import angular_errors


def normals_from_depth(depth: torch.Tensor) -> torch.Tensor:
    """[N, H, W] depth -> [N, H, W, 3] unit normals from central-difference depth gradients."""
    dz_dy, dz_dx = torch.gradient(depth.float(), dim=(1, 2))
    scale = depth.shape[-1] / 10.0  # per-pixel slope -> slope per tenth of the image width
    normal = torch.stack(
        [-dz_dx * scale, -dz_dy * scale, torch.ones_like(depth, dtype=torch.float32)], dim=-1
    )
    return F.normalize(normal, dim=-1)


def normals_probe(
    train: FeatureSet,
    train_normals: torch.Tensor,
    test: FeatureSet,
    test_normals: torch.Tensor,
    *,
    with_cls: bool = True,
    epochs: int = 30,
    lr: float = 5e-2,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """Normal maps [N, H, W, 3] (any length; zero-length = invalid, left out)."""
    train_x, test_x = dense_inputs(train, with_cls), dense_inputs(test, with_cls)

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.permute(0, 3, 1, 2)
        valid = target.norm(dim=1) > 0
        cosine = F.cosine_similarity(output, target, dim=1, eps=1e-6)
        return ((1 - cosine) * valid).sum() / valid.sum().clamp_min(1)

    probe = fit_dense_probe(
        train_x,
        train_normals,
        3,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        device=device,
        desc="normals probe",
        progress=progress,
    )
    prediction = torch.empty_like(test_normals, dtype=torch.float32)
    for chunk, output in predict_chunks(probe, test_x, tuple(test_normals.shape[1:3])):
        prediction[chunk] = F.normalize(output, dim=1).permute(0, 2, 3, 1).cpu()
    return angular_errors(prediction, test_normals)


def read_normals(path: str | Path) -> np.ndarray:
    """float32 [H, W, 3]: ``.npy`` as stored; an RGB image decoded as n = rgb / 255 * 2 - 1 (the usual
    encoding); pixels that decode to a near-zero vector (e.g. grey 128 / black 0 fill) are set to 0 =
    invalid."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        normals = np.load(path, allow_pickle=False).astype(np.float32)
    else:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        normals = rgb.astype(np.float32) / 255.0 * 2.0 - 1.0
        normals[(np.linalg.norm(normals, axis=-1) < 0.5) | (rgb == 0).all(axis=-1)] = 0.0
    return normals


def resize_normals(normals: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of [H, W, 3] normals (no interpolation across creases)."""
    height, width = (size, size) if isinstance(size, int) else size
    tensor = torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32))
    if tuple(tensor.shape[:2]) == (height, width):
        return tensor
    return F.interpolate(tensor.permute(2, 0, 1)[None], size=(height, width), mode="nearest")[0].permute(
        1, 2, 0
    )
