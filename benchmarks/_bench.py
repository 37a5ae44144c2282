"""Shared helpers of the paired benchmarks: interleaved timing, medians, random HF-layout weights.

Every benchmark here times its sides in ONE process (or one driver), alternating which side goes first on
each repetition, and reports the median of the per-repetition ratios: neighbours in time share the load of
the moment, so the ratio stays meaningful on a CPU that other processes use too.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def sync(device: torch.device | str | None = None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def paired(
    sides: dict[str, Callable[[], object]], repeats: int, device: torch.device | str | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each side, ``repeats`` times, the order of the sides rotating each repetition."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        if repeat % 2:
            order = order[::-1]
        for name in order:
            times[name].append(time_once(sides[name], device))
    return times


def paired_ratio(times: dict[str, list[float]], ours: str, theirs: str) -> float:
    """Median over repetitions of theirs/ours seconds (> 1: ours is faster)."""
    return statistics.median(t / o for o, t in zip(times[ours], times[theirs]))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def load_note(threads: int) -> str:
    if not hasattr(os, "getloadavg"):
        return ""
    load = os.getloadavg()[0]
    busy = " (> threads: other processes shared the CPU; compare the ratios)" if load > threads + 0.5 else ""
    return f"load average {load:.2f}{busy}"


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Moves norm scales, LayerScale and biases off their initial values, so a parity check would see a
    wrong norm, bias or LayerScale handling."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight")):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.02 * noise)


def write_random_hf(config: str, folder: str | Path, seed: int = 0):
    """A randomly initialised open_tips model of registry ``config``, written as an HF-format directory
    (loadable by transformers' Tipsv2Model); returns the open_tips model."""
    import open_tips

    torch.manual_seed(seed)
    model = open_tips.create_model(config).eval()
    randomise(model, seed)
    model.save_pretrained(str(folder))
    return model


def write_json(path: str | Path | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2) + "\n")
