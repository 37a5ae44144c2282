"""Self-distillation (DINO): centred, sharpened teacher distribution vs student log-softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from open_tips.losses._dist import all_reduce_mean


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the batch-mean teacher logits (mean over all ranks)."""
        batch_center = teacher_logits.float().reshape(-1, teacher_logits.shape[-1]).mean(dim=0, keepdim=True)
        batch_center = all_reduce_mean(batch_center)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor],
                ignore_diagonal: bool = False) -> torch.Tensor:
        """Cross-entropy averaged over (student crop, teacher crop) pairs; with ``ignore_diagonal`` the pairs
        of the same crop index are skipped (when student and teacher see the same global crops)."""
        total, pairs = 0.0, 0
        for s_index, s_logits in enumerate(student_logits):
            log_probs = F.log_softmax(s_logits.float() / self.student_temp, dim=-1)
            for t_index, t_probs in enumerate(teacher_probs):
                if ignore_diagonal and s_index == t_index:
                    continue
                total = total + torch.sum(-t_probs * log_probs, dim=-1).mean()
                pairs += 1
        if pairs == 0:
            raise ValueError("no (student, teacher) crop pair to compare")
        return total / pairs
