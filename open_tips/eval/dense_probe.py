"""A linear head on frozen patch features, trained on cached features with upsampled dense targets."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


def dense_inputs(features: dict[str, torch.Tensor], with_cls: bool = False) -> torch.Tensor:
    """[N, D or 2D, h, w] channel-first patch features, optionally concatenated with the CLS token."""
    patches = features["patch_tokens"].permute(0, 3, 1, 2)
    if with_cls:
        cls = features["cls_web"][:, :, None, None].expand(-1, -1, *patches.shape[-2:])
        patches = torch.cat([patches, cls], dim=1)
    return patches.float()


class DenseLinearProbe(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.head((x - self.mean) / self.std)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def fit_dense_probe(inputs: torch.Tensor, targets: torch.Tensor, out_dim: int,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], epochs: int = 40,
                    lr: float = 1e-1, weight_decay: float = 1e-4, batch_size: int = 16,
                    desc: str = "dense probe") -> DenseLinearProbe:
    """inputs [N, C, h, w]; targets [N, H, W, ...]; loss_fn(upsampled logits, targets)."""
    torch.manual_seed(0)
    mean = inputs.mean(dim=(0, 2, 3), keepdim=True)[0:1]
    std = inputs.std(dim=(0, 2, 3), keepdim=True)[0:1].clamp_min(1e-6)
    probe = DenseLinearProbe(inputs.shape[1], out_dim, mean, std)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    # Train against targets subsampled to at most 4x the patch grid: the probe is linear per patch, so finer
    # targets add cost (256 depth bins x full resolution) but little signal. Evaluation uses full resolution.
    stride = max(1, targets.shape[1] // (4 * inputs.shape[2]))
    targets = targets[:, ::stride, ::stride]
    size = tuple(targets.shape[1:3])
    steps_per_epoch = max(1, (inputs.shape[0] + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(0)
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        order = torch.randperm(inputs.shape[0], generator=generator)
        for start in range(0, inputs.shape[0], batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad()
            loss_fn(probe(inputs[index], size), targets[index]).backward()
            optimizer.step()
            schedule.step()
    return probe.eval()


@torch.no_grad()
def predict(probe: DenseLinearProbe, inputs: torch.Tensor, size: tuple[int, int], batch_size: int = 32) -> torch.Tensor:
    return torch.cat([probe(inputs[i:i + batch_size], size) for i in range(0, inputs.shape[0], batch_size)])
