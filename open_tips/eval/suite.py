"""Evaluation suites: which data each task runs on, and one results dict per run.

- ``evaluate_builtin``: the procedural shapes dataset (``open_tips.data.builtin``) with exact ground truth;
  train and test splits are generated from seeds that training never uses (``seed + 10000`` / ``+ 20000``).
  kNN / linear / zero-shot classification on each image's main shape, retrieval with the web caption
  (CLS1) and the two synthetic captions (CLS2), segmentation / depth / normals probes and zero-shot
  segmentation on the exact masks, depth and normals. CPU-cheap: the trainer runs it at the end of
  ``open-tips train``.
- ``evaluate_coco``: a COCO-style root (``annotations/{captions,instances}_{train,val}2017.json``,
  ``train2017/``, ``val2017/``): retrieval with the 5 captions per val image, segmentation probe on masks
  rasterised from the instance annotations (fit on train2017, test on val2017), zero-shot segmentation,
  and kNN / linear / zero-shot classification of each image's largest category.
- ``evaluate_folder``: other standard layouts (VOC / ADE20k / CamVid / plain mask folders, NYUv2-style depth
  folders, ImageFolder classification, a Karpathy retrieval JSON); see ``find_layouts``.
- ``evaluate_path``: "builtin" or a path, dispatched to the above.

Every suite returns (and, with ``output_dir``, writes) ``{"suite", "image_size", ..., "tasks": {name:
metrics}, "seconds": {name: s}, "skipped": {task: reason}}``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from open_tips.eval import TASKS
from open_tips.eval.depth import depth_probe, find_depth_layout, read_depth, resize_depth
from open_tips.eval.features import (
    FeatureSet,
    dataset_fingerprint,
    extract_features,
    has_text,
    load_image,
    patch_aligned,
    text_features,
)
from open_tips.eval.knn import knn_accuracy
from open_tips.eval.linear import linear_accuracy
from open_tips.eval.metrics import IGNORE
from open_tips.eval.normals import normals_from_depth, normals_probe, read_normals, resize_normals
from open_tips.eval.report import write_results
from open_tips.eval.retrieval import (
    is_karpathy,
    positives_from_captions,
    read_coco_captions,
    read_karpathy,
    retrieval_metrics,
)
from open_tips.eval.segmentation import (
    find_segmentation_layout,
    rasterise_coco,
    resize_mask,
    segmentation_probe,
)
from open_tips.eval.zeroshot import CLS_CHOICES, zeroshot_accuracy
from open_tips.eval.zeroshot_seg import zeroshot_segmentation
from open_tips.inference.zeroshot import TIPS_TEMPLATES, class_embeddings

log = logging.getLogger(__name__)

ALL_TASKS = TASKS  # the name the first version exported
TEXT_TASKS = frozenset({"zeroshot", "retrieval", "zeroshot-seg"})


@dataclass
class EvalOptions:
    """Settings shared by the suites (every field has the protocol's default)."""

    image_size: int | None = None  # model input side; None = the model's training resolution
    device: str | None = None  # None = where the model's parameters are
    batch_size: int = 64  # images per forward pass
    workers: int = 0  # image-decoding processes for datasets on disk
    amp: bool = False  # bfloat16 autocast for feature extraction on CUDA
    cache_dir: str | None = None  # feature cache; used only together with model_key
    model_key: str | None = None  # identity of the checkpoint (features.model_fingerprint)
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_optimizer: str = "adamw"  # or "lbfgs"
    linear_epochs: int = 100
    probe_epochs: int = 30  # dense probes (seg / depth / normals)
    probe_lr: float = 5e-2
    seg_with_cls: bool = False  # seg probe on patch tokens + CLS1 (depth and normals always use CLS)
    depth_bins: int = 256
    depth_min: float = 1e-3
    depth_max: float = 10.0
    depth_spacing: str = "linear"  # or "log"
    depth_scale: float = 1000.0  # PNG depth units per metre (NYUv2: millimetres)
    zeroshot_background: str = "name"  # or "threshold" / "ignore"
    zeroshot_threshold: float = 0.0
    templates: list[str] = field(default_factory=lambda: list(TIPS_TEMPLATES))
    pictures: bool = True  # pca.png / zeroshot_seg.png in output_dir
    num_pictures: int = 4
    progress: bool = True


def _options(options: EvalOptions | None, overrides: dict) -> EvalOptions:
    options = options or EvalOptions()
    known = {f.name for f in fields(EvalOptions)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown evaluation options: {', '.join(sorted(unknown))}")
    return replace(options, **{k: v for k, v in overrides.items() if v is not None})


def _check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    tasks = tuple(dict.fromkeys(t.strip() for t in tasks if t.strip()))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
    return tasks


class _Run:
    """One suite run: the model in eval mode, the options, the results being filled, per-task timing."""

    def __init__(self, model, suite: str, tasks: Iterable[str], options: EvalOptions, **meta) -> None:
        self.model, self.options = model, options
        self.tasks = _check_tasks(tasks)
        self.device = torch.device(options.device) if options.device else next(model.parameters()).device
        self.size = patch_aligned(options.image_size or model.cfg.image_size, model.vision.patch_size)
        self.text = has_text(model)
        self.results: dict = {
            "suite": suite,
            "image_size": self.size,
            **meta,
            "tasks": {},
            "seconds": {},
            "skipped": {},
        }
        if not self.text:
            for task in self.tasks:
                if task in TEXT_TASKS:
                    self.skip(task, "the model has no text tower or no tokenizer")
        self._class_cache: dict[tuple, torch.Tensor] = {}
        self.done: set[str] = set()

    def wants(self, task: str) -> bool:
        return task in self.tasks and task not in self.results["skipped"]

    def skip(self, task: str, reason: str) -> None:
        if task in self.tasks:
            self.results["skipped"][task] = reason
            log.info("skipping %s: %s", task, reason)

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        yield
        self.results["seconds"][name] = round(
            self.results["seconds"].get(name, 0.0) + time.perf_counter() - start, 3
        )
        if name in TASKS:
            self.done.add(name)

    def features(
        self, images: Sequence, dataset_key: str, value_trick: bool = False, desc: str = "features"
    ) -> FeatureSet:
        o = self.options
        with self.timed("features"):
            return extract_features(
                self.model,
                images,
                self.size,
                batch_size=o.batch_size,
                device=self.device,
                value_trick=value_trick,
                cache_dir=o.cache_dir,
                model_key=o.model_key,
                dataset_key=dataset_key,
                workers=o.workers,
                amp=o.amp,
                desc=desc,
                progress=o.progress,
            )

    def classes(self, names: list[str]) -> torch.Tensor:
        key = tuple(names)
        if key not in self._class_cache:
            self._class_cache[key] = class_embeddings(self.model, names, self.options.templates).float().cpu()
        return self._class_cache[key]

    # -- the tasks, on prepared data ------------------------------------------------------------------

    def classification(
        self,
        train: FeatureSet | None,
        train_labels: torch.Tensor | None,
        test: FeatureSet,
        test_labels: torch.Tensor,
        class_names: list[str],
    ) -> None:
        o, out = self.options, self.results["tasks"]
        num_classes = len(class_names)
        if train is not None and self.wants("knn"):
            with self.timed("knn"):
                out["knn"] = knn_accuracy(
                    train.cls_web,
                    train_labels,
                    test.cls_web,
                    test_labels,
                    num_classes,
                    k=o.knn_k,
                    temperature=o.knn_temperature,
                )
        if train is not None and self.wants("linear"):
            with self.timed("linear"):
                out["linear"] = linear_accuracy(
                    train.cls_web,
                    train_labels,
                    test.cls_web,
                    test_labels,
                    num_classes,
                    optimizer=o.linear_optimizer,
                    epochs=o.linear_epochs,
                    progress=o.progress,
                )
        if self.wants("zeroshot"):
            with self.timed("zeroshot"):
                per_cls = zeroshot_accuracy(
                    self.model,
                    test,
                    test_labels,
                    class_names,
                    which=CLS_CHOICES,
                    classes=self.classes(class_names),
                )
                for which, metrics in per_cls.items():
                    out[f"zeroshot_{which}"] = metrics

    def retrieval(self, name: str, image_emb: torch.Tensor, captions: list[list[str]]) -> None:
        with self.timed("retrieval"):
            texts, _, positives = positives_from_captions(captions)
            text_emb = text_features(self.model, texts)
            self.results["tasks"][name] = retrieval_metrics(image_emb, text_emb, positives=positives)

    def dense(
        self,
        train: FeatureSet,
        test: FeatureSet,
        masks: tuple[torch.Tensor, torch.Tensor] | None,
        num_classes: int | None,
        depth: tuple[torch.Tensor, torch.Tensor] | None,
        normals: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        o, out = self.options, self.results["tasks"]
        common = {"epochs": o.probe_epochs, "lr": o.probe_lr, "device": self.device, "progress": o.progress}
        if masks is not None and self.wants("seg"):
            with self.timed("seg"):
                out["seg"] = segmentation_probe(
                    train, masks[0], test, masks[1], num_classes, with_cls=o.seg_with_cls, **common
                )
        if depth is not None and self.wants("depth"):
            with self.timed("depth"):
                out["depth"] = depth_probe(
                    train,
                    depth[0],
                    test,
                    depth[1],
                    num_bins=o.depth_bins,
                    min_depth=o.depth_min,
                    max_depth=o.depth_max,
                    spacing=o.depth_spacing,
                    **common,
                )
        if normals is not None and self.wants("normals"):
            with self.timed("normals"):
                out["normals"] = normals_probe(train, normals[0], test, normals[1], **common)

    def zeroshot_seg(
        self, test: FeatureSet, masks: torch.Tensor, class_names: list[str], objects_only: bool = True
    ) -> None:
        """``zeroshot_seg`` with the configured background handling; with ``objects_only`` (and a background
        class 0) also ``zeroshot_seg_objects``: object classes only, background pixels ignored."""
        if not self.wants("zeroshot-seg"):
            return
        o = self.options
        modes = [("zeroshot_seg", o.zeroshot_background)]
        if objects_only and class_names[0].lower() == "background" and o.zeroshot_background != "ignore":
            modes.append(("zeroshot_seg_objects", "ignore"))
        with self.timed("zeroshot-seg"):
            for name, background in modes:
                prompted = class_names if background == "name" else class_names[1:]
                self.results["tasks"][name] = zeroshot_segmentation(
                    self.model,
                    test.value_tokens,
                    masks,
                    class_names,
                    o.templates,
                    background=background,
                    threshold=o.zeroshot_threshold,
                    classes=self.classes(prompted),
                )

    def finish(
        self,
        output_dir: str | os.PathLike | None,
        images: Sequence | None = None,
        test: FeatureSet | None = None,
        masks: torch.Tensor | None = None,
        class_names: list[str] | None = None,
    ) -> dict:
        for task in self.tasks:
            if task not in self.done and task not in self.results["skipped"]:
                self.skip(task, "no data for this task in this dataset")
        if output_dir is not None:
            if self.options.pictures and images and test is not None:
                from open_tips.eval.pictures import write_report_pictures

                with self.timed("pictures"):
                    count = min(self.options.num_pictures, len(images))
                    shown = [load_image(im).convert("RGB") for im in images[:count]]
                    write_report_pictures(
                        self.model,
                        shown,
                        test,
                        output_dir,
                        masks=masks,
                        class_names=class_names,
                        templates=self.options.templates,
                        background=self.options.zeroshot_background,
                        threshold=self.options.zeroshot_threshold,
                    )
            write_results(self.results, output_dir)
        return self.results


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------------------ built-in


def _builtin_split(seed: int, count: int, size: int, caption_noise: float) -> tuple[list[dict], str]:
    from open_tips.data import builtin

    data = builtin.BuiltinShapes(count, size, seed=seed, caption_noise=caption_noise, with_normals=True)
    samples = [data[i] for i in range(count)]
    key = dataset_fingerprint("builtin", seed, count, size, caption_noise, files=[builtin.__file__])
    return samples, key


def evaluate_builtin(
    model,
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    num_train: int = 300,
    num_test: int = 200,
    tasks: Iterable[str] = TASKS,
    sample_size: int | None = None,
    caption_noise: float = 0.5,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """The built-in suite (see the module docstring). ``sample_size``: the side the samples are generated
    at (default: max(112, image size)); the ground truth is resized (nearest) to the model's input size.
    ``options`` / keyword ``overrides``: any ``EvalOptions`` field."""
    from open_tips.data.builtin import SHAPE_CLASSES

    options = _options(
        options, {**overrides, "image_size": image_size, "device": str(device) if device else None}
    )
    run = _Run(model, "builtin", tasks, options, num_train=num_train, num_test=num_test, seed=seed)
    size = run.size
    sample_size = sample_size or max(112, size)
    train, train_key = _builtin_split(seed + 10_000, num_train, sample_size, caption_noise)
    test, test_key = _builtin_split(seed + 20_000, num_test, sample_size, caption_noise)
    value_trick = run.wants("zeroshot-seg") or (options.pictures and output_dir is not None and run.text)
    needs_train = any(run.wants(t) for t in ("knn", "linear", "seg", "depth", "normals"))
    with _eval_mode(model):
        train_features = (
            run.features([s["image"] for s in train], train_key, desc="builtin train")
            if needs_train
            else None
        )
        test_features = run.features([s["image"] for s in test], test_key, value_trick, desc="builtin test")
        train_labels = torch.tensor([s["main_label"] - 1 for s in train])
        test_labels = torch.tensor([s["main_label"] - 1 for s in test])
        run.classification(train_features, train_labels, test_features, test_labels, SHAPE_CLASSES)
        if run.wants("retrieval"):
            run.retrieval("retrieval_web", test_features.cls_web, [[s["web_caption"]] for s in test])
            run.retrieval(
                "retrieval_synthetic",
                test_features.cls_synthetic,
                [[c["text"] for c in s["synthetic_captions"]] for s in test],
            )

        def stack(samples: list[dict], convert, key: str) -> torch.Tensor:
            return torch.stack([convert(s[key], size) for s in samples])

        test_masks = stack(test, resize_mask, "segmentation")
        if needs_train:
            masks = (stack(train, resize_mask, "segmentation"), test_masks)
            depth = (stack(train, resize_depth, "depth"), stack(test, resize_depth, "depth"))
            normals = (stack(train, resize_normals, "normals"), stack(test, resize_normals, "normals"))
            run.dense(train_features, test_features, masks, len(SHAPE_CLASSES) + 1, depth, normals)
        names = ["background"] + SHAPE_CLASSES
        run.zeroshot_seg(test_features, test_masks, names)
        return run.finish(output_dir, [s["image"] for s in test], test_features, test_masks, names)


# ---------------------------------------------------------------------------------------------------- COCO


def is_coco_root(path: str | os.PathLike) -> bool:
    annotations = Path(path) / "annotations"
    return annotations.is_dir() and (
        any(annotations.glob("instances_*.json")) or any(annotations.glob("captions_*.json"))
    )


def _coco_split_names(root: Path) -> tuple[str, str]:
    splits = sorted({p.stem.split("_", 1)[1] for p in (root / "annotations").glob("*_*.json")})
    train = next((s for s in splits if s.startswith("train")), None)
    test = next((s for s in splits if s.startswith("val")), None) or next(
        (s for s in splits if s.startswith("test")), None
    )
    if train is None or test is None:
        raise ValueError(f"{root}: need annotations for a train and a val split, found {splits}")
    return train, test


def _main_label(mask: np.ndarray, num_classes: int) -> int:
    """The object class with most pixels (1..K), or 0 when the image has no object pixel."""
    counts = np.bincount(mask[(mask != IGNORE) & (mask > 0)].ravel(), minlength=num_classes)
    return int(counts.argmax()) if counts.sum() > 0 else 0


def evaluate_coco(
    model,
    root: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    device: torch.device | str | None = None,
    tasks: Iterable[str] = TASKS,
    max_images: int | None = None,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """The COCO suite (see the module docstring); ``max_images`` caps each split (first images in file
    order) for quick runs."""
    options = _options(
        options, {**overrides, "image_size": image_size, "device": str(device) if device else None}
    )
    root = Path(root)
    train_split, test_split = _coco_split_names(root)
    run = _Run(model, "coco", tasks, options, data=str(root), train_split=train_split, test_split=test_split)
    size = run.size
    annotations = root / "annotations"
    run.skip("depth", "COCO has no depth")
    run.skip("normals", "COCO has no surface normals")

    def split_data(split: str) -> tuple[list[Path], list[np.ndarray], list[str]] | None:
        path = annotations / f"instances_{split}.json"
        if not path.is_file():
            return None
        pairs, names = rasterise_coco(path, root / split)
        pairs = [(p, m) for p, m in pairs if p.is_file()][:max_images]
        return [p for p, _ in pairs], [m for _, m in pairs], names

    with _eval_mode(model):
        dense_wanted = any(run.wants(t) for t in ("knn", "linear", "zeroshot", "seg", "zeroshot-seg"))
        train = split_data(train_split) if dense_wanted else None
        test = split_data(test_split) if dense_wanted else None
        test_features = train_features = None
        test_masks = None
        names: list[str] = []
        if train is not None and test is not None:
            names = test[2]
            value_trick = run.wants("zeroshot-seg") or (
                options.pictures and output_dir is not None and run.text
            )
            train_features = run.features(
                train[0], dataset_fingerprint("coco", train_split, files=train[0]), desc=f"coco {train_split}"
            )
            test_features = run.features(
                test[0],
                dataset_fingerprint("coco", test_split, files=test[0]),
                value_trick,
                desc=f"coco {test_split}",
            )
            train_labels = torch.tensor([_main_label(m, len(names)) for m in train[1]])
            test_labels = torch.tensor([_main_label(m, len(names)) for m in test[1]])
            # Classification on the largest category: images without any object are left out, and labels
            # shift to 0..K-1 over the category names.
            keep_train, keep_test = train_labels > 0, test_labels > 0
            run.classification(
                train_features.subset(keep_train.nonzero()[:, 0]),
                train_labels[keep_train] - 1,
                test_features.subset(keep_test.nonzero()[:, 0]),
                test_labels[keep_test] - 1,
                names[1:],
            )
            train_masks = torch.stack([resize_mask(m, size) for m in train[1]])
            test_masks = torch.stack([resize_mask(m, size) for m in test[1]])
            run.dense(train_features, test_features, (train_masks, test_masks), len(names), None, None)
            run.zeroshot_seg(test_features, test_masks, names)
        if run.wants("retrieval") and (annotations / f"captions_{test_split}.json").is_file():
            captioned = [
                (root / test_split / name, caps)
                for name, caps in read_coco_captions(annotations / f"captions_{test_split}.json")
                if (root / test_split / name).is_file()
            ][:max_images]
            paths = [p for p, _ in captioned]
            if test is not None and paths == test[0]:
                image_features = test_features  # the same images: no second pass
            else:
                image_features = run.features(
                    paths, dataset_fingerprint("coco", test_split, files=paths), desc="coco retrieval"
                )
            run.results["num_retrieval_images"] = len(paths)
            captions = [caps for _, caps in captioned]
            run.retrieval("retrieval_web", image_features.cls_web, captions)
            run.retrieval("retrieval_synthetic", image_features.cls_synthetic, captions)
        if test is not None:
            run.results["num_train"], run.results["num_test"] = len(train[0]), len(test[0])
        return run.finish(
            output_dir, test[0] if test is not None else None, test_features, test_masks, names or None
        )


# ------------------------------------------------------------------------------------------ other layouts


def _image_folder(root: Path) -> tuple[dict[str, tuple[list[Path], list[int]]], list[str]] | None:
    """ImageFolder classification: ``train/<class>/*`` and ``val/`` (or ``test/``) ``<class>/*``; class
    names from ``classes.txt`` (one per line, in sorted folder order) or the folder names ("_" -> " ")."""
    from open_tips.data.decode import IMAGE_EXTENSIONS

    test_name = next((n for n in ("val", "test") if (root / n).is_dir()), None)
    if test_name is None or not (root / "train").is_dir():
        return None
    folders = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not folders or any(not p.is_dir() for p in (root / "train").iterdir() if not p.name.startswith(".")):
        return None
    splits = {}
    for ours, theirs in (("train", "train"), ("test", test_name)):
        paths, labels = [], []
        for label, folder in enumerate(folders):
            directory = root / theirs / folder
            if directory.is_dir():
                found = sorted(
                    p
                    for p in directory.iterdir()
                    if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
                )
                paths += found
                labels += [label] * len(found)
        if not paths:
            return None
        splits[ours] = (paths, labels)
    names_file = root / "classes.txt"
    names = (
        [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if names_file.is_file()
        else [f.replace("_", " ") for f in folders]
    )
    if len(names) != len(folders):
        raise ValueError(f"{names_file}: {len(names)} names for {len(folders)} class folders")
    return splits, names


def find_layouts(path: str | os.PathLike) -> list[str]:
    """The layouts recognised at ``path``: "coco", "karpathy", "segmentation", "depth", "imagefolder"."""
    path = Path(path)
    if path.is_file():
        return ["karpathy"] if path.suffix == ".json" and is_karpathy(path) else []
    found = []
    if is_coco_root(path):
        found.append("coco")
    if find_segmentation_layout(path) is not None:
        found.append("segmentation")
    if find_depth_layout(path) is not None:
        found.append("depth")
    if "segmentation" not in found and "depth" not in found and _image_folder(path) is not None:
        found.append("imagefolder")
    return found


def evaluate_folder(
    model,
    path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    device: torch.device | str | None = None,
    tasks: Iterable[str] = TASKS,
    max_images: int | None = None,
    split: str = "test",
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """Segmentation / depth / ImageFolder layouts under a folder, or a Karpathy JSON file (retrieval on
    its ``split``, images relative to the file's folder)."""
    options = _options(
        options, {**overrides, "image_size": image_size, "device": str(device) if device else None}
    )
    path = Path(path)
    layouts = find_layouts(path)
    if not layouts:
        raise ValueError(f"{path}: no known dataset layout (see open_tips.eval.suite.find_layouts)")
    run = _Run(model, "+".join(layouts), tasks, options, data=str(path))
    size = run.size
    shown: list = []
    shown_features = shown_masks = shown_names = None
    with _eval_mode(model):
        if "karpathy" in layouts and run.wants("retrieval"):
            items = read_karpathy(path, split)[:max_images]
            images = [path.parent / name for name, _ in items]
            features = run.features(
                images, dataset_fingerprint("karpathy", split, files=images), desc="karpathy"
            )
            captions = [caps for _, caps in items]
            run.retrieval("retrieval_web", features.cls_web, captions)
            run.retrieval("retrieval_synthetic", features.cls_synthetic, captions)
        if "segmentation" in layouts:
            name, splits, names = find_segmentation_layout(path)
            run.results["segmentation_layout"] = name
            train, test = splits["train"], splits["test"]
            train_n, test_n = len(train.images[:max_images]), len(test.images[:max_images])
            value_trick = bool(names) and (run.wants("zeroshot-seg") or (options.pictures and run.text))
            train_f = run.features(
                train.images[:train_n],
                dataset_fingerprint(name, "train", files=train.images[:train_n]),
                desc=f"{name} train",
            )
            test_f = run.features(
                test.images[:test_n],
                dataset_fingerprint(name, "test", files=test.images[:test_n]),
                value_trick,
                desc=f"{name} test",
            )
            train_m = torch.stack([resize_mask(train.load_mask(i), size) for i in range(train_n)])
            test_m = torch.stack([resize_mask(test.load_mask(i), size) for i in range(test_n)])
            labelled = torch.cat([train_m[train_m != IGNORE], test_m[test_m != IGNORE]])
            num_classes = max(int(labelled.max()) + 1 if labelled.numel() else 1, len(names) if names else 0)
            run.dense(train_f, test_f, (train_m, test_m), num_classes, None, None)
            if names:
                run.zeroshot_seg(test_f, test_m, names)
            else:
                run.skip("zeroshot-seg", "no class names (add a classes.txt)")
            shown, shown_features, shown_masks, shown_names = test.images, test_f, test_m, names
        if "depth" in layouts:
            splits = find_depth_layout(path)
            data = {}
            for split_name, dense in splits.items():
                count = len(dense.images[:max_images])
                features = run.features(
                    dense.images[:count],
                    dataset_fingerprint("depth", split_name, files=dense.images[:count]),
                    desc=f"depth {split_name}",
                )
                depth = torch.stack(
                    [resize_depth(read_depth(p, options.depth_scale), size) for p in dense.depths[:count]]
                )
                if dense.normals is not None:
                    normals = torch.stack(
                        [resize_normals(read_normals(p), size) for p in dense.normals[:count]]
                    )
                else:
                    normals = normals_from_depth(depth)
                data[split_name] = (features, depth, normals)
            (train_f, train_d, train_nm), (test_f, test_d, test_nm) = data["train"], data["test"]
            run.dense(train_f, test_f, None, None, (train_d, test_d), (train_nm, test_nm))
            if not shown:
                shown, shown_features = splits["test"].images, test_f
        if "imagefolder" in layouts:
            splits, names = _image_folder(path)
            (train_paths, train_labels), (test_paths, test_labels) = splits["train"], splits["test"]
            train_f = run.features(
                train_paths[:max_images],
                dataset_fingerprint("imagefolder", "train", files=train_paths[:max_images]),
                desc="imagefolder train",
            )
            test_f = run.features(
                test_paths[:max_images],
                dataset_fingerprint("imagefolder", "test", files=test_paths[:max_images]),
                desc="imagefolder test",
            )
            run.classification(
                train_f,
                torch.tensor(train_labels[:max_images]),
                test_f,
                torch.tensor(test_labels[:max_images]),
                names,
            )
            if not shown:
                shown, shown_features = test_paths, test_f
        return run.finish(output_dir, shown, shown_features, shown_masks, shown_names)


def evaluate_path(
    model,
    data: str | os.PathLike = "builtin",
    output_dir: str | os.PathLike | None = None,
    *,
    tasks: Iterable[str] = TASKS,
    num_train: int = 300,
    num_test: int = 200,
    max_images: int | None = None,
    seed: int = 0,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """``data`` = "builtin" (or None / ""), a COCO-style root, or another known layout (``find_layouts``)."""
    if not data or str(data) == "builtin":
        return evaluate_builtin(
            model,
            output_dir,
            tasks=tasks,
            num_train=num_train,
            num_test=num_test,
            seed=seed,
            options=options,
            **overrides,
        )
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"no such dataset: {path}")
    if path.is_dir() and is_coco_root(path):
        return evaluate_coco(
            model, path, output_dir, tasks=tasks, max_images=max_images, options=options, **overrides
        )
    return evaluate_folder(
        model, path, output_dir, tasks=tasks, max_images=max_images, options=options, **overrides
    )
