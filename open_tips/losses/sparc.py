"""SPARC fine-grained loss (Bica et al. 2024): per caption token, a sparse weighted mean of the image's
patches; token and grouped patch embeddings are contrasted within each image-caption pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparc_alignment_weights(patch_emb: torch.Tensor, token_emb: torch.Tensor, threshold: float | None = None,
                            eps: float = 1e-8) -> torch.Tensor:
    """[B, L, P] weights: raw token-patch dot products, min-max normalised over patches, values below the
    threshold (default 1/P) zeroed, rows renormalised to sum 1 (all-zero rows stay zero)."""
    similarity = token_emb @ patch_emb.transpose(1, 2)  # [B, L, P]
    low = similarity.amin(dim=-1, keepdim=True)
    high = similarity.amax(dim=-1, keepdim=True)
    normalised = (similarity - low) / (high - low + eps)
    cutoff = 1.0 / patch_emb.shape[1] if threshold is None else threshold
    sparse = torch.where(normalised < cutoff, torch.zeros_like(normalised), normalised)
    return sparse / (sparse.sum(dim=-1, keepdim=True) + eps)


def sparc_loss(patch_emb: torch.Tensor, token_emb: torch.Tensor, token_padding: torch.Tensor,
               temperature: torch.Tensor | float, *, threshold: float | None = None,
               eps: float = 1e-8) -> torch.Tensor:
    """patch_emb [B, P, D], token_emb [B, L, D], token_padding [B, L] bool (True = padding)."""
    weights = sparc_alignment_weights(patch_emb, token_emb, threshold, eps)
    grouped = F.normalize(weights @ patch_emb, dim=-1, eps=1e-6)  # [B, L, D]
    tokens = F.normalize(token_emb, dim=-1, eps=1e-6)
    valid = ~token_padding.bool()
    logits = tokens @ grouped.transpose(1, 2) / temperature  # [B, L (tokens), L (grouped)]
    column_mask = valid[:, None, :]
    neg_inf = torch.finfo(logits.dtype).min
    logits_t2v = logits.masked_fill(~column_mask, neg_inf)
    logits_v2t = logits.transpose(1, 2).masked_fill(~column_mask, neg_inf)
    diagonal = torch.arange(logits.shape[1], device=logits.device)
    loss_t2v = -F.log_softmax(logits_t2v, dim=-1)[:, diagonal, diagonal]  # [B, L]
    loss_v2t = -F.log_softmax(logits_v2t, dim=-1)[:, diagonal, diagonal]
    # where(), not a product: the diagonal of a padded row is masked and its loss is huge (inf * 0 = nan)
    per_token = torch.where(valid, 0.5 * (loss_t2v + loss_v2t), torch.zeros_like(loss_t2v))
    counts = valid.sum(dim=-1)
    has_tokens = counts > 0
    per_sample = per_token.sum(dim=-1) / counts.clamp_min(1)
    return per_sample[has_tokens].mean() if bool(has_tokens.any()) else per_token.sum() * 0.0
