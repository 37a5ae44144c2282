"""What a suite hands to the tasks: image lists per split with their labels, captions, masks, depth and
normals, all at the images' own resolution (tasks resize as their protocol says), plus the class names
and a description of the layout and the label mapping for the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from open_tips.eval.features import ImageLike


class Lazy(Sequence):
    """A read-only sequence whose items are computed on access: ``Lazy(paths, reader)[i] == reader(paths[i])``."""

    def __init__(self, items: Sequence, read: Callable) -> None:
        self.items, self.read = items, read

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Lazy(self.items[index], self.read)
        return self.read(self.items[index])


@dataclass
class Split:
    """One split of a dataset. ``key`` identifies its images for the feature cache
    (``features.dataset_fingerprint``). Optional per-image data, each a sequence of the same length:
    ``labels`` (class index into ``EvalData.class_names``), ``captions`` (several per image; the same for
    every CLS token unless ``captions_by_cls`` gives one list per token), ``masks`` (int [H, W], class index
    into ``EvalData.seg_names``, 255 = ignore), ``depth`` (float [H, W] metres, <= 0 invalid), ``normals``
    (float [H, W, 3]), ``valid`` (bool [H, W]: the evaluation crop; pixels outside it are left out)."""

    images: Sequence[ImageLike]
    key: str
    labels: Sequence[int] | None = None
    captions: Sequence[list[str]] | None = None
    captions_by_cls: dict[str, Sequence[list[str]]] | None = None
    masks: Sequence[np.ndarray] | None = None
    depth: Sequence[np.ndarray] | None = None
    normals: Sequence[np.ndarray] | None = None
    valid: Sequence[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.images)


def evenly_spaced(count: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(count)`` (all of them without a limit): a capped
    ImageFolder split keeps every class, unlike its first ``limit`` files."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit).round()})


@dataclass
class EvalData:
    """A loaded suite. ``class_names`` name the classification labels; ``seg_names`` the mask classes
    (index 0 is "background" when ``background`` is true). ``info`` goes into results.json as is: layout,
    label mapping, split sizes, the dataset's source."""

    suite: str
    test: Split
    train: Split | None = None
    class_names: list[str] | None = None
    seg_names: list[str] | None = None
    background: bool = False
    num_seg_classes: int | None = None  # default len(seg_names)
    info: dict = field(default_factory=dict)

    def missing(self, need: str) -> str | None:
        """Why this data cannot serve requirement ``need`` (None when it can)."""
        test, train = self.test, self.train
        checks = {
            "train": (train is not None, "no training split"),
            "labels": (test.labels is not None and self.class_names is not None, "no class labels"),
            "train_labels": (train is not None and train.labels is not None, "no labelled training split"),
            "captions": (test.captions is not None or test.captions_by_cls is not None, "no captions"),
            "masks": (test.masks is not None, "no segmentation masks"),
            "train_masks": (train is not None and train.masks is not None, "no training masks"),
            "seg_names": (bool(self.seg_names), "no class names for the masks (add a classes.txt)"),
            "depth": (test.depth is not None and train is not None and train.depth is not None, "no depth"),
            "normals": (
                test.normals is not None and train is not None and train.normals is not None,
                "no surface normals",
            ),
        }
        if need not in checks:
            raise ValueError(f"unknown data requirement {need!r}")
        ok, reason = checks[need]
        return None if ok else reason
