"""Frozen-feature extraction, once per (model, dataset, size), cached on disk."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

log = logging.getLogger(__name__)


def to_pixels(image: Image.Image, size: int) -> torch.Tensor:
    pixels = TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True)
    return TF.resize(pixels, [size, size], antialias=True).clamp(0, 1)


def cache_key(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:20]


@torch.no_grad()
def extract_features(model, images: Sequence[Image.Image], size: int, batch_size: int = 32,
                     device: torch.device | str = "cpu", value_trick: bool = False,
                     cache_dir: str | Path | None = None, key: str | None = None,
                     desc: str = "features") -> dict[str, torch.Tensor]:
    """cls_web / cls_synthetic [N, D], patch_tokens [N, h, w, D] (and value_tokens with ``value_trick``),
    float32 on CPU. With ``cache_dir`` and ``key`` the result is stored and reused."""
    path = Path(cache_dir) / f"{key}.pt" if cache_dir is not None and key is not None else None
    if path is not None and path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged cache is recomputed
            log.warning("ignoring unreadable feature cache %s (%s)", path, err)
    device = torch.device(device)
    model = model.to(device).eval()
    outputs: dict[str, list[torch.Tensor]] = {"cls_web": [], "cls_synthetic": [], "patch_tokens": []}
    if value_trick:
        outputs["value_tokens"] = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        pixels = torch.stack([to_pixels(im, size) for im in images[start:start + batch_size]]).to(device)
        out = model.encode_image(pixels)
        outputs["cls_web"].append(out.cls_web.float().cpu())
        outputs["cls_synthetic"].append(out.cls_synthetic.float().cpu())
        outputs["patch_tokens"].append(out.patch_tokens.float().cpu())
        if value_trick:
            outputs["value_tokens"].append(model.vision.forward_value_trick(pixels).patch_tokens.float().cpu())
    result = {k: torch.cat(v) for k, v in outputs.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        from open_tips.formats.common import atomic_write

        atomic_write(path, lambda tmp: torch.save(result, tmp))
    return result


@torch.no_grad()
def text_features(model, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    chunks = [model.encode_text(list(texts[i:i + batch_size])).float().cpu() for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks)
