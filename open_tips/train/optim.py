"""AdamW parameter groups: no weight decay on biases, norms, LayerScale, tokens and temperatures; a lower
learning rate for the patch embedding (DINOv2's 0.2x); optional layer-wise lr decay (``optim.layer_decay``).
Frozen parameters (``requires_grad`` False: ``model.trainable``, LoRA base weights) are left out."""

from __future__ import annotations

import re

import torch
from torch import nn

from open_tips.train.config import OptimSection

_NO_DECAY_NAMES = (
    "pos_embed",
    "cls_token",
    "register_tokens",
    "mask_token",
    "log_temperature",
    "siglip_bias",
    "gamma",
    "token_embedding",
)


# (tower prefix, block pattern, embedding names) for layer ids; both towers are decayed over their own depth.
_TOWERS = (
    (
        "model.vision.",
        re.compile(r"^model\.vision\.blocks\.(\d+)\."),
        ("patch_embed", "cls_token", "pos_embed", "register_tokens", "mask_token"),
    ),
    ("model.text.", re.compile(r"^model\.text\.transformer\.resblocks\.(\d+)\."), ("token_embedding",)),
)


def _depths(names: list[str]) -> dict[str, int]:
    depths = {}
    for prefix, pattern, _ in _TOWERS:
        ids = [int(m[1]) for m in map(pattern.match, names) if m]
        depths[prefix] = max(ids) + 1 if ids else 0
    return depths


def layer_decay_scale(name: str, depths: dict[str, int], decay: float) -> float:
    """BEiT's layer-wise decay: embeddings are layer 0, block i is layer i + 1, the rest of a tower (its
    final norm) layer depth + 1; the scale is decay^(depth + 1 - layer). Outside the towers (heads,
    temperature) the scale is 1."""
    if decay == 1.0:
        return 1.0
    for prefix, pattern, embeddings in _TOWERS:
        if not name.startswith(prefix):
            continue
        depth = depths[prefix]
        match = pattern.match(name)
        if match:
            layer = int(match[1]) + 1
        elif name[len(prefix) :].split(".")[0] in embeddings:
            layer = 0
        else:
            layer = depth + 1
        return decay ** (depth + 1 - layer)
    return 1.0


def param_groups(module: nn.Module, cfg: OptimSection) -> list[dict]:
    groups: dict[tuple[bool, float], list] = {}
    names: dict[tuple[bool, float], list[str]] = {}
    depths = _depths([name for name, _ in module.named_parameters()])
    for name, param in module.named_parameters():
        if not param.requires_grad or name.startswith("teacher."):
            continue
        decay = param.ndim >= 2 and not any(key in name for key in _NO_DECAY_NAMES)
        lr_mult = cfg.patch_embed_lr_mult if "patch_embed" in name else 1.0
        if ".head." in name and name.startswith("terms."):
            lr_mult = cfg.head_lr_mult
        lr_mult *= layer_decay_scale(name, depths, cfg.layer_decay)
        groups.setdefault((decay, lr_mult), []).append(param)
        names.setdefault((decay, lr_mult), []).append(name)
    return [
        {
            "params": params,
            "apply_wd": decay,
            "lr_mult": lr_mult,
            "weight_decay": 0.0,
            "names": names[(decay, lr_mult)],
        }
        for (decay, lr_mult), params in groups.items()
    ]


def build_optimizer(module: nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    groups = param_groups(module, cfg)
    for group in groups:
        group.pop("names")
    params = [p for group in groups for p in group["params"]]
    # Fused AdamW takes a device-side found_inf flag, so the loop skips a non-finite step without a host sync.
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=0.0, fused=fused or None)


def set_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
        group["weight_decay"] = weight_decay if group["apply_wd"] else 0.0
