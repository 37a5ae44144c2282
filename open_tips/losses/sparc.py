"""SPARC fine-grained loss (Bica et al. 2024): per caption token, a sparse weighted mean of the image's
patches (its language-grouped vision embedding); tokens and grouped embeddings are contrasted within each
image-caption pair, so no other sample serves as a negative.

Computed in float32 with autocast off: the min-max normalisation and the 1/P cut-off are sensitive to
bf16 rounding of the raw similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparc_alignment_weights(
    patch_emb: torch.Tensor, token_emb: torch.Tensor, threshold: float | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """[B, L, P] alignment weights from patch_emb [B, P, D] and token_emb [B, L, D]: raw (unnormalised)
    token-patch dot products, min-max normalised over the patches of each token (``eps`` in the
    denominator), values below ``threshold`` (default 1/P) zeroed, rows renormalised to sum 1 (an all-zero
    row, i.e. a token equally similar to every patch, stays zero). Differentiable: SPARC lets the gradient
    flow through the weights."""
    with torch.autocast(patch_emb.device.type, enabled=False):
        similarity = token_emb.float() @ patch_emb.float().transpose(1, 2)  # [B, L, P]
        low = similarity.amin(dim=-1, keepdim=True)
        high = similarity.amax(dim=-1, keepdim=True)
        normalised = (similarity - low) / (high - low + eps)
        cutoff = 1.0 / patch_emb.shape[1] if threshold is None else threshold
        sparse = torch.where(normalised < cutoff, torch.zeros_like(normalised), normalised)
        return sparse / sparse.sum(dim=-1, keepdim=True).clamp_min(eps)


def sparc_loss(
    patch_emb: torch.Tensor,
    token_emb: torch.Tensor,
    token_padding: torch.Tensor,
    temperature: torch.Tensor | float,
    *,
    threshold: float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """SPARC's fine-grained loss, a scalar.

    patch_emb [B, P, D]; token_emb [B, L, D]; token_padding [B, L] bool (True = padding). Per sample: logits
    between its L unit token embeddings and its L unit grouped embeddings, divided by ``temperature``;
    InfoNCE token->grouped and grouped->token with the matching index as the positive; padded tokens are
    neither rows nor columns. Averaged over each sample's valid tokens, then over samples that have any.
    """
    if patch_emb.ndim != 3 or token_emb.ndim != 3 or patch_emb.shape[0] != token_emb.shape[0]:
        raise ValueError(
            f"expected patch_emb [B, P, D] and token_emb [B, L, D], got {tuple(patch_emb.shape)} "
            f"and {tuple(token_emb.shape)}"
        )
    if token_padding.shape != token_emb.shape[:2]:
        raise ValueError(
            f"token_padding {tuple(token_padding.shape)} does not match tokens {tuple(token_emb.shape[:2])}"
        )
    valid = ~token_padding.bool()
    # Zero the padded tokens first: whatever they hold (even nan) then touches neither the loss nor a gradient.
    token_emb = token_emb.masked_fill(~valid[..., None], 0.0)
    weights = sparc_alignment_weights(patch_emb, token_emb, threshold, eps)
    with torch.autocast(patch_emb.device.type, enabled=False):
        grouped = F.normalize(weights @ patch_emb.float(), dim=-1, eps=1e-6)  # [B, L, D]
        tokens = F.normalize(token_emb.float(), dim=-1, eps=1e-6)
        logits = tokens @ grouped.transpose(1, 2) / temperature  # [B, L tokens, L grouped]
        # Masked columns get the most negative finite value: a fully padded row stays finite (no nan).
        neg = torch.finfo(logits.dtype).min
        column_valid = valid[:, None, :]
        logits_t2v = logits.masked_fill(~column_valid, neg)
        logits_v2t = logits.transpose(1, 2).masked_fill(~column_valid, neg)
        loss_t2v = -F.log_softmax(logits_t2v, dim=-1).diagonal(dim1=1, dim2=2)  # [B, L]
        loss_v2t = -F.log_softmax(logits_v2t, dim=-1).diagonal(dim1=1, dim2=2)
        # where(), not a product: a padded row's own column is masked, its loss is huge and would make nan.
        per_token = torch.where(valid, 0.5 * (loss_t2v + loss_v2t), torch.zeros_like(loss_t2v))
        counts = valid.sum(dim=-1).to(per_token.dtype)
        has_tokens = (counts > 0).to(per_token.dtype)
        per_sample = per_token.sum(dim=-1) / counts.clamp_min(1.0)
        return (per_sample * has_tokens).sum() / has_tokens.sum().clamp_min(1.0)
