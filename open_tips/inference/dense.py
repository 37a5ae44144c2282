"""Dense outputs: zero-shot segmentation (MaskCLIP value trick, official notebook protocol), PCA feature
pictures, colour palettes and overlays.

Zero-shot segmentation as in the official TIPS notebook:
- patch features from ``forward_value_trick`` (the last block uses the value path instead of attention),
  L2-normalised, dotted with unit class embeddings (prompt-averaged, see ``open_tips.inference.zeroshot``);
- "whole": one pass; the per-patch cosines are upsampled bilinearly to the output size and arg-maxed;
- "slide": windows of ``window`` pixels every ``stride`` pixels (the last one flush with the border), each
  window's cosines upsampled to the window, soft-maxed over classes (no temperature) and averaged where
  windows overlap; then upsampled to the output size and arg-maxed.
Inputs whose sides are not multiples of the patch size are first resized up to the next multiple (bicubic),
as the notebook does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


def _patch_aligned(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    aligned = (math.ceil(height / patch) * patch, math.ceil(width / patch) * patch)
    if aligned == (height, width):
        return pixels
    return F.interpolate(pixels, size=aligned, mode="bicubic", align_corners=False)


@torch.no_grad()
def patch_cosines(model, pixels: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w]: cosine between each value-trick patch feature and each (unit) class embedding."""
    pixels = _patch_aligned(pixels, model.vision.patch_size)
    dense = model.vision.forward_value_trick(pixels).patch_tokens  # [B, h, w, D]
    return torch.einsum("bhwd,cd->bchw", F.normalize(dense.float(), dim=-1), class_emb.float())


@torch.no_grad()
def segmentation_logits(
    model, pixels: torch.Tensor, class_emb: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """ "whole" mode: [B, C, H, W] cosines upsampled bilinearly to ``size`` (default: the input's size)."""
    cosine = patch_cosines(model, pixels, class_emb)
    return F.interpolate(cosine, size=size or tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets along one side: every ``stride`` pixels, the last window moved back to end at the
    border, one window when the side is shorter than ``window`` (the notebook's grid)."""
    if stride <= 0 or window <= 0:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride + window, length) - window, 0) for i in range(count)]


@torch.no_grad()
def sliding_window_probs(
    model,
    pixels: torch.Tensor,
    class_emb: torch.Tensor,
    window: int = 448,
    stride: int = 336,
    batch_size: int = 8,
) -> torch.Tensor:
    """ "slide" mode: [C, H, W] class probabilities of one image [1, 3, H, W] at its size, averaged over
    windows; ``batch_size`` windows go through the model at once (all windows have one shape)."""
    if pixels.shape[0] != 1:
        raise ValueError(f"sliding windows take one image at a time, got a batch of {pixels.shape[0]}")
    height, width = pixels.shape[-2:]
    boxes = [
        (top, left)
        for top in window_starts(height, window, stride)
        for left in window_starts(width, window, stride)
    ]
    win_h, win_w = min(window, height), min(window, width)
    probs = torch.zeros(class_emb.shape[0], height, width, device=pixels.device)
    counts = torch.zeros(1, height, width, device=pixels.device)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        crops = torch.cat([pixels[:, :, top : top + win_h, left : left + win_w] for top, left in chunk])
        window_probs = segmentation_logits(model, crops, class_emb).softmax(dim=1)  # at the window's size
        for (top, left), prob in zip(chunk, window_probs):
            probs[:, top : top + win_h, left : left + win_w] += prob
            counts[:, top : top + win_h, left : left + win_w] += 1
    return probs / counts


def upsampled_argmax(scores: torch.Tensor, size: tuple[int, int], chunk: int = 16) -> torch.Tensor:
    """argmax over classes of ``scores`` [C, h, w] upsampled bilinearly to ``size``: [H, W] int64. Works
    through the classes ``chunk`` at a time so that many classes on a large photo fit in memory; ties go
    to the lower class index, as with a plain argmax."""
    best_value = best_index = None
    for start in range(0, scores.shape[0], chunk):
        part = F.interpolate(
            scores[None, start : start + chunk].float(), size=size, mode="bilinear", align_corners=False
        )[0]
        value, index = part.max(dim=0)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
    return best_index


