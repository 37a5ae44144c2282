"""results.json + a Markdown table per evaluation; side-by-side comparison of several runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

# For each metric, whether larger is better (used to mark the best run in comparisons).
LOWER_IS_BETTER = ("rmse", "abs_rel", "angular_rmse", "angular_mean")


def flatten(results: dict) -> dict[str, float]:
    flat = {}
    for task, metrics in results.get("tasks", {}).items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                flat[f"{task}/{name}"] = float(value)
    return flat


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"


def markdown_table(results: dict) -> str:
    lines = [f"# Evaluation: {results.get('suite', '?')} suite", "",
             f"model: `{results.get('model', '?')}`, image size {results.get('image_size', '?')}", "",
             "| task | metric | value |", "| --- | --- | --- |"]
    for key, value in flatten(results).items():
        task, metric = key.split("/", 1)
        lines.append(f"| {task} | {metric} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def write_results(results: dict, output_dir: str | Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    md_path.write_text(markdown_table(results))
    return json_path, md_path


def load_results(path: str | Path) -> dict:
    """A results.json, or a directory holding one (directly, in eval/ or in a run's eval/)."""
    path = Path(path)
    for candidate in (path, path / "results.json", path / "eval" / "results.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise FileNotFoundError(f"no results.json at {path}")


def compare(paths: list[str | Path]) -> str:
    runs = [(str(p), flatten(load_results(p))) for p in paths]
    keys = sorted({k for _, flat in runs for k in flat})
    header = "| metric | " + " | ".join(Path(name).name or name for name, _ in runs) + " |"
    lines = [header, "|" + " --- |" * (len(runs) + 1)]
    for key in keys:
        values = [flat.get(key) for _, flat in runs]
        present = [v for v in values if v is not None and not math.isnan(v)]
        best = None
        if len(present) > 1:
            best = min(present) if key.split("/")[-1] in LOWER_IS_BETTER else max(present)
        cells = [(f"**{_fmt(v)}**" if v is not None and v == best else _fmt(v)) for v in values]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
