"""Semantic segmentation linear probe on frozen patch features (mIoU with an ignore label), and dataset
readers: image + mask folders (VOC / ADE20k / CamVid style) and COCO instance JSON rasterised to masks."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from open_tips.eval.dense_probe import dense_inputs, fit_dense_probe, predict
from open_tips.eval.metrics import confusion_matrix, mean_iou, pixel_accuracy

IGNORE = 255


def segmentation_probe(train_features: dict, train_masks: torch.Tensor, test_features: dict,
                       test_masks: torch.Tensor, num_classes: int, with_cls: bool = False,
                       epochs: int = 40) -> dict[str, float]:
    """masks [N, H, W] long with class indices, IGNORE for unlabelled pixels."""
    train_x, test_x = dense_inputs(train_features, with_cls), dense_inputs(test_features, with_cls)

    def loss(logits, target):
        return F.cross_entropy(logits, target.long(), ignore_index=IGNORE)

    probe = fit_dense_probe(train_x, train_masks, num_classes, loss, epochs=epochs, desc="segmentation probe")
    prediction = predict(probe, test_x, tuple(test_masks.shape[1:])).argmax(dim=1)
    confusion = confusion_matrix(prediction, test_masks, num_classes, IGNORE)
    return {"miou": mean_iou(confusion), "pixel_accuracy": pixel_accuracy(confusion)}


def read_mask_folder(images_dir: str | Path, masks_dir: str | Path) -> list[tuple[Path, Path]]:
    """Pairs image files with same-stem PNG masks (class index per pixel, 255 = ignore)."""
    masks = {p.stem: p for p in Path(masks_dir).glob("*.png")}
    pairs = [(p, masks[p.stem]) for p in sorted(Path(images_dir).iterdir()) if p.stem in masks]
    if not pairs:
        raise ValueError(f"no image in {images_dir} has a mask of the same name in {masks_dir}")
    return pairs


def rasterise_coco(annotation_file: str | Path, image_dir: str | Path, categories: list[int] | None = None
                   ) -> tuple[list[tuple[Path, np.ndarray]], list[str]]:
    """COCO instances JSON -> [(image path, semantic mask uint8)], class names. Class 0 = background; the
    categories map to 1..K in id order; crowd regions are set to the ignore label."""
    data = json.loads(Path(annotation_file).read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if categories is not None:
        cats = [c for c in cats if c["id"] in categories]
    index = {c["id"]: i + 1 for i, c in enumerate(cats)}
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out = []
    for image in data["images"]:
        mask = Image.new("L", (image["width"], image["height"]), 0)
        draw = ImageDraw.Draw(mask)
        # larger objects first so that small ones drawn later stay visible
        for ann in sorted(by_image.get(image["id"], []), key=lambda a: -a.get("area", 0)):
            value = IGNORE if ann.get("iscrowd") else index.get(ann["category_id"])
            if value is None:
                continue
            segmentation = ann["segmentation"]
            if isinstance(segmentation, list):
                for polygon in segmentation:
                    if len(polygon) >= 6:
                        draw.polygon([tuple(polygon[i:i + 2]) for i in range(0, len(polygon), 2)], fill=value)
            elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
                rle = _decode_uncompressed_rle(segmentation)
                array = np.array(mask)
                array[rle] = value
                mask = Image.fromarray(array)
                draw = ImageDraw.Draw(mask)
            else:  # compressed RLE (string counts): mark its box as ignore
                x, y, w, h = ann["bbox"]
                draw.rectangle([x, y, x + w, y + h], fill=IGNORE)
        out.append((Path(image_dir) / image["file_name"], np.array(mask)))
    return out, ["background"] + [c["name"] for c in cats]


def _decode_uncompressed_rle(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in rle["counts"]:
        if value:
            flat[position:position + count] = True
        position += count
        value = not value
    return flat.reshape(width, height).T  # column-major


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.fromarray(mask).resize((size, size), Image.NEAREST))).long()
