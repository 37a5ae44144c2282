"""Image-text retrieval on the Karpathy splits: ``flickr30k`` (``dataset_flickr30k.json``, 1k test images)
and ``coco5k`` (``dataset_coco.json``, 5k test images), 5 captions per image, R@1/5/10 both ways with CLS1,
CLS2 and their mean; ``karpathy`` for any file of that format (``--split``).

``--data`` is the JSON file or the folder holding it (directly or in ``annotations/`` / ``karpathy/``).
Images are looked up, in order, at ``<folder>/<filepath>/<filename>``, ``<folder>/<filename>``,
``<folder>/flickr30k-images/<filename>`` and ``<folder>/images/<filename>``; for COCO also under the 2017
names (``train2017/`` or ``val2017/`` + the 12-digit image id), since the 2014 images are the 2017 ones
renamed."""

from __future__ import annotations

import re
from pathlib import Path

from open_tips.eval.dataset import EvalData, Split
from open_tips.eval.features import dataset_fingerprint
from open_tips.eval.registry import Suite, register_suite
from open_tips.eval.retrieval import is_karpathy, read_karpathy


def find_json(path: Path, names: tuple[str, ...]) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".json" and is_karpathy(path) else None
    for folder in (path, path / "annotations", path / "karpathy"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def image_candidates(base: Path, relative: str) -> list[Path]:
    rel = Path(relative)
    found = [base / rel, base / rel.name, base / "flickr30k-images" / rel.name, base / "images" / rel.name]
    match = re.search(r"COCO_(?:train|val)2014_0*(\d+)\.jpg$", rel.name)
    if match:
        new_name = f"{int(match.group(1)):012d}.jpg"
        found += [base / "val2017" / new_name, base / "train2017" / new_name]
    return found


def resolve_images(json_path: Path, relatives: list[str]) -> list[Path]:
    """The image file of each entry; ``FileNotFoundError`` naming the first missing one."""
    bases = [json_path.parent] + (
        [json_path.parent.parent] if json_path.parent.name in ("annotations", "karpathy") else []
    )
    out, missing = [], []
    for relative in relatives:
        path = next((p for base in bases for p in image_candidates(base, relative) if p.is_file()), None)
        if path is None:
            missing.append(relative)
        else:
            out.append(path)
    if missing:
        tried = ", ".join(str(p) for p in image_candidates(bases[-1], missing[0])[:3])
        raise FileNotFoundError(
            f"{len(missing)} of {len(relatives)} images not found, e.g. {missing[0]} (tried {tried}, ...)"
        )
    return out


def make_loader(suite: str, json_names: tuple[str, ...], split: str | None, expected: int | None):
    def load(root: Path, options) -> EvalData:
        json_path = find_json(root, json_names)
        if json_path is None:
            raise FileNotFoundError(f"no {' or '.join(json_names)} at {root}")
        which = split or options.split
        items = read_karpathy(json_path, which)[: options.max_images]
        if not items:
            raise ValueError(f"{json_path}: no images in split {which!r}")
        paths = resolve_images(json_path, [name for name, _ in items])
        captions = [caps for _, caps in items]
        info = {
            "layout": "karpathy",
            "file": str(json_path),
            "split": which,
            "images": len(paths),
            "captions": sum(len(c) for c in captions),
        }
        if expected is not None and options.max_images is None and len(paths) != expected:
            info["warning"] = f"{len(paths)} test images, the standard split has {expected}"
        return EvalData(
            suite=suite,
            test=Split(
                images=paths, key=dataset_fingerprint("karpathy", which, files=paths), captions=captions
            ),
            info=info,
        )

    return load


def _detect(names: tuple[str, ...]):
    def detect(path: Path) -> bool:
        found = find_json(path, names)
        return found is not None and (path.is_dir() or found.name in names)

    return detect


register_suite(
    Suite(
        "flickr30k",
        make_loader("flickr30k", ("dataset_flickr30k.json",), "test", 1000),
        ("retrieval",),
        summary="Flickr30k 1k test images (Karpathy split), retrieval R@1/5/10 both ways",
        layout="dataset_flickr30k.json + flickr30k-images/*.jpg",
        source="Karpathy splits (caption_datasets.zip, dataset_flickr30k.json); images from the Flickr30k "
        "request form (shannon.cs.illinois.edu/DenotationGraph)",
        detect=_detect(("dataset_flickr30k.json",)),
        priority=30,
    )
)
register_suite(
    Suite(
        "coco5k",
        make_loader("coco5k", ("dataset_coco.json",), "test", 5000),
        ("retrieval",),
        summary="COCO 5k test images (Karpathy split), retrieval R@1/5/10 both ways",
        layout="dataset_coco.json + val2014/ (or the same images as val2017/ / train2017/)",
        source="Karpathy splits (caption_datasets.zip, dataset_coco.json); images from cocodataset.org",
        detect=_detect(("dataset_coco.json",)),
        priority=30,
    )
)
register_suite(
    Suite(
        "karpathy",
        make_loader(
            "karpathy", ("dataset_coco.json", "dataset_flickr30k.json", "dataset_flickr8k.json"), None, None
        ),
        ("retrieval",),
        summary="any Karpathy-format JSON, the split given by --split",
        layout="a Karpathy JSON (images with filepath / filename / split / sentences) and its images",
        source="Karpathy splits",
        detect=lambda path: path.is_file() and find_json(path, ()) is not None,
        priority=25,
    )
)
