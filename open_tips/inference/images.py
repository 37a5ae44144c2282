"""Loading images for inference: RGB floats in [0, 1] with sides that are multiples of the patch size.

Two resize recipes:
- ``load_image`` (embed, zeroshot, pca): a square ``image_size`` (as the official demo does), or the short
  side at ``image_size`` with the aspect ratio kept; sides rounded to the nearest multiple of the patch size;
  bilinear with antialiasing.
- ``load_image_short_side`` (zeroshot-seg): the official zero-shot segmentation notebook's recipe, short side
  at ``image_size`` with PIL bicubic, long side truncated; rounding up to the patch grid happens later, per
  window (see ``open_tips.inference.dense``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from open_tips.data.decode import IMAGE_EXTENSIONS, SkipSample, decode_image

log = logging.getLogger(__name__)

# What a bad input file raises: undecodable bytes (SkipSample) or an unreadable path (OSError).
LOAD_ERRORS = (SkipSample, OSError)


def list_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files given directly, plus the image files found (recursively, sorted) in given folders. A file given
    by name is kept whatever its extension, so that a damaged or oddly named image is reported, not ignored."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not p.name.startswith(".")
                    and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
                )
            )
        elif path.exists():
            paths.append(path)
        else:
            raise FileNotFoundError(f"no such image or folder: {path}")
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(map(str, inputs))}")
    return paths


def target_size(
    width: int, height: int, image_size: int, keep_aspect: bool, patch: int = 14
) -> tuple[int, int]:
    """(height, width): a square ``image_size``, or the short side at ``image_size`` keeping the aspect
    ratio; both rounded to the nearest multiple of the patch size (at least one patch)."""
    if not keep_aspect:
        side = max(patch, round(image_size / patch) * patch)
        return side, side
    scale = image_size / min(width, height)
    return (
        max(patch, round(height * scale / patch) * patch),
        max(patch, round(width * scale / patch) * patch),
    )


def to_pixels(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """RGB PIL image -> float [3, height, width] in [0, 1] (bilinear, antialiased)."""
    pixels = TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True)
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = TF.resize(pixels, [height, width], antialias=True).clamp(0.0, 1.0)
    return pixels


def read_image(path: Path) -> Image.Image:
    """The RGB image (EXIF orientation applied); raises SkipSample or OSError for unreadable files."""
    return decode_image(Path(path).read_bytes())


def load_image(
    path: Path, image_size: int, keep_aspect: bool = False, patch: int = 14
) -> tuple[torch.Tensor, Image.Image]:
    """(pixels [3, H, W] in [0, 1], the RGB PIL image at its own size)."""
    image = read_image(path)
    height, width = target_size(image.width, image.height, image_size, keep_aspect, patch)
    return to_pixels(image, height, width), image


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side at ``size`` and the long side truncated, as the notebook's
    ShortSideResize computes it."""
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def load_image_short_side(path: Path, size: int) -> tuple[torch.Tensor, Image.Image]:
    """(pixels [3, H, W] with min(H, W) = ``size``, not yet patch-aligned; the RGB PIL image). PIL bicubic
    with its own antialiasing and no clamping, as torchvision's Resize on a PIL image in the notebook."""
    image = read_image(path)
    height, width = short_side_size(image.width, image.height, size)
    resized = (
        image
        if (height, width) == (image.height, image.width)
        else image.resize((width, height), Image.BICUBIC)
    )
    return TF.to_dtype(TF.to_image(resized), torch.float32, scale=True), image


class _DecodeDataset(Dataset):
    """Decodes and resizes one image per item; a failure is returned, not raised, so that a worker process
    reports it and goes on."""

    def __init__(self, paths: list[Path], image_size: int, keep_aspect: bool, patch: int) -> None:
        self.paths, self.image_size, self.keep_aspect, self.patch = paths, image_size, keep_aspect, patch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            pixels, _ = load_image(self.paths[index], self.image_size, self.keep_aspect, self.patch)
            return index, pixels, ""
        except LOAD_ERRORS as err:
            return index, None, str(err)


def _no_collate(item):
    return item


def decoded_images(
    paths: list[Path], image_size: int, keep_aspect: bool = False, patch: int = 14, workers: int = 0
) -> Iterator[tuple[Path, torch.Tensor | None, str]]:
    """Yields (path, pixels or None, error message) in input order; ``workers`` > 0 decodes in background
    processes so that a GPU is not left waiting on JPEG decoding."""
    dataset = _DecodeDataset(paths, image_size, keep_aspect, patch)
    if workers <= 0:
        items = (dataset[i] for i in range(len(dataset)))
    else:
        items = iter(DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_no_collate))
    for index, pixels, error in items:
        yield paths[index], pixels, error


def batched_images(
    paths: list[Path],
    image_size: int,
    batch_size: int,
    keep_aspect: bool = False,
    skipped: list[str] | None = None,
    patch: int = 14,
    workers: int = 0,
) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Yields (paths, pixels [B, 3, H, W]) in input order. Unreadable images are skipped, logged and their
    names appended to ``skipped``. With ``keep_aspect``, an image of another shape starts a new batch."""
    batch_paths: list[Path] = []
    batch_pixels: list[torch.Tensor] = []
    for path, pixels, error in decoded_images(paths, image_size, keep_aspect, patch, workers):
        if pixels is None:
            log.warning("skipping %s: %s", path, error)
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
