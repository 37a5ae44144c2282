"""Frozen-feature extraction, once per (model checkpoint, dataset, image size), cached on disk.

Every task of a suite reads the same features: the images go through the model once, and a second
evaluation of the same checkpoint on the same data (another task, another probe setting) reads them from
the cache. The cache file name is a hash of
- the model: its checkpoint path and modification time (``model_fingerprint``), so that a re-trained
  checkpoint at the same path is not mistaken for the old one;
- the dataset: whatever identifies its images (a generator's parameters, or the file list with sizes and
  modification times: ``dataset_fingerprint``);
- the image size.
Value-trick tokens (zero-shot segmentation) are cached in a second file beside the plain features.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored layout or the preprocessing changes

ImageLike = Image.Image | str | os.PathLike


@dataclass
class FeatureSet:
    """Frozen features of N images, float32 on the CPU. Not L2-normalised (as the model returns them)."""

    cls_web: torch.Tensor  # [N, D]
    cls_synthetic: torch.Tensor  # [N, D]
    patch_tokens: torch.Tensor  # [N, h, w, D]
    value_tokens: torch.Tensor | None = None  # [N, h, w, D], MaskCLIP value trick on the last block

    def __len__(self) -> int:
        return self.cls_web.shape[0]

    @property
    def dim(self) -> int:
        return self.cls_web.shape[-1]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.patch_tokens.shape[1:3])

    def subset(self, index: torch.Tensor | slice | Sequence[int]) -> FeatureSet:
        if not isinstance(index, (slice, torch.Tensor)):
            index = torch.as_tensor(list(index), dtype=torch.long)
        return FeatureSet(
            **{
                f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                for f in fields(self)
            }
        )

    def cls(self, which: str = "web") -> torch.Tensor:
        """``web`` (CLS1), ``synthetic`` (CLS2) or ``concat`` (both, side by side)."""
        if which == "web":
            return self.cls_web
        if which == "synthetic":
            return self.cls_synthetic
        if which == "concat":
            return torch.cat([self.cls_web, self.cls_synthetic], dim=-1)
        raise ValueError(f"which must be web, synthetic or concat, got {which!r}")


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:24]


def model_fingerprint(checkpoint: str | os.PathLike, *extra: object) -> str:
    """Identity of a checkpoint on disk: resolved path, size and modification time (for a directory, of
    every file in it), plus ``extra`` (e.g. the config name a checkpoint was loaded with)."""
    path = Path(checkpoint).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not path.is_dir():  # an official *_vision.npz is read with its *_text.npz
        files += [p for p in path.parent.glob(path.name.replace("_vision.", "_text.")) if p != path]
        files += [p for p in (path.parent / "tokenizer.model",) if p.is_file()]
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists()]
    return _hash("model", CACHE_VERSION, str(path), stats, *extra)


def dataset_fingerprint(*parts: object, files: Sequence[str | os.PathLike] = ()) -> str:
    """Identity of a dataset: free-form ``parts`` (name, split, generator parameters) plus, for images on
    disk, each file's path, size and modification time."""
    stats = []
    for name in files:
        path = Path(name)
        stat = path.stat() if path.exists() else None
        stats.append((str(path.resolve()), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1))
    return _hash("data", *parts, stats)


def cache_paths(
    cache_dir: str | os.PathLike, model_key: str, dataset_key: str, image_size: int
) -> tuple[Path, Path]:
    """(plain features file, value-trick tokens file)."""
    stem = _hash(CACHE_VERSION, model_key, dataset_key, image_size)
    return Path(cache_dir) / f"{stem}.pt", Path(cache_dir) / f"{stem}-value.pt"


def to_pixels(image: Image.Image, size: int | tuple[int, int]) -> torch.Tensor:
    """RGB PIL image -> float [3, H, W] in [0, 1], resized bilinearly with antialiasing (the recipe of
    ``open_tips.inference.images``), so that probes see what the inference commands see."""
    height, width = (size, size) if isinstance(size, int) else size
    pixels = TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True)
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = TF.resize(pixels, [height, width], antialias=True).clamp(0.0, 1.0)
    return pixels


def load_image(item: ImageLike) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    from open_tips.data.decode import decode_image

    return decode_image(Path(item).read_bytes())


def patch_aligned(size: int, patch: int = 14) -> int:
    """The multiple of the patch size nearest to ``size`` (at least one patch)."""
    return max(patch, round(size / patch) * patch)


class _Pixels(Dataset):
    def __init__(self, images: Sequence[ImageLike], size: int) -> None:
        self.images, self.size = images, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_pixels(load_image(self.images[index]), self.size)


