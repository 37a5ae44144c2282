"""Step-indexed schedules (pure functions of the step, so a resumed run gets the same values)."""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine from ``start`` at step 0 to ``end`` at ``total`` (held after)."""
    if total <= 0:
        return end
    progress = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total: int, peak: float, final: float, warmup: int) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine down to ``final``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return cosine(step - warmup, max(total - warmup, 1), peak, final)


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """Linear from ``start`` to ``end`` over ``warmup`` steps, then ``end`` (teacher temperature)."""
    if warmup <= 0 or step >= warmup:
        return end
    return start + (end - start) * step / warmup


def run_steps(steps: int | None, fraction: float, total: int) -> int:
    """A schedule length: ``steps`` when given, else ``fraction`` of the run's ``total`` steps (rounded)."""
    if steps is not None:
        return steps
    return round(fraction * total)
