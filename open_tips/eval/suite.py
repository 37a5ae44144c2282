"""Running an evaluation: a suite loads its data, the requested tasks run on it, results go to
``OUTPUT/results.json`` + ``results.md``.

``evaluate(model, suite, data, output_dir, tasks=..., options=...)`` is the one entry point; the suites
(``open_tips/eval/suites/``) and tasks (``open_tips/eval/tasks/``) come from the registry
(``open_tips.eval.registry``), so this file names none of them. ``evaluate_builtin`` (called by the
trainer), ``evaluate_coco``, ``evaluate_folder`` and ``evaluate_path`` are shorthands.

Tasks: with ``tasks=None`` a suite runs its default tasks and leaves out, under ``skipped`` with the reason,
those the model or the data cannot serve (text tasks on a vision-only checkpoint). Tasks asked for by name
must run: one that cannot raises ``EvalError`` (one line, before any feature is computed).

Results: ``{"suite", "data", "model": {identity}, "image_size", "preprocessing", "dataset": {layout,
label mapping, sizes}, "tasks": {key: {metrics..., "settings", "protocol"}}, "seconds", "skipped"}``.
With ``output_dir`` holding a results.json of the same model, suite and data, the new task results are
merged into it (a rerun with ``--tasks seg`` replaces ``seg`` and keeps the rest).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch

from open_tips.eval.context import FEATURE_PREPROCESSING, Context
from open_tips.eval.dataset import EvalData
from open_tips.eval.features import extract_features, load_image, patch_aligned
from open_tips.eval.options import EvalOptions, make_options
from open_tips.eval.pictures import write_report_pictures
from open_tips.eval.registry import EvalError, Suite, get_suite, get_task, suites, task_names
from open_tips.eval.report import load_results, write_results
from open_tips.eval.segmentation import resize_mask

log = logging.getLogger(__name__)

__all__ = [
    "EvalError",
    "EvalOptions",
    "evaluate",
    "evaluate_builtin",
    "evaluate_coco",
    "evaluate_folder",
    "evaluate_path",
    "find_suite",
    "model_identity",
]


def find_suite(data: str | os.PathLike | None) -> Suite:
    """The suite for ``data``: "builtin" (or None / ""), else the first registered suite whose ``detect``
    recognises the path (most specific first)."""
    if not data or str(data) == "builtin":
        return get_suite("builtin")
    path = Path(data)
    if not path.exists():
        raise EvalError(f"no such dataset: {path}")
    unique = {id(s): s for s in suites().values()}.values()
    for suite in sorted(unique, key=lambda s: -s.priority):
        try:
            found = suite.detect is not None and suite.detect(path)
        except (OSError, ValueError):  # a half-matching layout: not this suite
            found = False
        if found:
            return suite
    raise EvalError(f"{path}: no known dataset layout; name one with --suite (see `open-tips eval --list`)")


def _weights_digest(model) -> str:
    """A digest of the weights: every tensor's name and shape, and up to 4096 values from each end."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat if flat.numel() <= 8192 else torch.cat([flat[:4096], flat[-4096:]])
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_identity(model, options: EvalOptions) -> dict:
    """What identifies the evaluated model in results.json."""
    cfg = model.cfg
    identity = {
        "name": options.checkpoint or getattr(cfg, "name", "model"),
        "architecture": getattr(cfg, "name", None),
        "width": cfg.vision.width,
        "depth": cfg.vision.depth,
        "patch_size": cfg.vision.patch_size,
        "trained_resolution": cfg.image_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "text": bool(
            getattr(model, "text", None) is not None and getattr(model, "tokenizer", None) is not None
        ),
        "weights": _weights_digest(model),
    }
    if options.checkpoint:
        identity["checkpoint"] = options.checkpoint
    if options.config:
        identity["config"] = options.config
    if options.model_key:
        identity["fingerprint"] = options.model_key
    return identity


@contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _plan(suite: Suite, tasks: Iterable[str] | None) -> tuple[list[str], bool]:
    """(task names in run order, whether they were asked for by name)."""
    known = task_names()
    if tasks is None:
        return [t for t in known if t in suite.tasks], False
    wanted = list(dict.fromkeys(t.strip() for t in tasks if t and t.strip()))
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise EvalError(f"unknown tasks {unknown}; known: {', '.join(known)}")
    if not wanted:
        raise EvalError("no tasks given")
    outside = [t for t in wanted if t not in suite.tasks]
    if outside:
        raise EvalError(
            f"suite {suite.name} has no task {', '.join(outside)} (its tasks: {', '.join(suite.tasks)})"
        )
    return [t for t in known if t in wanted], True


