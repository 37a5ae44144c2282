"""Image-text contrastive losses: softmax InfoNCE (CLIP) and sigmoid (SigLIP), with cross-rank negatives.

Logits are computed in float32 with autocast off: at TIPS temperatures (~0.005) a bf16 cosine error of
~4e-3 would move a logit by ~1, which is the scale of the signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from open_tips.losses.distributed import is_distributed, rank


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers ``x`` along dim 0 across ranks (every rank must pass the same shape).

    The backward sums the gradients of all ranks' copies into each rank's own shard, so with DDP's gradient
    averaging a per-rank loss behaves like the mean of the per-rank losses over the global batch.
    Identity when torch.distributed is not initialised (or has a single rank).
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def _check_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> None:
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(
            f"expected matching [B, D] embeddings, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    gather: bool = True,
    local_loss: bool = True,
) -> torch.Tensor:
    """Symmetric softmax cross-entropy on ``cosine / temperature`` (mean of image->text and text->image).

    Distributed with ``gather``: negatives come from all ranks, with gradient. With ``local_loss``
    (open_clip's trick) each rank scores only its own B rows against all W*B gathered columns, labels offset by
    ``rank * B``: O(B * W*B) logits instead of O((W*B)^2), and the mean over ranks equals the full-batch loss.
    Without ``local_loss`` every rank computes the full-batch loss. Per-rank batches must have equal size.
    """
    _check_pairs(image_emb, text_emb)
    with torch.autocast(image_emb.device.type, enabled=False):
        image, text = _unit(image_emb), _unit(text_emb)
        offset = 0
        if gather and is_distributed():
            all_image, all_text = gather_with_grad(image), gather_with_grad(text)
            if local_loss:
                offset = rank() * image.shape[0]
                logits_image = image @ all_text.T / temperature  # [B, W*B]
                logits_text = text @ all_image.T / temperature
            else:
                logits_image = all_image @ all_text.T / temperature  # [W*B, W*B]
                logits_text = logits_image.T
        else:
            logits_image = image @ text.T / temperature
            logits_text = logits_image.T
        labels = torch.arange(logits_image.shape[0], device=logits_image.device) + offset
        return 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temperature: torch.Tensor | float,
    bias: torch.Tensor | float,
    *,
    gather: bool = True,
) -> torch.Tensor:
    """Pairwise sigmoid loss (SigLIP): sum over pairs of -log sigmoid(z_ij (cos_ij / T + b)), z = +1 for the
    matching pair and -1 otherwise, divided by the batch size.

    Distributed with ``gather``: each rank scores its own images against all ranks' texts (gathered with
    gradient), so every pair of the global batch is scored exactly once and the mean over ranks equals the
    full-batch loss.
    """
    _check_pairs(image_emb, text_emb)
    with torch.autocast(image_emb.device.type, enabled=False):
        image, text = _unit(image_emb), _unit(text_emb)
        offset = 0
        if gather and is_distributed():
            text = gather_with_grad(text)
            offset = rank() * image.shape[0]
        logits = image @ text.T / temperature + bias  # [B, W*B]
        rows = torch.arange(image.shape[0], device=logits.device)
        signs = torch.full_like(logits, -1.0)
        signs[rows, rows + offset] = 1.0
        return -F.logsigmoid(signs * logits).sum() / image.shape[0]