@torch.no_grad()
def segment(
    model,
    pixels: torch.Tensor,
    class_emb: torch.Tensor,
    mode: str = "whole",
    size: tuple[int, int] | None = None,
    window: int = 448,
    stride: int = 336,
    batch_size: int = 8,
) -> torch.Tensor:
    """Label map [H, W] (int64 class indices) of one image ``pixels`` [1, 3, h, w] at ``size`` (default: the
    input's size), following the official protocol in ``mode`` "whole" or "slide"."""
    if pixels.shape[0] != 1:
        raise ValueError(f"segment takes one image at a time, got a batch of {pixels.shape[0]}")
    size = size or tuple(pixels.shape[-2:])
    if mode == "whole":
        scores = patch_cosines(model, pixels, class_emb)[0]
    elif mode == "slide":
        scores = sliding_window_probs(model, pixels, class_emb, window, stride, batch_size)
    else:
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    return upsampled_argmax(scores, size)


def palette(num_classes: int) -> np.ndarray:
    """Distinct colours, [C, 3] uint8: the PASCAL VOC colour map (bit interleaving of index + 1, so that
    class 0 is not black)."""
    colours = np.zeros((num_classes, 3), np.uint8)
    for index in range(num_classes):
        value, r, g, b = index + 1, 0, 0, 0
        for shift in range(8):
            r |= ((value >> 0) & 1) << (7 - shift)
            g |= ((value >> 1) & 1) << (7 - shift)
            b |= ((value >> 2) & 1) << (7 - shift)
            value >>= 3
        colours[index] = (r, g, b)
    return colours


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """The label map as a PNG-ready image whose pixel values are the class indices: a palette image
    (viewers show colours, readers get indices) up to 256 classes, 16-bit greyscale beyond."""
    if num_classes > 256:
        return Image.fromarray(labels.astype(np.uint16))
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(palette(num_classes).reshape(-1).tolist())  # turns the "L" image into a "P" one
    return image


def overlay_picture(
    image: Image.Image, labels: np.ndarray, class_names: list[str], alpha: float = 0.55
) -> Image.Image:
    """The image and the coloured label map blended over it, side by side, with a legend of the classes
    present (largest area first) underneath."""
    colours = palette(len(class_names))
    base = image.convert("RGB")
    if base.size != (labels.shape[1], labels.shape[0]):
        base = base.resize((labels.shape[1], labels.shape[0]), Image.BILINEAR)
    blended = Image.blend(base, Image.fromarray(colours[labels]), alpha)
    present, areas = np.unique(labels, return_counts=True)
    entries = sorted(zip(present.tolist(), areas.tolist()), key=lambda entry: -entry[1])
    legend = [(index, f"{class_names[index]} ({100 * area / labels.size:.1f}%)") for index, area in entries]
    row = 16
    draw = ImageDraw.Draw(base)  # only to measure text
    legend_width = max(24 + int(draw.textlength(text)) + 4 for _, text in legend)
    canvas = Image.new(
        "RGB", (max(base.width * 2, legend_width), base.height + row * len(legend) + 8), (255, 255, 255)
    )
    canvas.paste(base, (0, 0))
    canvas.paste(blended, (base.width, 0))
    draw = ImageDraw.Draw(canvas)
    y = base.height + 4
    for index, text in legend:
        draw.rectangle([4, y, 16, y + 12], fill=tuple(int(v) for v in colours[index]), outline=(0, 0, 0))
        draw.text((22, y), text, fill=(0, 0, 0))
        y += row
    return canvas


def pca_rgb(patch_tokens: torch.Tensor) -> np.ndarray:
    """[h, w, D] features -> [h, w, 3] uint8: the first three principal components, each min-max scaled to
    0..255 (components beyond the feature rank are left at 0)."""
    h, w, d = patch_tokens.shape
    flat = patch_tokens.reshape(-1, d).float()
    centred = flat - flat.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # exact; cheap at h*w x D
    components = centred @ v[:3].T
    if components.shape[1] < 3:
        components = F.pad(components, (0, 3 - components.shape[1]))
    low, high = components.amin(dim=0), components.amax(dim=0)
    scaled = (components - low) / (high - low).clamp_min(1e-8)
    return (scaled.reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)


def side_by_side(image: Image.Image, picture: np.ndarray, upsample: str = "nearest") -> Image.Image:
    """The image and ``picture`` (an [h, w, 3] uint8 feature map upsampled to the image's size), side by side."""
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}[upsample]
    base = image.convert("RGB")
    feature = Image.fromarray(picture).resize(base.size, resample)
    canvas = Image.new("RGB", (base.width * 2, base.height))
    canvas.paste(base, (0, 0))
    canvas.paste(feature, (base.width, 0))
    return canvas