@torch.no_grad()
def encode_both(model, pixels: torch.Tensor, value_trick: bool):
    """(plain ImageEmbeddings, value-trick ImageEmbeddings or None) with one shared trunk: the two
    differ only in the last block, so the first depth - 1 blocks run once."""
    vision = model.vision
    if not value_trick:
        return model.encode_image(pixels), None
    if not all(hasattr(vision, name) for name in ("prepare_tokens", "blocks", "norm", "split_tokens")):
        return model.encode_image(pixels), vision.forward_value_trick(pixels)
    x = vision.prepare_tokens(pixels)
    for block in vision.blocks[:-1]:
        x = block(x)
    grid = vision.grid_size(pixels)
    plain = vision.split_tokens(vision.norm(vision.blocks[-1](x)), grid)
    value = vision.split_tokens(vision.norm(vision.blocks[-1].forward_value_trick(x)), grid)
    return plain, value


def _load_cached(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged cache entry is recomputed, never fatal
        log.warning("ignoring unreadable feature cache %s (%s)", path, err)
        return None


def _save(path: Path, tensors: dict) -> None:
    from open_tips.formats.common import atomic_write

    atomic_write(path, lambda tmp: torch.save(tensors, tmp))


@torch.no_grad()
def extract_features(
    model,
    images: Sequence[ImageLike],
    image_size: int,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    value_trick: bool = False,
    cache_dir: str | os.PathLike | None = None,
    model_key: str | None = None,
    dataset_key: str | None = None,
    workers: int = 0,
    amp: bool = False,
    desc: str = "features",
    progress: bool = True,
) -> FeatureSet:
    """Features of ``images`` (PIL images or paths) resized to a square ``image_size`` (rounded to the patch
    grid). The model runs on ``device`` (default: where its parameters are; it is not moved) in eval mode,
    batches of ``batch_size``; ``amp`` runs it in bfloat16 autocast on CUDA. The result is float32 on the CPU.
    With ``cache_dir``, ``model_key`` and ``dataset_key`` the result is stored and reused."""
    size = patch_aligned(image_size, model.vision.patch_size)
    base_path = value_path = None
    if cache_dir is not None and model_key and dataset_key:
        base_path, value_path = cache_paths(cache_dir, model_key, dataset_key, size)
        base = _load_cached(base_path)
        value = _load_cached(value_path) if value_trick else None
        if (
            base is not None
            and len(base["cls_web"]) == len(images)
            and (not value_trick or value is not None)
        ):
            log.info("features of %s from the cache %s", desc, base_path)
            return FeatureSet(
                base["cls_web"],
                base["cls_synthetic"],
                base["patch_tokens"],
                value["value_tokens"] if value is not None else None,
            )

    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    if param.device != device:
        model.to(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(
        _Pixels(images, size), batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    out: dict[str, list[torch.Tensor]] = {
        "cls_web": [],
        "cls_synthetic": [],
        "patch_tokens": [],
        "value_tokens": [],
    }
    try:
        for pixels in tqdm(loader, desc=desc, leave=False, disable=not progress):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                plain, value = encode_both(model, pixels.to(device, non_blocking=True), value_trick)
            out["cls_web"].append(plain.cls_web.float().cpu())
            out["cls_synthetic"].append(plain.cls_synthetic.float().cpu())
            out["patch_tokens"].append(plain.patch_tokens.float().cpu())
            if value is not None:
                out["value_tokens"].append(value.patch_tokens.float().cpu())
    finally:
        model.train(was_training)
    if not out["cls_web"]:
        raise ValueError(f"{desc}: no images")
    result = FeatureSet(
        torch.cat(out["cls_web"]),
        torch.cat(out["cls_synthetic"]),
        torch.cat(out["patch_tokens"]),
        torch.cat(out["value_tokens"]) if value_trick else None,
    )
    if base_path is not None:
        _save(
            base_path,
            {
                "cls_web": result.cls_web,
                "cls_synthetic": result.cls_synthetic,
                "patch_tokens": result.patch_tokens,
                "model": model_key,
                "dataset": dataset_key,
                "image_size": size,
            },
        )
        if value_trick:
            _save(value_path, {"value_tokens": result.value_tokens})
    return result


@torch.no_grad()
def text_features(model, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """[M, D] float32 pooled text embeddings on the CPU (not normalised)."""
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="text", leave=False, disable=not progress):
        chunks.append(model.encode_text(list(texts[start : start + batch_size])).float().cpu())
    if not chunks:
        raise ValueError("no texts")
    return torch.cat(chunks)


def has_text(model) -> bool:
    """Whether the model can embed strings (a text tower and a tokenizer)."""
    return getattr(model, "text", None) is not None and getattr(model, "tokenizer", None) is not None
