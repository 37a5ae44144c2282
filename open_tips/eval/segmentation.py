"""Semantic segmentation linear probe on frozen patch features (mIoU with ignore label 255), and dataset
readers: image + mask folders (VOC / ADE20k / CamVid / plain), COCO instance JSON rasterised to semantic
masks with pycocotools (polygons, uncompressed and compressed RLE, as COCO's own ``annToMask``).

Simplification against the papers' protocol: images are resized to a square and masks to the same square
(nearest), and mIoU is computed at that size rather than at each image's original resolution.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from open_tips.eval.dense_probe import dense_inputs, fit_dense_probe, predict_chunks
from open_tips.eval.features import FeatureSet
from open_tips.eval.metrics import IGNORE, confusion_matrix, segmentation_metrics

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv monitor",
]
# SegNet's 11-class CamVid (label 11 = void, ignored)
CAMVID_CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]


def segmentation_probe(
    train: FeatureSet,
    train_masks: torch.Tensor,
    test: FeatureSet,
    test_masks: torch.Tensor,
    num_classes: int,
    *,
    with_cls: bool = False,
    epochs: int = 30,
    lr: float = 5e-2,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, float]:
    """mIoU / pixel accuracy of a linear head on patch features (``with_cls``: + CLS1 per patch). Masks are
    [N, H, W] int class indices with ``IGNORE`` for unlabelled pixels; logits are upsampled bilinearly to
    the mask size."""
    train_x, test_x = dense_inputs(train, with_cls), dense_inputs(test, with_cls)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target.long(), ignore_index=IGNORE)

    probe = fit_dense_probe(
        train_x,
        train_masks,
        num_classes,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        device=device,
        desc="segmentation probe",
        progress=progress,
    )
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for chunk, logits in predict_chunks(probe, test_x, tuple(test_masks.shape[1:])):
        confusion += confusion_matrix(logits.argmax(dim=1), test_masks[chunk].to(logits.device), num_classes)
    return segmentation_metrics(confusion)


# ----------------------------------------------------------------------------------------------- readers


@dataclass
class SegmentationSplit:
    """Image paths, their mask paths (or in-memory masks) and how to read the mask values."""

    images: list[Path]
    masks: list[Path | np.ndarray]
    reduce_zero_label: bool = False  # ADE20k: 0 = "other" -> ignore, k -> k - 1
    void_labels: tuple[int, ...] = ()  # labels read as IGNORE (CamVid: 11)
    extra: dict = field(default_factory=dict)

    def load_mask(self, index: int) -> np.ndarray:
        item = self.masks[index]
        mask = item if isinstance(item, np.ndarray) else read_mask(item)
        return convert_mask(mask, self.reduce_zero_label, self.void_labels)


def read_mask(path: str | Path) -> np.ndarray:
    """Class indices from a mask PNG: palette ("P") and greyscale images as stored; an RGB mask is read as
    its first channel (some exports repeat the index in all three)."""
    image = Image.open(path)
    if image.mode in ("P", "L", "I", "I;16"):
        return np.asarray(image).astype(np.int64)
    return np.asarray(image.convert("RGB"))[..., 0].astype(np.int64)


def convert_mask(
    mask: np.ndarray, reduce_zero_label: bool = False, void_labels: tuple[int, ...] = ()
) -> np.ndarray:
    mask = mask.astype(np.int64)
    if reduce_zero_label:
        mask = np.where(mask == 0, IGNORE, mask - 1)
        mask[mask == IGNORE - 1] = IGNORE  # 255 stays ignore
    for label in void_labels:
        mask[mask == label] = IGNORE
    return mask


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map to ``size`` (side or (H, W)), as int64."""
    height, width = (size, size) if isinstance(size, int) else size
    if mask.shape == (height, width):
        return torch.from_numpy(mask.astype(np.int64))
    image = Image.fromarray(mask.astype(np.int32))  # mode "I"
    return torch.from_numpy(np.asarray(image.resize((width, height), Image.NEAREST)).astype(np.int64))


