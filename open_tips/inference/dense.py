"""Dense outputs: zero-shot segmentation (MaskCLIP value trick) and PCA feature pictures."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw


@torch.no_grad()
def segmentation_logits(model, pixels: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] cosine logits at the input resolution: value-trick patch features against class
    embeddings, bilinearly upsampled."""
    dense = model.vision.forward_value_trick(pixels).patch_tokens  # [B, h, w, D]
    cosine = torch.einsum("bhwd,cd->bchw", F.normalize(dense, dim=-1), class_emb.to(dense.dtype))
    return F.interpolate(cosine, size=pixels.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def sliding_window_logits(model, pixels: torch.Tensor, class_emb: torch.Tensor, window: int = 448,
                          stride: int = 336) -> torch.Tensor:
    """Logits averaged over overlapping ``window`` crops taken every ``stride`` pixels (the official
    protocol: short side 448, windows 448, stride 336)."""
    batch, _, height, width = pixels.shape
    window_h, window_w = min(window, height), min(window, width)
    logits = pixels.new_zeros(batch, class_emb.shape[0], height, width)
    counts = pixels.new_zeros(1, 1, height, width)

    def starts(size: int, win: int) -> list[int]:
        positions = list(range(0, max(size - win, 0) + 1, stride))
        if positions[-1] + win < size:
            positions.append(size - win)
        return positions

    for top in starts(height, window_h):
        for left in starts(width, window_w):
            crop = pixels[:, :, top:top + window_h, left:left + window_w]
            logits[:, :, top:top + window_h, left:left + window_w] += segmentation_logits(model, crop, class_emb)
            counts[:, :, top:top + window_h, left:left + window_w] += 1
    return logits / counts


def palette(num_classes: int) -> np.ndarray:
    """Distinct colours (PASCAL-style bit interleaving), [C, 3] uint8."""
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


def overlay_picture(image: Image.Image, labels: np.ndarray, class_names: list[str], alpha: float = 0.55) -> Image.Image:
    """The image, the coloured label map blended over it, and a legend of the classes present."""
    colours = palette(len(class_names))
    base = image.convert("RGB").resize((labels.shape[1], labels.shape[0]), Image.BILINEAR)
    coloured = Image.fromarray(colours[labels])
    blended = Image.blend(base, coloured, alpha)
    present = [int(c) for c in np.unique(labels)]
    legend_height = 16 * len(present) + 8
    canvas = Image.new("RGB", (base.width * 2, max(base.height, legend_height) + legend_height), (255, 255, 255))
    canvas.paste(base, (0, 0))
    canvas.paste(blended, (base.width, 0))
    draw = ImageDraw.Draw(canvas)
    y = max(base.height, legend_height) + 4
    for index in present:
        draw.rectangle([4, y, 16, y + 12], fill=tuple(int(v) for v in colours[index]))
        draw.text((22, y), class_names[index], fill=(0, 0, 0))
        y += 16
    return canvas


def pca_rgb(patch_tokens: torch.Tensor) -> np.ndarray:
    """[h, w, D] features -> [h, w, 3] uint8: first three principal components, min-max scaled each."""
    h, w, d = patch_tokens.shape
    flat = patch_tokens.reshape(-1, d).float()
    centred = flat - flat.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    components = centred @ v[:3].T
    if components.shape[1] < 3:
        components = F.pad(components, (0, 3 - components.shape[1]))
    low, high = components.amin(dim=0), components.amax(dim=0)
    scaled = (components - low) / (high - low).clamp_min(1e-8)
    return (scaled.reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)


def side_by_side(image: Image.Image, picture: np.ndarray) -> Image.Image:
    base = image.convert("RGB")
    feature = Image.fromarray(picture).resize(base.size, Image.NEAREST)
    canvas = Image.new("RGB", (base.width * 2, base.height))
    canvas.paste(base, (0, 0))
    canvas.paste(feature, (base.width, 0))
    return canvas
