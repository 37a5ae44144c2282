"""KoLeo regulariser (DINOv2): the Kozachenko-Leonenko entropy estimator spreads features apart by
penalising small nearest-neighbour distances within the (per-rank) batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x [B, D]: L2-normalise, take each row's nearest other row (largest dot product), return
    ``-log(distance + eps)`` averaged over rows. Zero (with a graph) for fewer than two rows."""
    if x.ndim != 2:
        raise ValueError(f"expected [B, D] features, got {tuple(x.shape)}")
    if x.shape[0] < 2:
        return x.sum() * 0.0  # no neighbour to measure
    with torch.autocast(x.device.type, enabled=False):
        x = F.normalize(x.float(), dim=-1, eps=eps)
        with torch.no_grad():  # the neighbour's index is a choice, not a differentiable quantity
            similarity = x @ x.T
            similarity.fill_diagonal_(-2.0)  # below any cosine: never pick oneself
            neighbour = similarity.argmax(dim=1)
        distances = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)
        return -torch.log(distances + eps).mean()