def _same_run(old: dict, new: dict) -> bool:
    old_model, new_model = old.get("model"), new.get("model")
    if not isinstance(old_model, dict) or not isinstance(new_model, dict):
        return False
    return (
        old.get("suite") == new.get("suite")
        and old.get("data") == new.get("data")
        and old.get("image_size") == new.get("image_size")
        and old.get("dataset") == new.get("dataset")
        and (old.get("num_train"), old.get("num_test")) == (new.get("num_train"), new.get("num_test"))
        and old_model.get("weights") == new_model.get("weights")
        and old_model.get("name") == new_model.get("name")
    )


def merge_results(old: dict, new: dict, ran: Iterable[str]) -> dict:
    """``new`` on top of ``old``: results of the tasks that ran now replace theirs in ``old`` (all keys
    of those tasks, so that a result the new run no longer produces does not linger); the others stay."""
    ran = set(ran)
    merged = dict(new)
    kept = {
        key: value
        for key, value in old.get("tasks", {}).items()
        if (value.get("protocol", {}) or {}).get("task") not in ran and key not in new["tasks"]
    }
    merged["tasks"] = {**kept, **new["tasks"]}
    merged["seconds"] = {**old.get("seconds", {}), **new.get("seconds", {})}
    merged["skipped"] = {
        **{k: v for k, v in old.get("skipped", {}).items() if k not in ran and k not in merged_tasks(merged)},
        **new.get("skipped", {}),
    }
    return merged


def merged_tasks(results: dict) -> set[str]:
    return {(v.get("protocol", {}) or {}).get("task") for v in results.get("tasks", {}).values()}


