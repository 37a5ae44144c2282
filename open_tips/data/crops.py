"""Multi-crop augmentation: one global crop and M local crops.

TIPS uses only random resized crop and horizontal flip (no colour jitter, blur or solarisation), and feeds
pixels in [0, 1] without mean/std normalisation; the crops here follow that.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


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
        # Crops and resizes run on uint8 tensors (torchvision's vectorised uint8 bilinear+antialias kernel);
        # only the finished small crops become floats. The random draws are v2.RandomResizedCrop's own
        # (make_params) followed by RandomHorizontalFlip's torch.rand(1) test, so the crops equal
        # v2.Compose([RandomResizedCrop, RandomHorizontalFlip]) on the uint8 image exactly, without its
        # per-call dispatch (about 0.5 ms per crop on a slow core; benchmarks/loader.py).
        self.global_crop = v2.RandomResizedCrop(global_size, scale=tuple(global_scale), antialias=True)
        self.local_crop = v2.RandomResizedCrop(local_size, scale=tuple(local_scale), antialias=True)

    @staticmethod
    def _to_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                image = image.convert("RGB")
            return TF.pil_to_tensor(image)  # uint8 [3, H, W], one copy
        image = image.as_subclass(torch.Tensor)
        return image.expand(3, -1, -1) if image.ndim == 3 and image.shape[0] == 1 else image

    @staticmethod
    def _crop(image: torch.Tensor, sampler: v2.RandomResizedCrop) -> torch.Tensor:
        box = sampler.make_params([image])
        crop = image[..., box["top"] : box["top"] + box["height"], box["left"] : box["left"] + box["width"]]
        crop = TF.resize_image(crop, list(sampler.size), antialias=True)
        if torch.rand(1) < 0.5:  # RandomHorizontalFlip(p=0.5): flips unless rand >= p
            crop = crop.flip(-1)
        crop = TF.to_dtype(crop, torch.float32, scale=True)  # uint8 / 255: in [0, 1] already
        return crop if image.dtype == torch.uint8 else crop.clamp(0.0, 1.0)  # a float resize may overshoot

    def __call__(self, image: Image.Image | torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        image = self._to_tensor(image)
        global_crop = self._crop(image, self.global_crop)
        return global_crop, [self._crop(image, self.local_crop) for _ in range(self.num_local)]

    def __repr__(self) -> str:
        return (
            f"MultiCropTransform(global_size={self.global_size}, local_size={self.local_size}, "
            f"num_local={self.num_local})"
        )
