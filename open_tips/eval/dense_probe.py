"""A linear head on frozen patch features (segmentation, depth, normals), trained on cached features.

The head is a 1x1 convolution over the patch grid on standardised features (patch tokens, optionally with
the CLS token appended to every patch, as the DINOv2 / TIPS linear probes do); its logits are upsampled
bilinearly to the target's size and the task's loss is taken per pixel. Training subsamples the targets
to at most 4x the patch grid (2x for the 256-bin depth loss, whose cost per pixel is 30x a segmentation
loss's): the head is linear per patch, so finer targets cost time for little signal. Evaluation always runs at the target's full resolution, a chunk of
images at a time, so that N x classes x H x W logits never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from open_tips.eval.features import FeatureSet


def dense_inputs(features: FeatureSet, with_cls: bool = False, tokens: str = "patch_tokens") -> torch.Tensor:
    """[N, D (or 2D), h, w] channel-first patch features; ``with_cls`` appends ``cls_web`` to every patch."""
    patches = getattr(features, tokens)
    if patches is None:
        raise ValueError(f"the features have no {tokens}")
    patches = patches.permute(0, 3, 1, 2)
    if with_cls:
        cls = features.cls_web[:, :, None, None].expand(-1, -1, *patches.shape[-2:])
        patches = torch.cat([patches, cls], dim=1)
    return patches.float()


class DenseLinearProbe(nn.Module):
    """Standardisation (fixed, from the training features) + a 1x1 convolution + bilinear upsampling."""

    def __init__(self, in_dim: int, out_dim: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1))
        self.register_buffer("std", std.reshape(1, -1, 1, 1))
        self.head = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        logits = self.head((x - self.mean) / self.std)
        if size is None or tuple(logits.shape[-2:]) == tuple(size):
            return logits
        # channels-last: PyTorch's CPU bilinear upsampling of many channels (256 depth bins) is an order of
        # magnitude faster on it, forward and backward
        logits = logits.contiguous(memory_format=torch.channels_last)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _subsample(targets: torch.Tensor, grid: int, factor: int = 4) -> torch.Tensor:
    """Nearest subsampling of [N, H, W, ...] targets to at most ``factor`` x the patch grid."""
    stride = max(1, targets.shape[1] // (factor * grid))
    return targets[:, stride // 2 :: stride, stride // 2 :: stride]


def fit_dense_probe(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    out_dim: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int = 30,
    lr: float = 5e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    target_factor: int = 4,
    device: torch.device | str = "cpu",
    seed: int = 0,
    desc: str = "dense probe",
    progress: bool = True,
) -> DenseLinearProbe:
    """Fits a probe on ``inputs`` [N, C, h, w] against ``targets`` [N, H, W, ...]; ``loss_fn(logits upsampled
    to the target size, targets)``, the targets subsampled to at most ``target_factor`` x the patch grid.
    AdamW under a cosine schedule, mini-batches of images."""
    torch.manual_seed(seed)
    device = torch.device(device)
    mean = inputs.mean(dim=(0, 2, 3))
    std = inputs.std(dim=(0, 2, 3)).nan_to_num(1.0).clamp_min(1e-6)
    probe = DenseLinearProbe(inputs.shape[1], out_dim, mean, std).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    targets = _subsample(targets, inputs.shape[2], target_factor)
    size = tuple(targets.shape[1:3])
    steps_per_epoch = -(-inputs.shape[0] // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc=desc, leave=False, disable=not progress):
        order = torch.randperm(inputs.shape[0], generator=generator)
        for start in range(0, inputs.shape[0], batch_size):
            index = order[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(probe(inputs[index].to(device), size), targets[index].to(device)).backward()
            optimizer.step()
            schedule.step()
    return probe.eval()


@torch.no_grad()
def predict_chunks(
    probe: DenseLinearProbe, inputs: torch.Tensor, size: tuple[int, int], batch_size: int = 16
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yields (slice of images, logits [B, out, H, W] at ``size``) chunk by chunk, on the probe's device."""
    device = probe.mean.device
    for start in range(0, inputs.shape[0], batch_size):
        chunk = slice(start, min(start + batch_size, inputs.shape[0]))
        yield chunk, probe(inputs[chunk].to(device), size)
