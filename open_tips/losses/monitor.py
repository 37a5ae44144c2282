"""Collapse monitors for the self-distillation and MIM heads (no gradient, no host sync).

Two failure modes look alike in the loss curve but not here: a *uniform* teacher has entropy near log K and
a mean distribution near uniform (KL ~ 0), so the loss sits at log K and shapes nothing; a *collapsed* teacher
puts every row on the same prototype, so its entropy falls towards 0 while the KL of its mean from uniform
rises towards log K. ``prototypes_used`` counts distinct argmax prototypes over the rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)


@torch.no_grad()
def distribution_stats(
    teacher_probs: torch.Tensor, student_logits: torch.Tensor | None, student_temp: float
) -> dict[str, torch.Tensor]:
    """Teacher entropy (row mean), KL(mean teacher row || uniform), prototypes in use and student entropy,
    each as a 0-d float tensor. Inputs have any leading shape and the prototypes last."""
    num_prototypes = teacher_probs.shape[-1]
    rows = teacher_probs.detach().float().reshape(-1, num_prototypes)
    mean_row = rows.mean(dim=0)
    used = torch.zeros(num_prototypes, device=rows.device, dtype=torch.bool)
    used[rows.argmax(dim=-1)] = True
    stats = {
        "teacher_entropy": _entropy(rows).mean(),
        "teacher_kl_uniform": math.log(num_prototypes) - _entropy(mean_row),
        "prototypes_used": used.sum().float(),
    }
    if student_logits is not None:
        student = F.softmax(
            student_logits.detach().float().reshape(-1, num_prototypes) / student_temp, dim=-1
        )
        stats["student_entropy"] = _entropy(student).mean()
    return stats
