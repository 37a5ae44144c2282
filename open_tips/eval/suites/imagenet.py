"""Classification folders: ``imagenet`` (``val/<synset>/*`` — zero-shot; with ``train/<synset>/*`` also kNN
and linear) and ``imagefolder`` (any ``train/<class>/*`` + ``val|test/<class>/*``).

Class names, in sorted folder order: ``classes.txt`` (one per line), else a synset mapping file
(``LOC_synset_mapping.txt`` of the Kaggle release or Caffe's ``synset_words.txt``: ``n01440764 tench,
Tinca tinca`` -> "tench"), else the folder names ("_" -> " "). Zero-shot numbers depend on the names: the
papers use CLIP's curated ImageNet names; put them in ``classes.txt``.

``--max-images N`` keeps N images per split spread evenly over the sorted file list, so every class stays."""

from __future__ import annotations

from pathlib import Path

from open_tips.data.decode import IMAGE_EXTENSIONS
from open_tips.eval.dataset import EvalData, Split, evenly_spaced
from open_tips.eval.features import dataset_fingerprint
from open_tips.eval.registry import Suite, register_suite

SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


def _extensions() -> set[str]:
    return {e.lower() for e in IMAGE_EXTENSIONS}


def class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_split(split_dir: Path, folders: list[str], limit: int | None) -> tuple[list[Path], list[int]]:
    extensions = _extensions()
    paths, labels = [], []
    for label, folder in enumerate(folders):
        directory = split_dir / folder
        if not directory.is_dir():
            continue
        found = sorted(
            p for p in directory.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in extensions
        )
        paths += found
        labels += [label] * len(found)
    keep = evenly_spaced(len(paths), limit)
    return [paths[i] for i in keep], [labels[i] for i in keep]


def class_names(root: Path, folders: list[str]) -> tuple[list[str], str]:
    """(names, where they came from)."""
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if len(names) != len(folders):
            raise ValueError(f"{names_file}: {len(names)} names for {len(folders)} class folders")
        return names, "classes.txt"
    for name in SYNSET_FILES:
        if (root / name).is_file():
            mapping = {}
            for line in (root / name).read_text().splitlines():
                if line.strip():
                    synset, _, words = line.strip().partition(" ")
                    mapping[synset] = words.split(",")[0].strip()
            missing = [f for f in folders if f not in mapping]
            if missing:
                raise ValueError(f"{root / name}: no name for {missing[:3]}")
            return [mapping[f] for f in folders], name
    return [f.replace("_", " ") for f in folders], "folder names"


def test_dir(root: Path) -> Path | None:
    return next((root / n for n in ("val", "test") if (root / n).is_dir()), None)


def make_loader(suite: str, needs_train: bool):
    def load(root: Path, options) -> EvalData:
        test_split = test_dir(root)
        if test_split is None:
            raise FileNotFoundError(f"no val/ (or test/) folder in {root}")
        train_split = root / "train" if (root / "train").is_dir() else None
        if needs_train and train_split is None:
            raise FileNotFoundError(f"no train/ folder in {root}")
        folders = class_folders(train_split if train_split is not None else test_split)
        if not folders:
            raise ValueError(f"no class folders in {train_split or test_split}")
        names, names_from = class_names(root, folders)
        splits = {}
        for ours, directory in (("train", train_split), ("test", test_split)):
            if directory is None:
                continue
            paths, labels = read_split(directory, folders, options.max_images)
            if not paths:
                raise ValueError(f"no images in the class folders of {directory}")
            splits[ours] = Split(
                images=paths,
                key=dataset_fingerprint(suite, directory.name, files=paths),
                labels=labels,
            )
        return EvalData(
            suite=suite,
            test=splits["test"],
            train=splits.get("train"),
            class_names=names,
            info={
                "layout": "class folders",
                "classes": len(names),
                "class_names": names_from,
                "test_split": test_split.name,
                "train_split": "train" if train_split is not None else None,
            },
        )

    return load


def _is_class_folder_root(path: Path, needs_train: bool) -> bool:
    if not path.is_dir():
        return False
    test_split = test_dir(path)
    if test_split is None or (needs_train and not (path / "train").is_dir()):
        return False
    children = [p for p in test_split.iterdir() if not p.name.startswith(".")]
    return bool(children) and all(p.is_dir() for p in children)


register_suite(
    Suite(
        "imagenet",
        make_loader("imagenet", needs_train=False),
        ("knn", "linear", "zeroshot"),
        summary="ImageNet-1k val (+ train for kNN / linear): zero-shot with templates, kNN, linear",
        layout="val/<synset>/*.JPEG (+ train/<synset>/*) + classes.txt or LOC_synset_mapping.txt",
        source="https://image-net.org (ILSVRC2012; val sorted into synset folders, e.g. with the Kaggle "
        "LOC_val_solution.csv)",
        detect=lambda path: (
            _is_class_folder_root(path, False) and any((path / n).is_file() for n in SYNSET_FILES)
        ),
        priority=15,
    )
)
register_suite(
    Suite(
        "imagefolder",
        make_loader("imagefolder", needs_train=False),
        ("knn", "linear", "zeroshot"),
        summary="any train/<class>/* + val|test/<class>/* folder: kNN, linear, zero-shot",
        layout="train/<class>/* + val/<class>/* (or test/), optional classes.txt",
        source="your own",
        detect=lambda path: _is_class_folder_root(path, False),
        priority=0,
    )
)
