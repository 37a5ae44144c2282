"""Masked image modelling (iBOT): teacher patch prototypes supervise the student's masked patches.

iBOT averages the per-token cross-entropy over each image's masked tokens, then over images that have any;
iBOT++ (TIPSv2) supervises every token, visible ones included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from open_tips.losses._dist import all_reduce_mean


class IBOTPatchLoss(nn.Module):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return F.softmax((teacher_patch_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_patch_logits: torch.Tensor) -> None:
        logits = teacher_patch_logits.float()
        batch_center = logits.reshape(-1, logits.shape[-1]).mean(dim=0).reshape(1, 1, -1)
        batch_center = all_reduce_mean(batch_center)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def forward(self, student_patch_logits: torch.Tensor, teacher_patch_probs: torch.Tensor,
                masks: torch.Tensor | None, all_tokens: bool = False) -> torch.Tensor:
        """student logits / teacher probs [B, N, K]; masks bool [B, N] (True = masked)."""
        log_probs = F.log_softmax(student_patch_logits.float() / self.student_temp, dim=-1)
        per_token = torch.sum(-teacher_patch_probs * log_probs, dim=-1)  # [B, N]
        if all_tokens or masks is None:
            return per_token.mean()
        weights = masks.float()
        counts = weights.sum(dim=-1)
        has_mask = counts > 0
        if not bool(has_mask.any()):
            return per_token.sum() * 0.0  # keeps the graph; nothing to supervise
        per_image = (per_token * weights).sum(dim=-1) / counts.clamp_min(1.0)
        return per_image[has_mask].mean()
