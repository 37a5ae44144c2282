"""Masked image modelling (iBOT): teacher patch prototypes supervise the student's patches.

The per-token cross-entropy is averaged over each image's masked tokens, then over ALL images of the batch,
an image without masked tokens counting as zero: iBOT's and DINOv2's rule (with half the images masked this
is half the mean over the masked images only; they agree when every image is masked, the default
``data.mask_probability=1``). iBOT++ (TIPSv2) supervises every token, visible ones included, as a plain mean
over all tokens.
"""

from __future__ import annotations

import torch

from open_tips.losses.dino import _CenteredTeacher


class IBOTPatchLoss(_CenteredTeacher):
    """Centre (EMA over all teacher patch tokens it is given), teacher softmax and student cross-entropy."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum, (1, 1, out_dim))

    def forward(
        self,
        student_patch_logits: torch.Tensor,
        teacher_patch_probs: torch.Tensor,
        masks: torch.Tensor | None,
        all_tokens: bool = False,
    ) -> torch.Tensor:
        """student logits / teacher probs [B, N, K]; masks bool [B, N] (True = masked); ``all_tokens`` (or
        ``masks=None``) is iBOT++."""
        log_probs = self._student_log_probs(student_patch_logits)
        per_token = torch.sum(-teacher_patch_probs.detach() * log_probs, dim=-1)  # [B, N]
        if all_tokens or masks is None:
            return per_token.mean()
        if masks.shape != per_token.shape:
            raise ValueError(f"masks {tuple(masks.shape)} do not match the tokens {tuple(per_token.shape)}")
        weights = masks.to(per_token.dtype)
        counts = weights.sum(dim=-1)
        # Arithmetic rather than boolean indexing: no host sync, and zero masked tokens gives 0 with a graph.
        per_image = (per_token * weights).sum(dim=-1) / counts.clamp_min(1.0)
        return per_image.mean()
