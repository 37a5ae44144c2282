"""LoRA (low-rank adaptation) on the projection weights of both towers, written natively.

An adapted weight is ``W + (alpha / rank) * B @ A`` with ``A`` [rank, in] and ``B`` [out, rank], registered
as a ``torch.nn.utils.parametrize`` parametrization of the weight. Why native and not peft:

- the text tower's attention holds its packed qkv as a bare parameter (``attn.in_proj_weight``, the
  official layout) used through ``F.linear``; peft's LoRA layers replace ``nn.Linear`` modules and cannot
  reach it (its ``target_parameters`` path is itself a parametrization, without dropout);
- a parametrization keeps every forward unchanged, including code that reads ``attn.qkv.weight`` directly
  (the MaskCLIP value trick), and FSDP2 / DDP see plain parameters (``...parametrizations.weight.original``,
  ``...parametrizations.weight.0.lora_A`` / ``lora_B``) inside the blocks they already wrap;
- merging is torch's own ``remove_parametrizations(..., leave_parametrized=True)``, and a checkpoint's state
  dict merges without building the model (``merge_lora_state``), since the scale is stored with it.

Cost: the adapted weight is formed once per forward, so backward still computes a full weight gradient
(the compute of full fine-tuning); the saving is optimiser state and memory for the frozen base weights.
``dropout`` drops input features of the low-rank path (one mask per forward, shared over the batch), the
weight-space form of LoRA's input dropout.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")

# Logical target -> weight paths inside one block (the first that exists is used; the vision MLP is either
# fc1/fc2 (GELU) or w12/w3 (SwiGLU)).
_VISION_PATHS = {
    "qkv": ("attn.qkv.weight",),
    "proj": ("attn.proj.weight",),
    "fc1": ("mlp.fc1.weight", "mlp.w12.weight"),
    "fc2": ("mlp.fc2.weight", "mlp.w3.weight"),
}
_TEXT_PATHS = {
    "qkv": ("attn.in_proj_weight",),
    "proj": ("attn.out_proj.weight",),
    "fc1": ("mlp.c_fc.weight",),
    "fc2": ("mlp.c_proj.weight",),
}
_STATE_KEY = re.compile(r"^(?P<prefix>.*)\.parametrizations\.(?P<name>\w+)\.original$")


class LoRAUpdate(nn.Module):
    """The parametrization ``W -> W + scale * B @ A``; ``B`` starts at zero, so at init it is the identity."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout}")
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and the LoRA paper's code)
        # Stored (persistent, 0-d so it does not promote bf16 weights) so a state dict merges on its own.
        self.register_buffer("scale", torch.tensor(float(alpha) / rank))
        self.dropout = float(dropout)

    def delta(self) -> torch.Tensor:
        a = self.lora_A
        if self.training and self.dropout > 0:
            keep = F.dropout(torch.ones_like(a[:1]), self.dropout, training=True)
            a = a * keep
        return (self.lora_B @ a) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def _blocks(tower: nn.Module) -> tuple[list[nn.Module], dict[str, tuple[str, ...]]]:
    if hasattr(tower, "blocks"):
        return list(tower.blocks), _VISION_PATHS
    if hasattr(tower, "transformer") and hasattr(tower.transformer, "resblocks"):
        return list(tower.transformer.resblocks), _TEXT_PATHS
    raise TypeError(f"LoRA: {type(tower).__name__} is neither a TIPS vision nor a text tower")


def _resolve(block: nn.Module, path: str) -> tuple[nn.Module, str] | None:
    *parents, name = path.split(".")
    module = block
    for part in parents:
        module = getattr(module, part, None)
        if module is None:
            return None
    if name not in module._parameters and not (
        parametrize.is_parametrized(module) and name in module.parametrizations
    ):
        return None
    return module, name


