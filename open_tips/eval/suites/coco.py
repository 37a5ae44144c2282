"""A COCO-style root: ``annotations/{instances,captions}_<split>.json`` and ``<split>/`` image folders, one
``train*`` and one ``val*`` (or ``test*``) split (e.g. COCO 2017, or the 239-image COCO-mini). Instance
masks (polygons and RLE, decoded with pycocotools) rasterised to semantic masks (0 = background, the
categories 1..K in id order, crowd regions ignored); retrieval with the captions of the val images;
classification of each image's largest category (images without objects left out)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from open_tips.eval.dataset import EvalData, Split
from open_tips.eval.features import dataset_fingerprint
from open_tips.eval.metrics import IGNORE
from open_tips.eval.registry import Suite, register_suite
from open_tips.eval.retrieval import read_coco_captions
from open_tips.eval.segmentation import rasterise_coco


def is_coco_root(path: Path) -> bool:
    annotations = Path(path) / "annotations"
    return annotations.is_dir() and (
        any(annotations.glob("instances_*.json")) or any(annotations.glob("captions_*.json"))
    )


def split_names(root: Path) -> tuple[str, str]:
    splits = sorted({p.stem.split("_", 1)[1] for p in (root / "annotations").glob("*_*.json")})
    train = next((s for s in splits if s.startswith("train")), None)
    test = next((s for s in splits if s.startswith("val")), None) or next(
        (s for s in splits if s.startswith("test")), None
    )
    if train is None or test is None:
        raise ValueError(f"{root}: need annotations for a train and a val split, found {splits}")
    return train, test


def main_label(mask: np.ndarray, num_classes: int) -> int:
    """The object class with most pixels (1..K), or 0 when the image has no object pixel."""
    counts = np.bincount(mask[(mask != IGNORE) & (mask > 0)].ravel(), minlength=num_classes)
    return int(counts.argmax()) if counts.sum() > 0 else 0


def load(root: Path, options) -> EvalData:
    train_name, test_name = split_names(root)
    annotations = root / "annotations"
    names: list[str] = []
    splits = {}
    for ours, split in (("train", train_name), ("test", test_name)):
        instances = annotations / f"instances_{split}.json"
        captions_file = annotations / f"captions_{split}.json"
        captions = {}
        if captions_file.is_file():
            captions = {name: caps for name, caps in read_coco_captions(captions_file)}
        if instances.is_file():
            pairs, names = rasterise_coco(instances, root / split)
            pairs = [(p, m) for p, m in pairs if p.is_file()][: options.max_images]
        else:
            pairs = [(root / split / n, None) for n in captions if (root / split / n).is_file()]
            pairs = pairs[: options.max_images]
        if not pairs:
            raise ValueError(f"no images of {split} found under {root / split}")
        paths = [p for p, _ in pairs]
        masks = [m for _, m in pairs] if instances.is_file() else None
        has_captions = bool(captions) and all(p.name in captions for p in paths)
        splits[ours] = Split(
            images=paths,
            key=dataset_fingerprint("coco", split, files=paths),
            labels=[main_label(m, len(names)) - 1 for m in masks] if masks is not None else None,
            captions=[captions[p.name] for p in paths] if has_captions else None,
            masks=masks,
        )
    return EvalData(
        suite="coco",
        train=splits["train"],
        test=splits["test"],
        class_names=names[1:] or None,
        seg_names=names or None,
        background=True,
        info={
            "layout": "coco",
            "train_split": train_name,
            "test_split": test_name,
            "masks": "instances rasterised with pycocotools, 0 = background, categories 1..K in id order, "
            "larger instances drawn first, crowd = 255 (ignore)",
            "labels": "largest category per image (images without objects left out)",
        },
    )


register_suite(
    Suite(
        "coco",
        load,
        ("knn", "linear", "zeroshot", "retrieval", "seg", "zeroshot-seg"),
        summary="COCO-style root: retrieval, segmentation probe, zero-shot segmentation, classification",
        layout="annotations/{instances,captions}_<split>.json + <split>/ image folders (train* and val*)",
        source="https://cocodataset.org (2017 train/val images and annotations)",
        detect=is_coco_root,
        priority=10,
    )
)
