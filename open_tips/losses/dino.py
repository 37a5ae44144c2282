"""Self-distillation (DINO): a centred, sharpened teacher distribution supervises the student's log-softmax.

TIPS feeds ONE global crop to the teacher and M local crops to the student; the loss takes any number of
teacher and student crops and averages the cross-entropy over the (student, teacher) pairs it compares.
The teacher-temperature warm-up (0.04 -> 0.07) is ``open_tips.train.schedules.linear_warmup``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from open_tips.losses.distributed import all_reduce_


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp teacher targets (SwAV / DINOv2), an alternative to centering: probabilities over the
    last dim whose prototype marginals are equalised over all rows of all ranks. Any leading shape.

    Same arithmetic as DINOv2's ``sinkhorn_knopp_teacher`` except that the global max is taken out before
    exp() (no overflow at sharp temperatures). Float32: a row whose logits all lie more than ~87 * T below
    the global max underflows to a zero row (no nan); head outputs are cosines, far from that regime."""
    num_prototypes = teacher_logits.shape[-1]
    flat = teacher_logits.float().reshape(-1, num_prototypes)
    # Subtracting the global max keeps exp() finite; the constant cancels in the normalisations below.
    top = all_reduce_(flat.max().reshape(1), op="max")
    q = torch.exp((flat - top) / teacher_temp).T  # [K, N]
    num_rows = all_reduce_(torch.tensor([float(q.shape[1])], device=q.device))
    tiny = torch.finfo(q.dtype).tiny  # an underflowed prototype or row must not divide by zero
    q /= all_reduce_(q.sum().reshape(1)).clamp_min(tiny)
    for _ in range(n_iterations):
        q /= all_reduce_(q.sum(dim=1, keepdim=True)).clamp_min(tiny)  # each prototype gets mass 1/K
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # each row gets mass 1/N
        q /= num_rows
    q *= num_rows  # rows sum to 1
    return q.T.reshape(teacher_logits.shape)


class _CenteredTeacher(nn.Module):
    """Teacher-side state shared by the DINO and iBOT losses: the EMA centre of the teacher logits."""

    def __init__(
        self, out_dim: int, student_temp: float, center_momentum: float, center_shape: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        # [1, K] (DINO) or [1, 1, K] (iBOT): the shapes saved in training checkpoints.
        self.register_buffer("center", torch.zeros(center_shape))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Teacher probabilities ``softmax((logits - center) / teacher_temp)``; no gradient."""
        return F.softmax((teacher_logits.float() - self.center.reshape(-1)) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iterations)

    @torch.no_grad()
    def batch_center(self, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean teacher logits over every row of every rank (sum and count all-reduced, so unequal per-rank
        batches are weighted correctly), shaped like ``center``, and the row count."""
        flat = teacher_logits.detach().float().reshape(-1, self.out_dim)
        stats = torch.cat([flat.sum(dim=0), flat.new_tensor([flat.shape[0]])])
        all_reduce_(stats)
        count = stats[-1]
        return (stats[:-1] / count.clamp_min(1.0)).reshape(self.center.shape), count

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor, batch: tuple | None = None) -> None:
        """EMA of the mean teacher logits (``batch_center``). Call after the teacher targets are computed."""
        batch_center, count = batch if batch is not None else self.batch_center(teacher_logits)
        updated = self.center * self.center_momentum + batch_center * (1.0 - self.center_momentum)
        # No rows anywhere: keep the centre (a where(), not an if, so no host sync).
        self.center.copy_(torch.where(count > 0, updated, self.center))

    def _student_log_probs(self, student_logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(student_logits.float() / self.student_temp, dim=-1)


class DINOLoss(_CenteredTeacher):
    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum, (1, out_dim))

    def forward(
        self,
        student_logits: Sequence[torch.Tensor],
        teacher_probs: Sequence[torch.Tensor],
        ignore_diagonal: bool = False,
    ) -> torch.Tensor:
        """Cross-entropy H(teacher, student), batch-averaged, then averaged over (student crop, teacher crop)
        pairs. ``student_logits``: one [B, K] per student crop; ``teacher_probs``: one [B, K] per teacher crop.
        With ``ignore_diagonal`` pairs with the same crop index are skipped (student and teacher both seeing
        the same global crops, as in DINO)."""
        total: torch.Tensor | float = 0.0
        pairs = 0
        for s_index, s_logits in enumerate(student_logits):
            log_probs = self._student_log_probs(s_logits)
            for t_index, t_probs in enumerate(teacher_probs):
                if ignore_diagonal and s_index == t_index:
                    continue
                total = total + torch.sum(-t_probs.detach() * log_probs, dim=-1).mean()
                pairs += 1
        if pairs == 0:
            raise ValueError("no (student, teacher) crop pair to compare")
        return total / pairs
