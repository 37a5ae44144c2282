"""Frozen-feature extraction, once per (model checkpoint, dataset, image size), cached on disk.

Every task of a suite reads the same features: the images go through the model once, and a second
evaluation of the same checkpoint on the same data (another task, another probe setting) reads them from
the cache. The cache file name is a hash of
- the model: its checkpoint path and modification time (``model_fingerprint``), so that a re-trained
  checkpoint at the same path is not mistaken for the old one;
- the dataset: whatever identifies its images (a generator's parameters, or the file list with sizes and
  modification times: ``dataset_fingerprint``);
- the image size.
CLS tokens, patch tokens and value-trick tokens are cached as separate entries (classification needs only
the first), each in parts of ``shard_size`` images written as they complete: a half-finished extraction
resumes from its last complete part.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from open_tips.data.decode import decode_image
from open_tips.utils.atomic import atomic_write

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the stored layout or the preprocessing changes

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
    cache_dir: str | os.PathLike, model_key: str, dataset_key: str, image_size: int, count: int | None = None
) -> dict[str, Path]:
    """The cache entry folders of one (model, dataset, size): ``{"cls", "patch", "value"}`` -> folder of
    ``part-NNNNN.pt`` files (CLS tokens, patch tokens, value-trick tokens), each holding ``shard_size``
    consecutive images, so that an interrupted extraction resumes at its first missing part."""
    stem = _hash(CACHE_VERSION, model_key, dataset_key, image_size, count)
    return {kind: Path(cache_dir) / f"{stem}-{kind}" for kind in ("cls", "patch", "value")}


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
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(tensors, tmp))


KIND_FIELDS = {"cls": ("cls_web", "cls_synthetic"), "patch": ("patch_tokens",), "value": ("value_tokens",)}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@torch.no_grad()
def extract_features(
    model,
    images: Sequence[ImageLike],
    image_size: int,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    value_trick: bool = False,
    patches: bool = True,
    cache_dir: str | os.PathLike | None = None,
    model_key: str | None = None,
    dataset_key: str | None = None,
    workers: int = 0,
    amp: bool = False,
    desc: str = "features",
    progress: bool = True,
    shard_size: int = 1024,
) -> FeatureSet:
    """Features of ``images`` (PIL images or paths) resized to a square ``image_size`` (rounded to the patch
    grid). The model runs on ``device`` (default: where its parameters are; it is not moved) in eval mode,
    batches of ``batch_size``; ``amp`` runs it in bfloat16 autocast on CUDA. The result is float32 on the CPU.
    ``patches=False`` keeps only the CLS tokens (``patch_tokens`` is then an empty [N, 0, 0, D] tensor):
    what classification and retrieval need, 1/(h w) of the memory.

    With ``cache_dir``, ``model_key`` and ``dataset_key`` the result is stored in parts of ``shard_size``
    images as they complete and reused: a second call reads them, an interrupted one resumes at the first
    missing part. Progress (a bar with ``progress``, and a log line per part) shows the rate and an ETA."""
    size = patch_aligned(image_size, model.vision.patch_size)
    count = len(images)
    if count == 0:
        raise ValueError(f"{desc}: no images")
    kinds = ["cls"] + (["patch"] if patches else []) + (["value"] if value_trick else [])
    num_parts = -(-count // shard_size)
    bounds = [(p * shard_size, min(count, (p + 1) * shard_size)) for p in range(num_parts)]
    folders = None
    if cache_dir is not None and model_key and dataset_key:
        folders = cache_paths(cache_dir, model_key, dataset_key, size, count)
    parts: dict[int, dict[str, torch.Tensor]] = {}
    if folders is not None:
        for index, (lo, hi) in enumerate(bounds):
            loaded: dict[str, torch.Tensor] = {}
            for kind in kinds:
                stored = _load_cached(folders[kind] / f"part-{index:05d}.pt")
                if stored is None or any(
                    name not in stored or len(stored[name]) != hi - lo for name in KIND_FIELDS[kind]
                ):
                    loaded = {}
                    break
                loaded.update({name: stored[name] for name in KIND_FIELDS[kind]})
            if loaded:
                parts[index] = loaded
        if parts:
            log.info("%s: %d of %d parts from the cache %s", desc, len(parts), num_parts, folders["cls"])
    todo = [index for index in range(num_parts) if index not in parts]
    if todo:
        param = next(model.parameters())
        device = torch.device(device) if device is not None else param.device
        if param.device != device:
            model.to(device)
        was_training = model.training
        model.eval()
        total = sum(bounds[i][1] - bounds[i][0] for i in todo)
        done, start = 0, time.perf_counter()
        bar = tqdm(
            total=count, initial=count - total, desc=desc, leave=False, disable=not progress, unit="img"
        )
        try:
            for index in todo:
                lo, hi = bounds[index]
                loader = DataLoader(
                    _Pixels(images[lo:hi], size),
                    batch_size=batch_size,
                    num_workers=workers,
                    pin_memory=device.type == "cuda",
                )
                out: dict[str, list[torch.Tensor]] = {n: [] for kind in kinds for n in KIND_FIELDS[kind]}
                for pixels in loader:
                    with torch.autocast(
                        device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"
                    ):
                        plain, value = encode_both(model, pixels.to(device, non_blocking=True), value_trick)
                    out["cls_web"].append(plain.cls_web.float().cpu())
                    out["cls_synthetic"].append(plain.cls_synthetic.float().cpu())
                    if patches:
                        out["patch_tokens"].append(plain.patch_tokens.float().cpu())
                    if value is not None:
                        out["value_tokens"].append(value.patch_tokens.float().cpu())
                    bar.update(pixels.shape[0])
                part = {name: torch.cat(chunks) for name, chunks in out.items()}
                parts[index] = part
                if folders is not None:
                    for kind in kinds:
                        _save(
                            folders[kind] / f"part-{index:05d}.pt",
                            {name: part[name] for name in KIND_FIELDS[kind]},
                        )
                done += hi - lo
                elapsed = time.perf_counter() - start
                if num_parts > 1:
                    log.info(
                        "%s: %d/%d images, %.1f img/s, ETA %s",
                        desc,
                        count - total + done,
                        count,
                        done / max(elapsed, 1e-9),
                        _duration(elapsed / done * (total - done)),
                    )
        finally:
            bar.close()
            model.train(was_training)

    def joined(name: str) -> torch.Tensor:
        return torch.cat([parts[i][name] for i in range(num_parts)])

    cls_web = joined("cls_web")
    return FeatureSet(
        cls_web,
        joined("cls_synthetic"),
        joined("patch_tokens") if patches else cls_web.new_zeros(count, 0, 0, cls_web.shape[-1]),
        joined("value_tokens") if value_trick else None,
    )


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