def apply_lora(
    tower: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: tuple[str, ...] | list[str] = LORA_TARGETS,
) -> list[str]:
    """Adds LoRA to the ``targets`` projections of every block of a vision or text tower; returns the
    adapted weights' names (relative to the tower). Does not change ``requires_grad`` of anything else."""
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; known: {', '.join(LORA_TARGETS)}")
    blocks, paths = _blocks(tower)
    prefix = "blocks" if paths is _VISION_PATHS else "transformer.resblocks"
    adapted = []
    for index, block in enumerate(blocks):
        for target in targets:
            for path in paths[target]:
                found = _resolve(block, path)
                if found is None:
                    continue
                module, name = found
                if is_lora(module, name):
                    raise ValueError(f"{prefix}.{index}.{path} already has LoRA")
                weight = getattr(module, name)
                update = LoRAUpdate(weight.shape[0], weight.shape[1], rank, alpha, dropout)
                update.to(device=weight.device, dtype=weight.dtype)
                parametrize.register_parametrization(module, name, update)
                adapted.append(f"{prefix}.{index}.{path}")
                break
    return adapted


def is_lora(module: nn.Module, name: str) -> bool:
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, LoRAUpdate) for p in module.parametrizations[name]
    )


def lora_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every LoRA factor under ``module``."""
    return [(n, p) for n, p in module.named_parameters() if n.endswith((".lora_A", ".lora_B"))]


@torch.no_grad()
def merge_lora(module: nn.Module) -> int:
    """Folds every LoRA update under ``module`` into its weight, in place (the module gets its plain
    parameter names back). Returns how many weights were merged.

    Not ``remove_parametrizations``: it deletes the weight property from the parametrized class, which a
    deep copy (the EMA teacher) shares, and would break that copy; here only this instance changes class."""
    merged = 0
    for sub in list(module.modules()):
        if not parametrize.is_parametrized(sub):
            continue
        names = list(sub.parametrizations.keys())
        if not any(is_lora(sub, name) for name in names):
            continue
        if not all(is_lora(sub, name) for name in names) or any(
            len(sub.parametrizations[n]) != 1 for n in names
        ):
            raise ValueError(f"{type(sub).__name__}: LoRA mixed with other parametrizations; cannot merge")
        sub.parametrizations.eval()  # no dropout in the merged value
        values = {}
        for name in names:
            original = sub.parametrizations[name].original
            values[name] = nn.Parameter(getattr(sub, name).detach(), requires_grad=original.requires_grad)
        sub.__class__ = sub.__class__.__bases__[0]
        del sub._modules["parametrizations"]
        for name, value in values.items():
            sub.register_parameter(name, value)
        merged += len(names)
    return merged


@torch.no_grad()
def merge_lora_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """A state dict with LoRA parametrizations -> the plain state dict of the merged model (official
    names), and how many weights were merged. Entries without LoRA pass through unchanged."""
    out: dict[str, torch.Tensor] = {}
    merged = 0
    consumed: set[str] = set()
    for key, value in state.items():
        match = _STATE_KEY.match(key)
        if match is None:
            continue
        base = f"{match['prefix']}.parametrizations.{match['name']}"
        lora_a, lora_b, scale = f"{base}.0.lora_A", f"{base}.0.lora_B", f"{base}.0.scale"
        missing = [k for k in (lora_a, lora_b, scale) if k not in state]
        if missing:
            raise KeyError(f"{key}: LoRA entries missing from the state dict: {', '.join(missing)}")
        if f"{base}.1.lora_A" in state:
            raise ValueError(f"{base}: more than one parametrization; cannot merge")
        a, b = state[lora_a].float(), state[lora_b].float()
        if b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(value.shape):
            raise ValueError(
                f"{base}: LoRA shapes B {tuple(b.shape)} x A {tuple(a.shape)} do not fit the weight "
                f"{tuple(value.shape)}"
            )
        # Same arithmetic as LoRAUpdate.forward, so a merged model reproduces the adapted one.
        delta = (b @ a) * state[scale].float()
        out[f"{match['prefix']}.{match['name']}"] = value + delta.to(value.dtype)
        consumed |= {key, lora_a, lora_b, scale}
        merged += 1
    for key, value in state.items():
        if key not in consumed:
            if ".parametrizations." in key and (".lora_" in key or key.endswith(".scale")):
                raise KeyError(f"{key}: LoRA entry without its base weight in the state dict")
            out[key] = value
    return out, merged
