"""Loading images for inference: RGB floats in [0, 1] with sides that are multiples of the patch size."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from open_tips.data.decode import IMAGE_EXTENSIONS, SkipSample, decode_image

log = logging.getLogger(__name__)


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files given directly, plus image files found (recursively, sorted) in given folders."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS))
        elif path.exists():
            paths.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    if not paths:
        raise ValueError("no images found in the given inputs")
    return paths


def target_size(width: int, height: int, image_size: int, keep_aspect: bool, patch: int = 14) -> tuple[int, int]:
    """(height, width): square ``image_size``, or the short side at ``image_size`` keeping the aspect
    ratio; both rounded to multiples of the patch size."""
    if not keep_aspect:
        side = max(patch, round(image_size / patch) * patch)
        return side, side
    scale = image_size / min(width, height)
    return (max(patch, round(height * scale / patch) * patch), max(patch, round(width * scale / patch) * patch))


def load_image(path: Path, image_size: int, keep_aspect: bool = False) -> tuple[torch.Tensor, Image.Image]:
    """(pixels [3, H, W] in [0, 1], the RGB PIL image); raises SkipSample for unreadable files."""
    image = decode_image(path.read_bytes())
    height, width = target_size(image.width, image.height, image_size, keep_aspect)
    pixels = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
    pixels = TF.resize(pixels, [height, width], antialias=True).clamp(0.0, 1.0)
    return pixels, image


def batched_images(paths: list[Path], image_size: int, batch_size: int, keep_aspect: bool = False,
                   skipped: list[str] | None = None) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Yields (paths, pixels [B, 3, H, W]); unreadable images are skipped and their names appended to
    ``skipped``. With ``keep_aspect`` images of different shapes go in separate batches."""
    batch_paths: list[Path] = []
    batch_pixels: list[torch.Tensor] = []
    for path in paths:
        try:
            pixels, _ = load_image(path, image_size, keep_aspect)
        except (SkipSample, OSError) as err:
            log.warning("skipping %s: %s", path, err)
            if skipped is not None:
                skipped.append(str(path))
            continue
        if batch_pixels and (pixels.shape != batch_pixels[0].shape or len(batch_pixels) == batch_size):
            yield batch_paths, torch.stack(batch_pixels)
            batch_paths, batch_pixels = [], []
        batch_paths.append(path)
        batch_pixels.append(pixels)
    if batch_pixels:
        yield batch_paths, torch.stack(batch_pixels)
