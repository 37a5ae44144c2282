"""Shared pieces of the checkpoint readers: strict loading with clear errors and config inference."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from open_tips.models.configs import TextConfig, VisionConfig, heads_for_width

# Re-exported for existing callers; the writer itself is open_tips.utils.atomic.
from open_tips.utils.atomic import atomic_write as atomic_write

TEMPERATURE_KEYS = ("temperature", "temperature_contrastive")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the model; the message names file and key."""


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``module``; every missing, unexpected or mis-shaped key is named."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {'; '.join(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))
    converted = {k: v.to(expected[k].dtype) for k, v in state.items()}
    module.load_state_dict(converted, strict=True)


def _require(state: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: missing key {key!r}")
    return state[key]


def _count_indexed(state: dict[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for key in state if (m := regex.match(key))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"block indices are not contiguous: {sorted(indices)}")
    return len(indices)


def infer_vision_config(
    state: dict[str, torch.Tensor], source: str, heads: int | None = None
) -> VisionConfig:
    """Architecture from the official vision keys: width, depth, MLP kind and size, position grid."""
    width = int(_require(state, "cls_token", source).shape[-1])
    patch = int(_require(state, "patch_embed.proj.weight", source).shape[-1])
    tokens = int(_require(state, "pos_embed", source).shape[1]) - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"{source}: pos_embed holds {tokens} patch positions, not a square grid")
    depth = _count_indexed(state, r"blocks\.(\d+)\.norm1\.weight$")
    swiglu = "blocks.0.mlp.w12.weight" in state
    if swiglu:
        mlp_hidden = int(state["blocks.0.mlp.w12.weight"].shape[0]) // 2
    else:
        mlp_hidden = int(_require(state, "blocks.0.mlp.fc1.weight", source).shape[0]) if depth else 4 * width
    return VisionConfig(
        width=width,
        depth=depth,
        heads=heads or heads_for_width(width),
        mlp_hidden=mlp_hidden,
        swiglu=swiglu,
        patch_size=patch,
        pos_grid=grid,
    )


def infer_text_config(
    state: dict[str, torch.Tensor], source: str, heads: int | None = None, max_len: int = 64
) -> TextConfig:
    vocab, width = _require(state, "token_embedding.weight", source).shape
    depth = _count_indexed(state, r"transformer\.resblocks\.(\d+)\.ln_1\.weight$")
    mlp_hidden = (
        int(_require(state, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0])
        if depth
        else 4 * width
    )
    return TextConfig(
        width=int(width),
        depth=depth,
        heads=heads or heads_for_width(int(width)),
        mlp_hidden=mlp_hidden,
        vocab_size=int(vocab),
        max_len=max_len,
    )


def split_temperature(state: dict[str, torch.Tensor]) -> float | None:
    """Removes the temperature entries from a text state dict; returns the value if any."""
    value = None
    for key in TEMPERATURE_KEYS:
        if key in state:
            tensor = state.pop(key)
            value = float(tensor.reshape(-1)[0]) if value is None else value
    return value
