"""Image-text contrastive losses: softmax InfoNCE (CLIP) and sigmoid (SigLIP), with cross-rank negatives."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from open_tips.losses._dist import is_distributed


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers ``x`` along dim 0 across ranks; gradients flow back to each rank's own shard."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor | float, *,
              gather: bool = True, local_loss: bool = True) -> torch.Tensor:
    """Symmetric softmax cross-entropy on cosine / temperature.

    Distributed with ``local_loss`` (open_clip's trick): each rank scores its own rows against all gathered
    columns, labels offset by ``rank * B``; the mean over ranks equals the full-batch loss.
    """
    image = F.normalize(image_emb, dim=-1)
    text = F.normalize(text_emb, dim=-1)
    if gather and is_distributed():
        all_image, all_text = gather_with_grad(image), gather_with_grad(text)
        if local_loss:
            offset = dist.get_rank() * image.shape[0]
            labels = torch.arange(image.shape[0], device=image.device) + offset
            logits_image = image @ all_text.T / temperature
            logits_text = text @ all_image.T / temperature
            return 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))
        image, text = all_image, all_text
    logits = image @ text.T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def siglip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: torch.Tensor | float,
                bias: torch.Tensor | float) -> torch.Tensor:
    """Pairwise sigmoid loss (SigLIP): -log sigmoid(z_ij (cos_ij / T + b)), z = +1 on the diagonal else -1,
    summed over pairs and divided by the batch size. Negatives from other ranks are gathered (no gradient
    to them beyond the local shard's own columns)."""
    image = F.normalize(image_emb, dim=-1)
    text = F.normalize(text_emb, dim=-1)
    offset = 0
    if is_distributed():
        text = gather_with_grad(text)
        offset = dist.get_rank() * image.shape[0]
    logits = image @ text.T / temperature + bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=logits.device)
    signs[rows, rows + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]


class DualContrastiveLoss(nn.Module):
    """TIPS: mean of CLIP(CLS1, web caption) and CLIP(CLS2, synthetic caption), one shared temperature."""

    def __init__(self, kind: str = "softmax") -> None:
        super().__init__()
        if kind not in ("softmax", "sigmoid"):
            raise ValueError(f"kind must be softmax or sigmoid, got {kind!r}")
        self.kind = kind

    def forward(self, cls_web: torch.Tensor, cls_synthetic: torch.Tensor, web_text: torch.Tensor,
                synthetic_text: torch.Tensor, temperature: torch.Tensor,
                bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.kind == "sigmoid":
            if bias is None:
                raise ValueError("the sigmoid loss needs a bias")
            web = siglip_loss(cls_web, web_text, temperature, bias)
            synthetic = siglip_loss(cls_synthetic, synthetic_text, temperature, bias)
        else:
            web = clip_loss(cls_web, web_text, temperature)
            synthetic = clip_loss(cls_synthetic, synthetic_text, temperature)
        return {"loss": 0.5 * (web + synthetic), "loss_web": web, "loss_synthetic": synthetic}
