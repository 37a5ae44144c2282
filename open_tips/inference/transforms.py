"""A model with its preprocessing: ``create_model_and_transforms`` (as open_clip names it).

TIPS checkpoints expect RGB pixels in [0, 1] with no mean/std normalisation, sides multiples of the patch
size, at the resolution the model was trained at (448 px for the released TIPS v1 HR and TIPSv2 models,
224 for TIPS v1 g/14 low-res). The transform below is the one the ``embed`` / ``zeroshot`` / ``pca`` commands
use: a square bilinear, antialiased resize of the float image (or the short side, aspect kept).
transformers' ``Tipsv2ImageProcessor`` resizes the uint8 image instead, which differs by rounding
(at most 1/255 per pixel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from open_tips.formats.load import load_pretrained
from open_tips.inference.images import target_size, to_pixels
from open_tips.models.configs import get_config
from open_tips.models.tips import create_model

RESAMPLE = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
# Released models whose weights are on the Hugging Face hub under these ids (TIPSv2).
HUB_IDS = {
    "tipsv2-b14": "google/tipsv2-b14",
    "tipsv2-l14": "google/tipsv2-l14",
    "tipsv2-so400m14": "google/tipsv2-so400m14",
    "tipsv2-g14": "google/tipsv2-g14",
}


@dataclass
class ImageTransform:
    """PIL image -> float tensor [3, H, W] in [0, 1]: no mean/std, sides multiples of ``patch_size``."""

    image_size: int
    patch_size: int = 14
    resample: str = "bilinear"
    keep_aspect: bool = False

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) of the tensor made from a ``width`` x ``height`` image."""
        return target_size(width, height, self.image_size, self.keep_aspect, self.patch_size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        height, width = self.output_size(image.width, image.height)
        if self.resample == "bilinear":
            return to_pixels(image, height, width)
        pixels = TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True)
        return TF.resize(
            pixels, [height, width], interpolation=RESAMPLE[self.resample], antialias=True
        ).clamp(0, 1)


def transform_for(
    model, image_size: int | None = None, resample: str = "bilinear", keep_aspect: bool = False
) -> ImageTransform:
    """The transform that feeds ``model`` at its training resolution (or ``image_size``)."""
    return ImageTransform(
        image_size=image_size or model.cfg.image_size,
        patch_size=model.vision.patch_size,
        resample=resample,
        keep_aspect=keep_aspect,
    )


def create_model_and_transforms(
    name_or_path: str | os.PathLike,
    pretrained: bool = True,
    image_size: int | None = None,
    resample: str = "bilinear",
    keep_aspect: bool = False,
    device: str | torch.device | None = None,
    **load_kwargs,
):
    """(model in eval mode, PIL -> tensor transform, tokenizer or None).

    ``name_or_path``: anything ``load_pretrained`` reads (npz, HF directory, hub id ``org/name``, run
    directory), or a registry name: with ``pretrained`` the released TIPSv2 models resolve to their hub ids
    (``tipsv2-b14`` -> ``google/tipsv2-b14``, through the local cache), otherwise a randomly initialised
    model. ``load_kwargs`` go to ``load_pretrained`` (``config``, ``tokenizer``, ``revision``,
    ``vision_only`` ...). The tokenizer maps ``list[str]`` to ``(ids [B, L], padding_mask [B, L])``.
    """
    name = str(name_or_path)
    try:
        registered = None if os.path.exists(name) else get_config(name)
    except KeyError:
        registered = None
    if registered is not None:
        if pretrained and registered.name in HUB_IDS:
            model = load_pretrained(HUB_IDS[registered.name], device=device, **load_kwargs)
        elif pretrained:
            raise ValueError(
                f"{name}: no published weights to load by name; pass the checkpoint path, or pretrained=False "
                "for random weights"
            )
        else:
            model = create_model(registered).eval()
            if device is not None:
                model.to(device)
    else:
        model = load_pretrained(name_or_path, device=device, **load_kwargs)
    return model, transform_for(model, image_size, resample, keep_aspect), model.tokenizer
