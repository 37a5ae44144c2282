"""AdamW parameter groups: no weight decay on biases, norms, LayerScale, tokens and temperatures; a lower
learning rate for the patch embedding (DINOv2's 0.2x)."""

from __future__ import annotations

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


def param_groups(module: nn.Module, cfg: OptimSection) -> list[dict]:
    groups: dict[tuple[bool, float], list] = {}
    names: dict[tuple[bool, float], list[str]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad or name.startswith("teacher."):
            continue
        decay = param.ndim >= 2 and not any(key in name for key in _NO_DECAY_NAMES)
        lr_mult = cfg.patch_embed_lr_mult if "patch_embed" in name else 1.0
        if ".head." in name and name.startswith("terms."):
            lr_mult = cfg.head_lr_mult
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
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)


def set_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
        group["weight_decay"] = weight_decay if group["apply_wd"] else 0.0
