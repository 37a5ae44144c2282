"""What trains: per-tower modes (``model.trainable.{vision,text}``) and the head warm-up of continued
pretraining (``train.head_warmup_steps``).

Modes: ``full`` (everything), ``frozen`` (nothing: ``requires_grad`` False, so the optimiser never holds the
parameters), ``last:K`` (the last K blocks and the final norm), ``lora`` (LoRA factors on the projections of
every block, ``model.lora.*``; the base weights are frozen). Modes are applied to the model before the
objective is built, so the EMA teacher's copy has the same parameter names as the student.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from open_tips.models.lora import apply_lora, lora_parameters
from open_tips.models.tips import TIPSModel

MODES = ("full", "frozen", "last:K", "lora")
_LAST = re.compile(r"^last:(\d+)$")


def parse_mode(value: str, key: str) -> tuple[str, int]:
    """``"last:3"`` -> ``("last", 3)``; other modes -> ``(mode, 0)``. Raises ValueError naming ``key``."""
    if value in ("full", "frozen", "lora"):
        return value, 0
    match = _LAST.match(value) if isinstance(value, str) else None
    if match is None or int(match[1]) < 1:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(MODES)} (K >= 1)")
    return "last", int(match[1])


def _tower_parts(tower: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    if hasattr(tower, "blocks"):
        return list(tower.blocks), tower.norm
    return list(tower.transformer.resblocks), tower.ln_final


def apply_trainable(model: TIPSModel, trainable, lora) -> dict[str, int]:
    """Applies ``trainable`` (``model.trainable`` section) with ``lora`` (``model.lora``) to the model in
    place; returns the number of trainable parameter elements per tower."""
    counts = {}
    for tower_name in ("vision", "text"):
        key = f"model.trainable.{tower_name}"
        mode, k = parse_mode(getattr(trainable, tower_name), key)
        tower = getattr(model, tower_name)
        if tower is None:
            if mode != "full":
                raise ValueError(f"{key}: the model has no {tower_name} tower")
            continue
        if mode != "full":
            tower.requires_grad_(False)
        if mode == "last":
            blocks, final_norm = _tower_parts(tower)
            if k > len(blocks):
                raise ValueError(f"{key}: last:{k} but the {tower_name} tower has {len(blocks)} blocks")
            for block in blocks[len(blocks) - k :]:
                block.requires_grad_(True)
            final_norm.requires_grad_(True)
        elif mode == "lora":
            adapted = apply_lora(tower, lora.rank, lora.alpha, lora.dropout, tuple(lora.targets))
            if not adapted:
                raise ValueError(
                    f"model.lora.targets: {lora.targets} matched no weight of the {tower_name} tower"
                )
            for _, param in lora_parameters(tower):
                param.requires_grad_(True)
        counts[tower_name] = sum(p.numel() for p in tower.parameters() if p.requires_grad)
    return counts


def is_head_parameter(name: str) -> bool:
    """The DINO / iBOT projection heads of the student (what learns during the head warm-up)."""
    return name.startswith("terms.") and ".head." in name


def hold_all_but_heads(objective: nn.Module) -> None:
    """Head warm-up step: drops the gradients of everything but the heads (both towers, the temperature,
    a SigLIP bias), so AdamW leaves those parameters and their moments untouched this step. Gradients are
    dropped instead of toggling ``requires_grad`` so DDP / FSDP2 wrappers and the optimiser stay as built."""
    for name, param in objective.named_parameters():
        if param.grad is not None and not is_head_parameter(name):
            param.grad = None


@torch.no_grad()
def copy_teacher_heads(objective: nn.Module) -> int:
    """End of the head warm-up: the teacher's heads become copies of the student's (trained) heads, whose
    EMA would otherwise lag behind the random start for ~1 / (1 - momentum) steps. Returns tensors copied."""
    teacher = getattr(objective, "teacher", None)
    if teacher is None:
        return 0
    copied = 0
    for teacher_head, student_head in (
        (teacher.dino_head, objective.dino_head),
        (teacher.ibot_head, objective.ibot_head),
    ):
        if teacher_head is None or student_head is None:
            continue
        for (t_name, t_param), (s_name, s_param) in zip(
            teacher_head.named_parameters(), student_head.named_parameters()
        ):
            if t_name != s_name:
                raise RuntimeError(f"teacher/student head mismatch: {t_name} vs {s_name}")
            t_param.copy_(s_param.detach())
            copied += 1
    return copied
