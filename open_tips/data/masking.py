"""Patch masks for masked image modelling on the global crop's patch grid; bool [h * w], True = masked.

- ``random_mask``: exactly round(ratio * h * w) patches chosen uniformly (TIPS: ratio 0.75 on every image).
- ``block_mask``: BEiT-style rectangles (area at least ``min_block_patches``, aspect ratio log-uniform in
  0.3-3.3) added while they do not overshoot the target, then topped up with random patches so the count is
  exact (as DINOv2 does), never unmasking inside a block.
- ``MaskGenerator``: the per-image policy, with iBOT's options: a ratio drawn per image from a range, and only
  a fraction ``probability`` of the images masked at all (iBOT: 0.5, ratio 0.1-0.5). Default: TIPS.

Without an explicit ``generator`` the masks use torch's global generator, which the batch builder seeds per
sample, so masks are reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch


def _grid(num_patches_hw: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(num_patches_hw, int):
        return num_patches_hw, num_patches_hw
    grid_h, grid_w = (int(v) for v in num_patches_hw)
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"patch grid must be positive, got {grid_h}x{grid_w}")
    return grid_h, grid_w


def _count(ratio: float, total: int) -> int:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1], got {ratio}")
    return int(round(ratio * total))


def random_mask(
    num_patches_hw: int | Sequence[int], ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Exactly round(ratio * h * w) patches masked, chosen uniformly; bool [h * w]. An int means a square grid."""
    grid_h, grid_w = _grid(num_patches_hw)
    total = grid_h * grid_w
    mask = torch.zeros(total, dtype=torch.bool)
    mask[torch.randperm(total, generator=generator)[: _count(ratio, total)]] = True
    return mask


def block_mask(
    num_patches_hw: int | Sequence[int],
    ratio: float,
    generator: torch.Generator | None = None,
    min_block_patches: int = 4,
    max_block_patches: int | None = None,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
) -> torch.Tensor:
    """BEiT-style block mask with exactly round(ratio * h * w) patches masked; bool [h * w].

    Rectangles of area uniform in [min_block_patches, max_block_patches] (default: the target count) and aspect
    ratio log-uniform in ``aspect`` are added when they mask at least one new patch and do not exceed the target;
    after 10 failed attempts in a row the remainder is filled with random unmasked patches."""
    grid_h, grid_w = _grid(num_patches_hw)
    total = grid_h * grid_w
    target = _count(ratio, total)
    # One torch draw seeds a Python RNG for the many small draws: reproducible from ``generator`` and cheap.
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    max_block = max(max_block_patches or target, min_block_patches)
    log_low, log_high = math.log(aspect[0]), math.log(aspect[1])
    masked = 0
    while masked < target:
        remaining = target - masked
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block_patches, max_block)
            aspect_hw = math.exp(rng.uniform(log_low, log_high))
            height = int(round(math.sqrt(area * aspect_hw)))
            width = int(round(math.sqrt(area / aspect_hw)))
            if not (1 <= height <= grid_h and 1 <= width <= grid_w):
                continue
            top, left = rng.randint(0, grid_h - height), rng.randint(0, grid_w - width)
            block = mask[top : top + height, left : left + width]
            new = height * width - int(block.sum())
            if 0 < new <= remaining:
                block.fill_(True)
                added = new
                break
        if added == 0:
            break
        masked += added
    flat = mask.flatten()
    missing = target - masked
    if missing > 0:
        free = (~flat).nonzero().flatten()
        flat[free[torch.randperm(free.numel(), generator=generator)[:missing]]] = True
    return flat


class MaskGenerator:
    """Per-image MIM mask policy.

    kind: "random" (TIPS) or "block" (BEiT/iBOT/DINOv2). ratio: a fraction, or a (low, high) range from which each
    image draws its own ratio uniformly (iBOT). probability: the chance that an image is masked at all (the
    others get an empty mask), e.g. 0.5 as in iBOT. Default: every image at exactly 0.75 (TIPS)."""

    def __init__(
        self,
        kind: str = "random",
        ratio: float | Sequence[float] = 0.75,
        probability: float = 1.0,
        min_block_patches: int = 4,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
    ) -> None:
        if kind not in ("random", "block"):
            raise ValueError(f"mask kind must be 'random' or 'block', got {kind!r}")
        low, high = (
            (float(ratio), float(ratio)) if isinstance(ratio, (int, float)) else (float(r) for r in ratio)
        )
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(
                f"mask ratio must be a fraction or a (low, high) range within [0, 1), got {ratio}"
            )
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"mask probability must lie in [0, 1], got {probability}")
        self.kind = kind
        self.ratio_range = (low, high)
        self.probability = probability
        self.min_block_patches = min_block_patches
        self.aspect = aspect

    @property
    def ratio(self) -> float:
        """The mean ratio of a masked image."""
        return sum(self.ratio_range) / 2

    def __call__(
        self, num_patches_hw: int | Sequence[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        grid_h, grid_w = _grid(num_patches_hw)
        if self.probability < 1.0 and float(torch.rand(1, generator=generator)) >= self.probability:
            return torch.zeros(grid_h * grid_w, dtype=torch.bool)
        low, high = self.ratio_range
        ratio = low if high == low else low + (high - low) * float(torch.rand(1, generator=generator))
        if self.kind == "random":
            return random_mask((grid_h, grid_w), ratio, generator)
        return block_mask((grid_h, grid_w), ratio, generator, self.min_block_patches, aspect=self.aspect)

    def __repr__(self) -> str:
        return f"MaskGenerator(kind={self.kind!r}, ratio={self.ratio_range}, probability={self.probability})"


__all__ = ["MaskGenerator", "block_mask", "random_mask"]
