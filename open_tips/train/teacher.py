"""The self-distillation teacher: a full EMA copy (TIPS v1) or EMA heads on the shared backbone (TIPSv2).

With ``head_ema`` the teacher's backbone *is* the student's backbone run without gradient on the clean
global crop; only the projection heads keep an EMA copy. No second backbone is held in memory.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _frozen_copy(module: nn.Module | None) -> nn.Module | None:
    if module is None:
        return None
    clone = copy.deepcopy(module)
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone


class Teacher(nn.Module):
    def __init__(
        self, kind: str, vision: nn.Module, dino_head: nn.Module | None, ibot_head: nn.Module | None
    ) -> None:
        super().__init__()
        if kind not in ("full_ema", "head_ema"):
            raise ValueError(f"teacher kind must be full_ema or head_ema, got {kind!r}")
        self.kind = kind
        self.vision = _frozen_copy(vision) if kind == "full_ema" else None
        self.dino_head = _frozen_copy(dino_head)
        self.ibot_head = _frozen_copy(ibot_head)

    def pairs(self, vision: nn.Module, dino_head: nn.Module | None, ibot_head: nn.Module | None):
        """(teacher module, student module) pairs that the EMA updates."""
        pairs = [(self.dino_head, dino_head), (self.ibot_head, ibot_head)]
        if self.vision is not None:
            pairs.append((self.vision, vision))
        return [(t, s) for t, s in pairs if t is not None]

    @torch.no_grad()
    def update(
        self,
        momentum: float | torch.Tensor,
        vision: nn.Module,
        dino_head: nn.Module | None,
        ibot_head: nn.Module | None,
    ) -> None:
        """``momentum`` may be a 0-dim device tensor (the loop's skip flag folded in) to avoid a host sync."""
        teacher_params, student_params = [], []
        for teacher, student in self.pairs(vision, dino_head, ibot_head):
            for (t_name, t_param), (s_name, s_param) in zip(
                teacher.named_parameters(), student.named_parameters()
            ):
                if t_name != s_name:
                    raise RuntimeError(f"teacher/student parameter mismatch: {t_name} vs {s_name}")
                teacher_params.append(t_param)
                student_params.append(s_param.detach().to(t_param.dtype))
        if not teacher_params:
            return
        if isinstance(momentum, torch.Tensor):  # the list overload keeps the weight on the device
            weight = 1.0 - momentum
            torch._foreach_lerp_(teacher_params, student_params, [weight] * len(teacher_params))
        else:
            torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
