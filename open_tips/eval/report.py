"""Evaluation reports: ``results.json`` + ``results.md`` per run, and a side-by-side table of several runs.

results.json layout::

    {"suite": "builtin" | "coco" | "flickr30k" | ..., "data": str,
     "model": {"name", "architecture", "parameters", "weights" (digest), "checkpoint", ...},
     "image_size": int, "preprocessing": {...}, "dataset": {layout, label mapping, ...},
     "tasks": {key: {metric: float, ..., "settings": {...}, "protocol": {"task", "cls", "templates", ...}}},
     "seconds": {task: float}, "skipped": {task: reason}}

Metric values are floats; ``settings`` (the hyperparameters a task used or chose) and ``protocol`` (how
the number was made: resize rule, resample, resolution, which CLS, templates) are kept in the JSON; the
Markdown lists the protocol under the table, and ``compare`` shows it as one row per result.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from open_tips.eval.metrics import LOWER_IS_BETTER

META_KEYS = ("suite", "data", "image_size", "num_train", "num_test")


def model_name(results: Mapping) -> str:
    model = results.get("model")
    if isinstance(model, Mapping):
        return str(model.get("name", "?"))
    return str(model) if model is not None else "?"


def protocol_text(protocol: Mapping | None, common: Mapping | None = None) -> str:
    """``key=value; ...`` of a result's protocol (the task name, and items equal to ``common``, left out)."""
    if not protocol:
        return "-"
    common = common or {}
    items = [f"{k}={v}" for k, v in protocol.items() if k != "task" and common.get(k, object()) != v]
    return "; ".join(items) or "as the features"


def flatten(results: Mapping) -> dict[str, float]:
    """{"task/metric": value} over the numeric metrics of every task (``settings`` left out)."""
    flat: dict[str, float] = {}
    for task, metrics in results.get("tasks", {}).items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{task}/{name}"] = float(value)
    return flat


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.4f}"


def markdown_table(results: Mapping) -> str:
    """One row per task, one column per metric name in the task (a compact table of all results)."""
    meta = ", ".join(f"{k} {results[k]}" for k in META_KEYS if k in results and k != "suite")
    lines = [
        f"# Evaluation: {results.get('suite', '?')} suite",
        "",
        f"model {model_name(results)}, {meta}",
        "",
    ]
    lines += ["| task | metric | value |", "| --- | --- | --- |"]
    for key, value in flatten(results).items():
        task, metric = key.split("/", 1)
        lines.append(f"| {task} | {metric} | {_fmt(value)} |")
    model = results.get("model")
    if isinstance(model, Mapping):
        lines += ["", "## Model", ""] + [f"- {k}: {v}" for k, v in model.items()]
    if results.get("preprocessing"):
        lines += ["", "## Preprocessing (features)", ""]
        lines += [f"- {k}: {v}" for k, v in results["preprocessing"].items()]
    protocols = {k: m.get("protocol") for k, m in results.get("tasks", {}).items() if m.get("protocol")}
    if protocols:
        lines += ["", "## Protocol per result", ""] + [
            f"- {k}: {protocol_text(p)}" for k, p in protocols.items()
        ]
    if results.get("dataset"):
        lines += ["", "## Dataset", ""] + [f"- {k}: {v}" for k, v in results["dataset"].items()]
    if results.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()]
    seconds = results.get("seconds")
    if seconds:
        lines += ["", "Seconds per task: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())]
    return "\n".join(lines) + "\n"


def _json_default(value: object) -> object:
    if hasattr(value, "item"):  # tensors / numpy scalars
        return value.item()
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in results.json")


def write_results(results: Mapping, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``results.json`` and ``results.md`` into ``output_dir``; returns their paths. NaN is stored
    as null (valid JSON) and read back as NaN by ``load_results``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(_nan_to_none(results), indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown_table(results))
    return json_path, md_path


def _nan_to_none(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def _none_to_nan(results: dict) -> dict:
    for metrics in results.get("tasks", {}).values():
        for name, value in list(metrics.items()):
            if value is None:
                metrics[name] = math.nan
    return results


def load_results(path: str | os.PathLike) -> dict:
    """A results.json, or a directory holding one (directly, or in its ``eval/``, as a training run)."""
    path = Path(path)
    for candidate in (path, path / "results.json", path / "eval" / "results.json"):
        if candidate.is_file():
            return _none_to_nan(json.loads(candidate.read_text()))
    raise FileNotFoundError(f"no results.json at {path} (nor in {path / 'eval'})")


def _run_names(paths: Sequence[str]) -> list[str]:
    """The shortest distinct trailing parts of the paths, after dropping a trailing ``results.json`` and a
    trailing ``eval`` (a training run's evaluation folder): "runs/a/eval", "runs/b" -> "a", "b"."""
    parts = []
    for p in paths:
        items = list(Path(p).parts)
        if len(items) > 1 and items[-1] == "results.json":
            items = items[:-1]
        if len(items) > 1 and items[-1] == "eval":
            items = items[:-1]
        parts.append(items or [str(p)])
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{i}:{p}" for i, p in enumerate(paths)]


def compare(runs: Sequence[str | os.PathLike | Mapping], names: Sequence[str] | None = None) -> str:
    """A Markdown table, one row per metric and one column per run (results.json paths, run directories or
    results dicts); the best value of each row is in bold (the smallest for errors such as RMSE)."""
    loaded = [load_results(r) if not isinstance(r, Mapping) else dict(r) for r in runs]
    if names is None:
        path_names = _run_names([str(r) for r in runs if not isinstance(r, Mapping)])
        path_iter = iter(path_names)
        names = [
            next(path_iter) if not isinstance(r, Mapping) else (model_name(r) if "model" in r else f"run {i}")
            for i, r in enumerate(runs)
        ]
    flats = [flatten(r) for r in loaded]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))  # first-seen order: tasks stay grouped
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(flats)]
    lines.append("| *model* | " + " | ".join(model_name(r) for r in loaded) + " |")
    for key in ("suite", "data", "image_size"):
        if any(key in r for r in loaded):
            lines.append(f"| *{key}* | " + " | ".join(str(r.get(key, "-")) for r in loaded) + " |")
    for key in keys:
        values = [flat.get(key) for flat in flats]
        present = [v for v in values if v is not None and not math.isnan(v)]
        best = None
        if len(present) > 1 and len(set(present)) > 1:
            best = min(present) if key.rsplit("/", 1)[-1] in LOWER_IS_BETTER else max(present)
        cells = [f"**{_fmt(v)}**" if v is not None and v == best else _fmt(v) for v in values]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    result_keys = list(dict.fromkeys(k for r in loaded for k in r.get("tasks", {})))
    for key in result_keys:
        cells = [protocol_text(r.get("tasks", {}).get(key, {}).get("protocol")) for r in loaded]
        if any(c != "-" for c in cells):
            lines.append(f"| *protocol: {key}* | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"
