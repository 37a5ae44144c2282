"""Zero-shot segmentation, official notebook protocol in "whole" mode on cached features: value-trick patch
tokens (MaskCLIP: the last block uses v -> proj instead of attention, ``model.vision.forward_value_trick``),
L2-normalised, cosine with class embeddings averaged over the 9 TIPS prompt templates, bilinear upsampling
of the cosines to the mask size, argmax; mIoU against the ground truth.

Background, two ways:
- ``background="name"``: "background" (or whatever the first class name is) is one more prompted class and
  competes in the argmax like any other;
- ``background="threshold"``: only the object classes are prompted; a pixel whose best cosine is below
  ``threshold`` is labelled background (class 0). The cosine scale differs between models, so a
  threshold must be chosen per model; "name" needs no tuning and is the default;
- ``background="ignore"``: only the object classes are prompted and ground-truth background pixels are
  left out (the "VOC20" / "Context59" protocols): mIoU over the object classes only. Useful when the model
  never learnt the word "background" (the built-in captions never mention it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from open_tips.eval.metrics import IGNORE, confusion_matrix, segmentation_metrics
from open_tips.inference.dense import patch_cosines, segment, sliding_window_probs
from open_tips.inference.images import load_image_short_side, short_side_size
from open_tips.inference.zeroshot import TIPS_TEMPLATES, class_embeddings


def zeroshot_seg_labels(
    value_tokens: torch.Tensor, classes: torch.Tensor, size: tuple[int, int], threshold: float | None = None
) -> torch.Tensor:
    """[B, H, W] labels from value tokens [B, h, w, D] and unit class embeddings [C, D]. With ``threshold``
    the classes are objects only and the result is shifted by one: 0 = background (best cosine below the
    threshold), 1..C = the classes."""
    cosine = torch.einsum("bhwd,cd->bchw", F.normalize(value_tokens.float(), dim=-1), classes.float())
    cosine = F.interpolate(cosine, size=size, mode="bilinear", align_corners=False)
    best, labels = cosine.max(dim=1)
    if threshold is None:
        return labels
    return torch.where(best < threshold, torch.zeros_like(labels), labels + 1)


def zeroshot_segmentation(
    model,
    value_tokens: torch.Tensor,
    masks: torch.Tensor,
    class_names: list[str],
    templates: list[str] | None = None,
    *,
    background: str = "name",
    threshold: float = 0.0,
    classes: torch.Tensor | None = None,
    chunk: int = 32,
) -> dict:
    """mIoU / pixel accuracy of zero-shot labels. ``masks`` [N, H, W] index ``class_names`` (IGNORE = 255
    left out); with a background class it must be class 0, named e.g. "background". ``background``: see the
    module docstring ("threshold" and "ignore" prompt ``class_names[1:]`` only). ``classes``: precomputed unit class
    embeddings for the prompted classes."""
    if background not in ("name", "threshold", "ignore"):
        raise ValueError(f"background must be 'name', 'threshold' or 'ignore', got {background!r}")
    prompted = class_names if background == "name" else class_names[1:]
    if classes is None:
        classes = class_embeddings(model, prompted, templates or TIPS_TEMPLATES)
    classes = classes.float().cpu()
    num_classes = len(class_names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for start in range(0, masks.shape[0], chunk):
        labels = zeroshot_seg_labels(
            value_tokens[start : start + chunk],
            classes,
            tuple(masks.shape[1:]),
            threshold if background == "threshold" else None,
        )
        target = masks[start : start + chunk]
        if background == "ignore":
            labels = labels + 1  # object classes are 1..K in the masks
            target = torch.where(target == 0, torch.full_like(target, IGNORE), target)
        confusion += confusion_matrix(labels, target, num_classes, IGNORE)
    result: dict = segmentation_metrics(confusion)
    result["settings"] = {
        "background": background,
        "templates": len(templates or TIPS_TEMPLATES),
        **({"threshold": threshold} if background == "threshold" else {}),
    }
    return result


def _short_side_pixels(image, size: int) -> torch.Tensor:
    """The notebook's ShortSideResize on a PIL image or a path: short side at ``size``, PIL bicubic."""
    if not isinstance(image, Image.Image):
        return load_image_short_side(Path(image), size)[0]
    image = image.convert("RGB")
    height, width = short_side_size(image.width, image.height, size)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.BICUBIC)
    return TF.to_dtype(TF.to_image(image), torch.float32, scale=True)


@torch.no_grad()
def zeroshot_segmentation_images(
    model,
    images,
    masks,
    class_names: list[str],
    classes: torch.Tensor,
    *,
    mode: str = "whole",
    size: int = 448,
    window: int | None = None,
    stride: int | None = None,
    background: str = "name",
    threshold: float = 0.0,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Zero-shot segmentation of images (PIL or paths) through ``open_tips.inference.dense`` — the code
    behind ``open-tips zeroshot-seg`` — in the official notebook protocol: short side resized to ``size``
    (PIL bicubic), ``mode`` "whole" or "slide" (windows of ``window`` px every ``stride`` px, default
    ``size`` and 3/4 of it), labels at each mask's own resolution. ``masks``: a sequence of int [H, W]
    label maps indexing ``class_names`` (255 = ignore). ``classes``: unit embeddings of the prompted
    classes (all names for ``background="name"``, the object classes ``class_names[1:]`` otherwise);
    ``background`` as for ``zeroshot_segmentation``."""
    if background not in ("name", "threshold", "ignore"):
        raise ValueError(f"background must be 'name', 'threshold' or 'ignore', got {background!r}")
    window = window or size
    stride = stride or max(1, window * 3 // 4)
    device = torch.device(device)
    classes = classes.float().to(device)
    num_classes = len(class_names)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for index in tqdm(range(len(images)), desc="zero-shot segmentation", leave=False, disable=not progress):
        target = torch.as_tensor(masks[index]).long()
        pixels = _short_side_pixels(images[index], size)[None].to(device)
        out_size = tuple(target.shape)
        if background == "threshold":
            if mode == "whole":
                scores = patch_cosines(model, pixels, classes)[0]
            else:
                scores = sliding_window_probs(model, pixels, classes, window, stride, batch_size)
            scores = F.interpolate(scores[None].float(), size=out_size, mode="bilinear", align_corners=False)[
                0
            ]
            best, labels = scores.max(dim=0)
            labels = torch.where(best < threshold, torch.zeros_like(labels), labels + 1)
        else:
            labels = segment(
                model,
                pixels,
                classes,
                mode,
                size=out_size,
                window=window,
                stride=stride,
                batch_size=batch_size,
            )
            if background == "ignore":
                labels = labels + 1
        labels = labels.cpu()
        if background == "ignore":
            target = torch.where(target == 0, torch.full_like(target, IGNORE), target)
        confusion += confusion_matrix(labels, target, num_classes, IGNORE)
    result: dict = segmentation_metrics(confusion)
    result["settings"] = {
        "background": background,
        "mode": mode,
        **({"threshold": threshold} if background == "threshold" else {}),
    }
    return result
