"""Multi-crop augmentation: one global crop and M local crops, random resized crop + flip only (TIPS)."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2


class MultiCropTransform:
    def __init__(self, global_size: int = 224, local_size: int = 98, num_local: int = 6,
                 global_scale: tuple[float, float] = (0.32, 1.0),
                 local_scale: tuple[float, float] = (0.05, 0.32)) -> None:
        self.num_local = num_local
        to_tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]  # [0, 1], no mean/std
        self.global_transform = v2.Compose([
            v2.RandomResizedCrop(global_size, scale=tuple(global_scale), antialias=True),
            v2.RandomHorizontalFlip(), *to_tensor])
        self.local_transform = v2.Compose([
            v2.RandomResizedCrop(local_size, scale=tuple(local_scale), antialias=True),
            v2.RandomHorizontalFlip(), *to_tensor])

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.global_transform(image), [self.local_transform(image) for _ in range(self.num_local)]
