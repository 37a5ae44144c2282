"""A "perfect-feature" stand-in model for suite tests: it reads the answer off the pixels.

Images encode their truth in colour: the green channel of an image holds its item / class id
(``G = 8 id + 4``), the red channel of each 14 px patch its segmentation class (``R = 16 class + 8``).
CLS tokens are the one-hot of the id, patch (and value-trick) tokens the one-hot of the patch's class, and
a text is the one-hot of the ``itemK`` / ``classK`` word it contains ("background" = class 0). So
retrieval, kNN, zero-shot and segmentation are exactly solvable."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

DIM = 160
PATCH = 14


def id_colour(index: int) -> int:
    return 8 * index + 4


def class_colour(index: int) -> int:
    return 16 * index + 8


def picture(patch_classes: np.ndarray, item: int, scale: int = PATCH) -> Image.Image:
    """An RGB image, ``patch_classes`` [h, w] blocks of ``scale`` px with red = the class, green = ``item``."""
    red = np.kron(np.vectorize(class_colour)(patch_classes), np.ones((scale, scale))).astype(np.uint8)
    green = np.full_like(red, id_colour(item))
    return Image.fromarray(np.stack([red, green, np.zeros_like(red)], axis=-1))


class OracleVision(nn.Module):
    patch_size = PATCH

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        red = F.avg_pool2d(pixels[:, :1] * 255, PATCH)[:, 0]  # [B, h, w]
        index = ((red - 8) / 16).round().clamp(0, DIM - 1).long()
        return F.one_hot(index, DIM).float()

    def forward_value_trick(self, pixels: torch.Tensor):
        return SimpleNamespace(patch_tokens=self._patches(pixels))


class OracleModel(nn.Module):
    def __init__(self, text: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.vision = OracleVision()
        self.cfg = SimpleNamespace(
            image_size=56, name="oracle", vision=SimpleNamespace(width=DIM, depth=1, patch_size=PATCH)
        )
        self.text = object() if text else None
        self.tokenizer = object() if text else None

    def encode_image(self, pixels: torch.Tensor):
        green = (pixels[:, 1] * 255).mean(dim=(1, 2))
        item = ((green - 4) / 8).round().clamp(0, DIM - 1).long()
        cls = F.one_hot(item, DIM).float()
        return SimpleNamespace(
            cls_web=cls, cls_synthetic=cls.clone(), patch_tokens=self.vision._patches(pixels)
        )

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), DIM)
        for row, text in enumerate(texts):
            found = re.findall(r"(?:item|class)(\d+)", text)
            out[row, int(found[0]) if found else 0] = 1.0  # "background" and the like -> 0
        return out
