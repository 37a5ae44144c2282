"""Multi-crop augmentation: one global crop and M local crops.

TIPS uses only random resized crop and horizontal flip (no colour jitter, blur or solarisation), and feeds
pixels in [0, 1] without mean/std normalisation; the crops here follow that.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2


class MultiCropTransform:
    """``transform(image) -> (global_crop float[3, G, G], [local_crop float[3, S, S]] * num_local)``, values in
    [0, 1]. ``image``: a PIL image or a uint8/float tensor [3, H, W]. Randomness comes from torch's global
    generator (the batch builder seeds it per sample)."""

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 98,
        num_local: int = 6,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
    ) -> None:
        if global_size < 1 or local_size < 1 or num_local < 0:
            raise ValueError(f"bad crop sizes: global {global_size}, local {local_size} x {num_local}")
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")
        self.global_size, self.local_size, self.num_local = global_size, local_size, num_local
        to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]  # [0, 1], no mean/std
        self.global_transform = v2.Compose(
            [
                v2.RandomResizedCrop(global_size, scale=tuple(global_scale), antialias=True),
                v2.RandomHorizontalFlip(),
                *to_float,
            ]
        )
        self.local_transform = v2.Compose(
            [
                v2.RandomResizedCrop(local_size, scale=tuple(local_scale), antialias=True),
                v2.RandomHorizontalFlip(),
                *to_float,
            ]
        )

    def __call__(self, image: Image.Image | torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if isinstance(image, Image.Image) and image.mode != "RGB":
            image = image.convert("RGB")
        global_crop = self.global_transform(image).clamp_(0.0, 1.0)  # bilinear+antialias may overshoot floats
        return global_crop, [self.local_transform(image).clamp_(0.0, 1.0) for _ in range(self.num_local)]

    def __repr__(self) -> str:
        return (
            f"MultiCropTransform(global_size={self.global_size}, local_size={self.local_size}, "
            f"num_local={self.num_local})"
        )
