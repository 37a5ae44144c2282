"""Patch masks for masked image modelling: uniform random (TIPS, ratio 0.75) or BEiT-style blocks.

Masks use torch's global generator, which the training data stream seeds per step for reproducibility.
"""

from __future__ import annotations

import math

import torch


def random_mask(grid_h: int, grid_w: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exactly round(ratio * h * w) masked patches chosen uniformly; bool [h * w]."""
    total = grid_h * grid_w
    count = int(round(ratio * total))
    mask = torch.zeros(total, dtype=torch.bool)
    mask[torch.randperm(total, generator=generator)[:count]] = True
    return mask


def block_mask(grid_h: int, grid_w: int, ratio: float, generator: torch.Generator | None = None,
               min_block: int = 4, aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """Rectangles of random area and aspect ratio (log-uniform in ``aspect``) until the target count is
    reached; the count is then made exact by un/masking random patches."""
    target = int(round(ratio * grid_h * grid_w))
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(100):
        missing = target - int(mask.sum())
        if missing <= 0:
            break
        area = float(torch.empty(1).uniform_(min(min_block, missing), max(missing, min_block), generator=generator))
        ratio_hw = math.exp(float(torch.empty(1).uniform_(log_low, log_high, generator=generator)))
        height = max(1, min(grid_h, int(round(math.sqrt(area * ratio_hw)))))
        width = max(1, min(grid_w, int(round(math.sqrt(area / ratio_hw)))))
        top = int(torch.randint(0, grid_h - height + 1, (1,), generator=generator))
        left = int(torch.randint(0, grid_w - width + 1, (1,), generator=generator))
        mask[top: top + height, left: left + width] = True
    flat = mask.flatten()
    masked, unmasked = flat.nonzero().flatten(), (~flat).nonzero().flatten()
    excess = int(flat.sum()) - target
    if excess > 0:
        flat[masked[torch.randperm(masked.numel(), generator=generator)[:excess]]] = False
    elif excess < 0:
        flat[unmasked[torch.randperm(unmasked.numel(), generator=generator)[:-excess]]] = True
    return flat


class MaskGenerator:
    def __init__(self, kind: str = "random", ratio: float = 0.75, probability: float = 1.0) -> None:
        if kind not in ("random", "block"):
            raise ValueError(f"mask kind must be random or block, got {kind!r}")
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}")
        self.kind = kind
        self.ratio = ratio
        self.probability = probability

    def __call__(self, grid_h: int, grid_w: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.probability < 1.0 and float(torch.rand(1, generator=generator)) >= self.probability:
            return torch.zeros(grid_h * grid_w, dtype=torch.bool)
        make = random_mask if self.kind == "random" else block_mask
        return make(grid_h, grid_w, self.ratio, generator)


__all__ = ["MaskGenerator", "block_mask", "random_mask"]
