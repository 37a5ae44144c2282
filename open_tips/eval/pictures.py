"""Report pictures for a run directory: PCA maps of the patch features, and zero-shot segmentation next to
the ground truth.

- ``pca.png``: one row per image: the image, then its patch features projected on the first three
  principal components (fitted jointly on the shown images, so colours mean the same across rows).
- ``zeroshot_seg.png``: one row per image: the image, the ground truth over it, the zero-shot
  segmentation over it; a legend of the classes underneath.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from open_tips.eval.features import FeatureSet, has_text
from open_tips.eval.metrics import IGNORE
from open_tips.eval.zeroshot_seg import zeroshot_seg_labels
from open_tips.inference.dense import palette
from open_tips.inference.dense_heads import label_font, legend_strip
from open_tips.inference.zeroshot import TIPS_TEMPLATES, class_embeddings

IGNORE_COLOUR = (255, 255, 255)
TILE = 256  # px per panel: large enough to read a 4x4..32x32 patch map by eye
HEADER = 32  # px of the column-title strip


def joint_pca_rgb(patch_tokens: torch.Tensor) -> np.ndarray:
    """[N, h, w, D] -> [N, h, w, 3] uint8: the first three principal components of all N x h x w patches,
    each min-max scaled to 0..255 over all images."""
    n, h, w, d = patch_tokens.shape
    flat = patch_tokens.reshape(-1, d).float()
    centred = flat - flat.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    components = centred @ v[:3].T
    if components.shape[1] < 3:
        components = torch.nn.functional.pad(components, (0, 3 - components.shape[1]))
    low, high = components.amin(dim=0), components.amax(dim=0)
    scaled = (components - low) / (high - low).clamp_min(1e-8)
    return (scaled.reshape(n, h, w, 3).numpy() * 255).round().astype(np.uint8)


def colour_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[H, W] class indices -> [H, W, 3] uint8 palette colours (ignore = white)."""
    colours = palette(max(num_classes, 1))
    out = colours[np.clip(labels, 0, num_classes - 1)]
    out[labels == IGNORE] = IGNORE_COLOUR
    return out


def _grid(
    rows: list[list[Image.Image]],
    tile: int,
    titles: Sequence[str] = (),
    footer: Image.Image | None = None,
) -> Image.Image:
    """Panels ``tile`` px square, one row per image, the column titles on a strip above them."""
    columns = max(len(r) for r in rows)
    header = HEADER if titles else 0
    height = header + tile * len(rows) + (footer.height if footer is not None else 0)
    canvas = Image.new(
        "RGB", (max(tile * columns, footer.width if footer is not None else 0), height), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    font = label_font(16)
    for c, title in enumerate(titles):
        width = draw.textlength(title, font=font)
        draw.text((c * tile + (tile - width) / 2, 8), title, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            position = (c * tile, header + r * tile)
            canvas.paste(picture.convert("RGB").resize((tile, tile), Image.NEAREST), position)
    if footer is not None:
        canvas.paste(footer, (0, header + tile * len(rows)))
    return canvas


def _legend(class_names: list[str], present: Sequence[int], width: int) -> Image.Image:
    colours = palette(len(class_names))
    entries = [(tuple(int(v) for v in colours[index]), class_names[index]) for index in present]
    return legend_strip(entries, width, title="classes")


def pca_picture(images: Sequence[Image.Image], features: FeatureSet, tile: int = TILE) -> Image.Image:
    maps = joint_pca_rgb(features.patch_tokens[: len(images)])
    rows = [[image, Image.fromarray(m)] for image, m in zip(images, maps)]
    return _grid(rows, tile, titles=("image", "patch features: PCA 1-3 as RGB"))


def segmentation_picture(
    images: Sequence[Image.Image],
    truth: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    class_names: list[str],
    tile: int = TILE,
    alpha: float = 0.6,
) -> Image.Image:
    """Rows of image | ground truth over the image | prediction over the image, and a legend."""
    rows, present = [], set()
    for image, gt, pred in zip(images, truth, predictions):
        base = image.convert("RGB").resize((gt.shape[1], gt.shape[0]), Image.BILINEAR)
        row = [image]
        for labels in (gt, pred):
            labels = np.asarray(labels)
            present.update(int(v) for v in np.unique(labels) if v != IGNORE)
            row.append(Image.blend(base, Image.fromarray(colour_labels(labels, len(class_names))), alpha))
        rows.append(row)
    legend = _legend(class_names, sorted(present), tile * 3)
    return _grid(rows, tile, titles=("image", "ground truth", "zero-shot prediction"), footer=legend)


@torch.no_grad()
def write_report_pictures(
    model,
    images: Sequence[Image.Image],
    features: FeatureSet,
    output_dir: str | os.PathLike,
    masks: torch.Tensor | None = None,
    class_names: list[str] | None = None,
    templates: list[str] | None = None,
    background: str = "name",
    threshold: float = 0.0,
) -> list[Path]:
    """Writes ``pca.png`` and, when the model has text, ``features.value_tokens`` and ``masks`` / ``class_names``
    are given, ``zeroshot_seg.png`` (masks [N, H, W] indexing ``class_names``, class 0 = background). Shows
    the first ``len(images)`` items of ``features``. Returns the written paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = output_dir / "pca.png"
    pca_picture(images, features).save(path)
    written.append(path)
    if masks is not None and class_names and features.value_tokens is not None and has_text(model):
        prompted = class_names if background == "name" else class_names[1:]
        classes = class_embeddings(model, prompted, templates or TIPS_TEMPLATES).float().cpu()
        count = len(images)
        labels = zeroshot_seg_labels(
            features.value_tokens[:count],
            classes,
            tuple(masks.shape[1:]),
            threshold if background == "threshold" else None,
        )
        path = output_dir / "zeroshot_seg.png"
        segmentation_picture(
            images, [m.numpy() for m in masks[:count]], [p.numpy() for p in labels], class_names
        ).save(path)
        written.append(path)
    return written
