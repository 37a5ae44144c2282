"""Projection heads for self-distillation and MIM (DINO/iBOT style)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.utils.parametrizations import weight_norm


class BatchNormAcrossRanks(nn.Module):
    """Batch normalisation over every leading dimension of the whole (all-rank) batch, with no running
    statistics: heads are used only in training, and the EMA teacher (kept in eval mode) must normalise with
    its own batch's statistics too, as DINO's teacher in train mode does.

    Written here because ``nn.SyncBatchNorm`` refuses CPU tensors (gloo runs and tests) and keeps running
    statistics the teacher should not use. Statistics are all-reduced with autograd, so a 2-process run
    equals one process with the same global batch."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)  # bf16/fp16 statistics in fp32
        flat = x.reshape(-1, x.shape[-1]).to(compute)
        moments = torch.cat([flat.sum(0), (flat * flat).sum(0), flat.new_tensor([flat.shape[0]])])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            moments = all_reduce(moments)
        dim = flat.shape[-1]
        count = moments[-1].clamp_min(1.0)
        mean = moments[:dim] / count
        var = (moments[dim : 2 * dim] / count - mean * mean).clamp_min(0.0)
        out = (x.to(compute) - mean) * torch.rsqrt(var + self.eps)
        return (out * self.weight + self.bias).to(x.dtype)


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototype layer (no bias, unit norm gain).

    ``norm="batch"`` puts batch normalisation after each hidden layer (DINO's ``use_bn_in_head``). It is the
    default in training because the backbone's CLS tokens of different images start in a narrow cone
    (pairwise cosine ~0.95 in the tiny preset): without it the head maps every image to nearly the same
    bottleneck direction, the centred teacher logits differ across images by less than the teacher
    temperature, and the teacher stays uniform (docs/training.md, "Self-distillation dynamics")."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"head norm must be none or batch, got {norm!r}")
        nlayers = max(nlayers, 1)
        self.out_dim = out_dim
        self.norm = norm

        def hidden(in_features: int) -> list[nn.Module]:
            linear = nn.Linear(in_features, hidden_dim)
            if norm == "batch":
                return [linear, BatchNormAcrossRanks(hidden_dim), nn.GELU()]
            return [linear, nn.GELU()]

        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        # The gain is fixed at 1 (DINO): the prototypes' direction is learned, their scale is not.
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return self.last_layer(x)
