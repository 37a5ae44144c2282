"""Depth linear probe: patch (+CLS) features classify depth into 256 bins over [min, max] metres (design:
0.001..10 m, linear or log spacing); the prediction is the expectation over bin centres under the softmax
(expectation decoding, as the official DPT head's classification variant); RMSE, delta1 (< 1.25) and
absolute relative error over valid pixels (depth > 0). Readers for image + depth-map folders (NYUv2 style:
16-bit PNG in millimetres, or .npy in metres).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from open_tips.eval.dense_probe import dense_inputs, fit_dense_probe, predict_chunks
from open_tips.eval.features import FeatureSet
from open_tips.eval.metrics import depth_metrics

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def bin_centres(
    num_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0, spacing: str = "linear"
) -> torch.Tensor:
    """[num_bins] centres, evenly spaced in depth (``linear``) or in log depth (``log``)."""
    if not 0 < min_depth < max_depth:
        raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
    if spacing == "linear":
        return torch.linspace(min_depth, max_depth, num_bins)
    if spacing == "log":
        return torch.logspace(np.log10(min_depth), np.log10(max_depth), num_bins)
    raise ValueError(f"spacing must be linear or log, got {spacing!r}")


def depth_to_bin(depth: torch.Tensor, centres: torch.Tensor, spacing: str = "linear") -> torch.Tensor:
    """Index of the nearest bin centre (nearest in log depth for log spacing); depth clamped to the range."""
    depth = depth.clamp(float(centres[0]), float(centres[-1]))
    if spacing == "log":
        depth, centres = depth.log(), centres.log()
    edges = (centres[1:] + centres[:-1]) / 2
    return torch.bucketize(depth, edges.to(depth.device))


def decode_expectation(logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[B, bins, H, W] logits -> [B, H, W] depth: sum over bins of softmax x centre."""
    return torch.einsum("bkhw,k->bhw", logits.softmax(dim=1), centres.to(logits.device, logits.dtype))


def depth_probe(
    train: FeatureSet,
    train_depth: torch.Tensor,
    test: FeatureSet,
    test_depth: torch.Tensor,
    *,
    num_bins: int = 256,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    spacing: str = "linear",
    with_cls: bool = True,
    epochs: int = 30,
    lr: float = 5e-2,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Depth maps [N, H, W] in metres (<= 0: invalid, left out of the loss and the metrics)."""
    centres = bin_centres(num_bins, min_depth, max_depth, spacing)
    train_x, test_x = dense_inputs(train, with_cls), dense_inputs(test, with_cls)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target > 0
        bins = depth_to_bin(target, centres, spacing)
        per_pixel = F.cross_entropy(logits, bins, reduction="none")
        return (per_pixel * valid).sum() / valid.sum().clamp_min(1)

    # targets at 2x the patch grid in training: 256 bins per pixel make this the costliest loss
    probe = fit_dense_probe(
        train_x,
        train_depth,
        num_bins,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        target_factor=2,
        device=device,
        desc="depth probe",
        progress=progress,
    )
    prediction = torch.empty_like(test_depth, dtype=torch.float32)
    for chunk, logits in predict_chunks(probe, test_x, tuple(test_depth.shape[1:])):
        prediction[chunk] = decode_expectation(logits, centres).cpu()
    result: dict = depth_metrics(prediction, test_depth.float(), test_depth > 0)
    result["settings"] = {
        "bins": num_bins,
        "min_depth": min_depth,
        "max_depth": max_depth,
        "spacing": spacing,
        "with_cls": with_cls,
    }
    return result


# ----------------------------------------------------------------------------------------------- readers


def read_depth(path: str | Path, scale: float = 1000.0) -> np.ndarray:
    """Depth in metres, float32 [H, W]: ``.npy`` holds metres; an image (16-bit PNG) holds depth x ``scale``
    (1000 = millimetres, NYUv2's toolbox; KITTI uses 256). 0 stays 0 (invalid)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        depth = np.load(path, allow_pickle=False).astype(np.float32)
        return depth[..., 0] if depth.ndim == 3 else depth
    return np.asarray(Image.open(path), dtype=np.float32) / scale


def resize_depth(depth: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a depth map (never interpolates across invalid pixels or edges)."""
    height, width = (size, size) if isinstance(size, int) else size
    if depth.shape == (height, width):
        return torch.from_numpy(depth.astype(np.float32))
    image = Image.fromarray(depth.astype(np.float32))  # mode "F"
    return torch.from_numpy(np.asarray(image.resize((width, height), Image.NEAREST), dtype=np.float32).copy())


@dataclass
class DenseSplit:
    """Images with same-stem depth maps (and optionally normal maps)."""

    images: list[Path]
    depths: list[Path]
    normals: list[Path] | None = None


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def read_depth_folder(
    images_dir: str | Path, depth_dir: str | Path, normals_dir: str | Path | None = None
) -> DenseSplit:
    """Pairs images with ``<stem>.png`` / ``<stem>.npy`` depth maps (and normal maps when ``normals_dir``)."""
    images = _by_stem(Path(images_dir), IMAGE_SUFFIXES)
    depths = _by_stem(Path(depth_dir), (".png", ".npy"))
    normals = _by_stem(Path(normals_dir), (".png", ".npy")) if normals_dir is not None else None
    stems = [s for s in images if s in depths and (normals is None or s in normals)]
    if not stems:
        raise ValueError(f"no image in {images_dir} has a depth map of the same name in {depth_dir}")
    return DenseSplit(
        [images[s] for s in stems],
        [depths[s] for s in stems],
        [normals[s] for s in stems] if normals is not None else None,
    )


def find_depth_layout(root: str | Path) -> dict[str, DenseSplit] | None:
    """``{train, val or test}/{images or rgb}/`` + ``.../depth/`` (+ ``.../normals/``) -> {"train", "test"}."""
    root = Path(root)
    test_name = next((n for n in ("test", "val") if (root / n / "depth").is_dir()), None)
    if test_name is None or not (root / "train" / "depth").is_dir():
        return None
    splits = {}
    for ours, theirs in (("train", "train"), ("test", test_name)):
        folder = root / theirs
        images = next((folder / n for n in ("images", "rgb", "image") if (folder / n).is_dir()), None)
        if images is None:
            return None
        normals = folder / "normals" if (folder / "normals").is_dir() else None
        splits[ours] = read_depth_folder(images, folder / "depth", normals)
    return splits