def evaluate(
    model,
    suite: str | None = None,
    data: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    tasks: Iterable[str] | None = None,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """Evaluates ``model`` on suite ``suite`` (a registered name, or None / "auto" to detect it from
    ``data``) at ``data`` (the dataset's root or file; unused by the built-in suite). ``options`` and
    keyword ``overrides``: any ``EvalOptions`` field. Returns the results dict and, with ``output_dir``,
    writes (or merges into) results.json / results.md there, plus pca.png / zeroshot_seg.png."""
    options = make_options(options, overrides)
    spec = find_suite(data) if suite in (None, "", "auto") else get_suite(suite)
    if spec.needs_root and not data:
        raise EvalError(f"suite {spec.name} needs --data (expected: {spec.layout})")
    if data and not Path(data).exists():
        raise EvalError(f"no such dataset: {data}")
    names, explicit = _plan(spec, tasks)
    from dataclasses import replace

    size = patch_aligned(options.image_size or model.cfg.image_size, model.vision.patch_size)
    options = replace(options, image_size=size)
    has_text = getattr(model, "text", None) is not None and getattr(model, "tokenizer", None) is not None
    skipped: dict[str, str] = {}
    for name in names:
        if get_task(name).text and not has_text:
            reason = "the model has no text tower or no tokenizer (a vision-only checkpoint)"
            if explicit:
                raise EvalError(f"task {name} needs text: {reason}")
            skipped[name] = reason
    try:
        loaded: EvalData = spec.load(Path(data) if data else None, options)
    except (FileNotFoundError, NotADirectoryError, KeyError, ValueError) as err:
        raise EvalError(f"suite {spec.name} at {data}: {err} (expected: {spec.layout})") from err
    for name in names:
        if name in skipped:
            continue
        reason = next((r for r in map(loaded.missing, get_task(name).needs) if r), None)
        if reason:
            if explicit:
                raise EvalError(f"task {name} cannot run on suite {spec.name}: {reason}")
            skipped[name] = reason
    for name, reason in skipped.items():
        log.info("skipping %s: %s", name, reason)

    ctx = Context(model, loaded, options)
    results: dict = {
        "suite": spec.name,
        "data": str(data) if data else "builtin",
        "model": model_identity(model, options),
        "image_size": ctx.size,
        "preprocessing": {"resolution": ctx.size, **FEATURE_PREPROCESSING},
        "dataset": loaded.info,
        "num_train": len(loaded.train) if loaded.train is not None else 0,
        "num_test": len(loaded.test),
        "tasks": {},
        "seconds": {},
        "skipped": skipped,
    }
    ran = [n for n in names if n not in skipped]
    with _eval_mode(model):
        for name in ran:
            start = time.perf_counter()
            before = ctx.seconds.get("features", 0.0)
            results["tasks"].update(get_task(name).run(ctx))
            spent = time.perf_counter() - start - (ctx.seconds.get("features", 0.0) - before)
            results["seconds"][name] = round(spent, 3)
        if "features" in ctx.seconds:
            results["seconds"]["features"] = ctx.seconds["features"]
        if output_dir is not None and options.pictures:
            start = time.perf_counter()
            _pictures(ctx, output_dir)
            results["seconds"]["pictures"] = round(time.perf_counter() - start, 3)
    if output_dir is not None:
        old_path = Path(output_dir) / "results.json"
        if options.merge and old_path.is_file():
            try:
                old = load_results(old_path)
            except (ValueError, OSError):
                old = None
            if old is not None and _same_run(old, results):
                results = merge_results(old, results, ran)
            elif old is not None:
                log.warning("%s holds results of another model / suite / data: replaced", old_path)
        write_results(results, output_dir)
    return results


def _pictures(ctx: Context, output_dir: str | os.PathLike) -> None:
    test = ctx.data.test
    count = min(ctx.options.num_pictures, len(test))
    if count == 0:
        return
    shown = [load_image(test.images[i]).convert("RGB") for i in range(count)]
    features = extract_features(
        ctx.model, shown, ctx.size, batch_size=count, device=ctx.device, value_trick=ctx.text, progress=False
    )
    masks = names = None
    if test.masks is not None and ctx.data.seg_names and ctx.text:
        masks = torch.stack([resize_mask(test.masks[i], ctx.size) for i in range(count)])
        names = ctx.data.seg_names
    write_report_pictures(
        ctx.model,
        shown,
        features,
        output_dir,
        masks=masks,
        class_names=names,
        templates=ctx.options.templates,
        background=ctx.options.zeroshot_background,
        threshold=ctx.options.zeroshot_threshold,
    )


# ------------------------------------------------------------------------------------------ shorthands


def _device_overrides(image_size, device, overrides: dict) -> dict:
    return {**overrides, "image_size": image_size, "device": str(device) if device is not None else None}


def evaluate_builtin(
    model,
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    num_train: int = 300,
    num_test: int = 200,
    tasks: Iterable[str] | None = None,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """The built-in procedural suite (what ``open-tips train`` runs at the end of a run)."""
    overrides = _device_overrides(image_size, device, overrides)
    overrides.update(seed=seed, num_train=num_train, num_test=num_test)
    return evaluate(model, "builtin", None, output_dir, tasks=tasks, options=options, **overrides)


def evaluate_coco(
    model,
    root: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    device: torch.device | str | None = None,
    tasks: Iterable[str] | None = None,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """A COCO-style root (``annotations/{instances,captions}_<split>.json`` + image folders)."""
    overrides = _device_overrides(image_size, device, overrides)
    return evaluate(model, "coco", root, output_dir, tasks=tasks, options=options, **overrides)


def evaluate_folder(
    model,
    path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    device: torch.device | str | None = None,
    tasks: Iterable[str] | None = None,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """Any layout ``find_suite`` recognises at ``path``."""
    overrides = _device_overrides(image_size, device, overrides)
    return evaluate(model, None, path, output_dir, tasks=tasks, options=options, **overrides)


def evaluate_path(
    model,
    data: str | os.PathLike | None = "builtin",
    output_dir: str | os.PathLike | None = None,
    *,
    suite: str | None = None,
    tasks: Iterable[str] | None = None,
    options: EvalOptions | None = None,
    **overrides,
) -> dict:
    """``data`` = "builtin" (or None / "") or a path; ``suite`` names the layout (default: detected)."""
    if not data or str(data) == "builtin":
        return evaluate(
            model, suite or "builtin", None, output_dir, tasks=tasks, options=options, **overrides
        )
    return evaluate(model, suite, data, output_dir, tasks=tasks, options=options, **overrides)