def read_mask_folder(
    images_dir: str | Path, masks_dir: str | Path, names: list[str] | None = None, mask_suffix: str = ""
) -> tuple[list[Path], list[Path]]:
    """Image files paired with ``<stem><mask_suffix>.png`` masks (class index per pixel, 255 = ignore); only
    the stems in ``names`` when given (VOC's ImageSets lists)."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    masks = {p.name[: len(p.name) - len(mask_suffix) - 4]: p for p in masks_dir.glob(f"*{mask_suffix}.png")}
    wanted = set(names) if names is not None else None
    images = [
        p
        for p in sorted(images_dir.iterdir())
        if p.is_file() and p.stem in masks and (wanted is None or p.stem in wanted)
    ]
    if not images:
        raise ValueError(f"no image in {images_dir} has a mask of the same name in {masks_dir}")
    return images, [masks[p.stem] for p in images]


def read_class_names(root: Path) -> list[str] | None:
    """``classes.txt`` (one name per line) or ``objectInfo150.csv`` (ADE20k) in ``root``, if present."""
    if (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    info = root / "objectInfo150.csv"
    if info.is_file():
        lines = info.read_text().splitlines()[1:]
        return [line.split(",")[-1].split(";")[0].strip().strip('"') for line in lines if line.strip()]
    return None


def find_segmentation_layout(
    root: str | Path,
) -> tuple[str, dict[str, SegmentationSplit], list[str] | None] | None:
    """Recognises a segmentation dataset folder and returns (layout name, {"train", "test"} splits, class
    names or None). Layouts:
    - VOC: ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/{train,val}.txt``;
    - ADE20k: ``images/{training,validation}/``, ``annotations/{training,validation}/`` (zero label reduced);
    - CamVid: ``{train,val or test}/`` + ``{train,val or test}annot/`` (label 11 = void);
    - plain: ``{train,val or test}/{images,masks}/`` (+ ``classes.txt``)."""
    root = Path(root)
    names = read_class_names(root)
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        sets = root / "ImageSets" / "Segmentation"
        splits = {}
        for ours, theirs in (("train", "train"), ("test", "val")):
            stems = (sets / f"{theirs}.txt").read_text().split()
            images, masks = read_mask_folder(root / "JPEGImages", root / "SegmentationClass", stems)
            splits[ours] = SegmentationSplit(images, masks)
        return "voc", splits, names or VOC_CLASSES
    if (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir():
        splits = {
            ours: SegmentationSplit(
                *read_mask_folder(root / "images" / theirs, root / "annotations" / theirs),
                reduce_zero_label=True,
            )
            for ours, theirs in (("train", "training"), ("test", "validation"))
        }
        return "ade20k", splits, names
    test_name = next((n for n in ("val", "test") if (root / n).is_dir()), None)
    if test_name and (root / "trainannot").is_dir() and (root / f"{test_name}annot").is_dir():
        splits = {
            ours: SegmentationSplit(
                *read_mask_folder(root / theirs, root / f"{theirs}annot"), void_labels=(11,)
            )
            for ours, theirs in (("train", "train"), ("test", test_name))
        }
        return "camvid", splits, names or CAMVID_CLASSES
    if test_name and (root / "train" / "masks").is_dir() and (root / test_name / "masks").is_dir():
        splits = {
            ours: SegmentationSplit(*read_mask_folder(root / theirs / "images", root / theirs / "masks"))
            for ours, theirs in (("train", "train"), ("test", test_name))
        }
        return "masks", splits, names
    return None


# --------------------------------------------------------------------------------------------------- COCO


def rasterise_coco(
    annotation_file: str | Path,
    image_dir: str | Path,
    categories: list[int] | None = None,
    crowd: str = "ignore",
) -> tuple[list[tuple[Path, np.ndarray]], list[str]]:
    """COCO instances JSON -> ([(image path, semantic mask uint8 [H, W])], class names). Class 0 is
    background; the categories (all, or the ids in ``categories``) map to 1..K in id order. Polygons are
    filled with PIL, RLE (uncompressed count lists and compressed strings) decoded here. Instances are drawn
    largest first, so that small objects stay visible on top of large ones. ``crowd``: "ignore" paints
    crowd regions 255, "class" paints them with their category."""
    if crowd not in ("ignore", "class"):
        raise ValueError(f"crowd must be 'ignore' or 'class', got {crowd!r}")
    data = json.loads(Path(annotation_file).read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if categories is not None:
        cats = [c for c in cats if c["id"] in set(categories)]
    if len(cats) > 254:
        raise ValueError(
            f"{len(cats)} categories do not fit a uint8 mask with 0 = background and 255 = ignore"
        )
    index = {c["id"]: i + 1 for i, c in enumerate(cats)}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    out = []
    for image in data["images"]:
        height, width = image["height"], image["width"]
        mask = np.zeros((height, width), np.uint8)
        for ann in sorted(by_image.get(image["id"], []), key=lambda a: -float(a.get("area", 0))):
            value = IGNORE if ann.get("iscrowd") and crowd == "ignore" else index.get(ann["category_id"])
            if value is None:
                continue
            mask[annotation_mask(ann["segmentation"], height, width)] = value
        out.append((Path(image_dir) / image["file_name"], mask))
    return out, ["background"] + [c["name"] for c in cats]


def annotation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """bool [H, W] of one COCO ``segmentation`` decoded with pycocotools (as COCO's own ``annToMask``): a
    list of polygons [x0, y0, x1, y1, ...], or RLE with ``counts`` as a list (uncompressed) or a string
    (compressed). An RLE stored for another size than the image is resized (nearest) to it."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), bool)
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle_height, rle_width = (int(v) for v in segmentation.get("size", (height, width)))
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed: pycocotools compresses it
            rle = coco_mask.frPyObjects(
                {"size": [rle_height, rle_width], "counts": counts}, rle_height, rle_width
            )
        else:
            rle = {
                "size": [rle_height, rle_width],
                "counts": counts.encode() if isinstance(counts, str) else counts,
            }
    else:
        raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")
    decoded = coco_mask.decode(rle).astype(bool)
    if decoded.shape != (height, width):
        decoded = np.asarray(Image.fromarray(decoded).resize((width, height), Image.NEAREST), dtype=bool)
    return decoded
