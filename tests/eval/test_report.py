"""results.json / results.md and the side-by-side comparison."""

import json
import math

from open_tips.eval.report import compare, flatten, load_results, markdown_table, write_results


def test_write_load_and_markdown(tmp_path):
    results = {
        "suite": "builtin",
        "image_size": 56,
        "tasks": {
            "seg": {"miou": 0.5, "pixel_accuracy": math.nan},
            "knn": {"top1": 0.25, "settings": {"k": 20}},
        },
        "seconds": {"seg": 1.25},
    }
    json_path, md_path = write_results(results, tmp_path / "run")
    stored = json.loads(json_path.read_text())  # strict JSON: NaN stored as null
    assert stored["tasks"]["seg"]["pixel_accuracy"] is None and stored["tasks"]["knn"]["settings"] == {
        "k": 20
    }
    loaded = load_results(tmp_path / "run")
    assert math.isnan(loaded["tasks"]["seg"]["pixel_accuracy"])
    assert flatten(loaded) == {
        "seg/miou": 0.5,
        "seg/pixel_accuracy": loaded["tasks"]["seg"]["pixel_accuracy"],
        "knn/top1": 0.25,
    }
    text = md_path.read_text()
    assert text.startswith("# Evaluation: builtin suite") and "| seg | miou | 0.5000 |" in text
    assert "| seg | pixel_accuracy | - |" in text and "settings" not in text and "seg 1.2" in text
    assert markdown_table(results) == text


def test_compare_marks_best_per_direction(tmp_path):
    a = {"suite": "builtin", "tasks": {"seg": {"miou": 0.5}, "depth": {"rmse": 1.0}}}
    b = {"suite": "builtin", "tasks": {"seg": {"miou": 0.7}, "depth": {"rmse": 2.0}, "knn": {"top1": 0.3}}}
    write_results(a, tmp_path / "x" / "eval")
    write_results(b, tmp_path / "y" / "eval")
    table = compare([tmp_path / "x" / "eval", tmp_path / "y"])  # an eval dir, or the run dir above it
    lines = table.splitlines()
    assert lines[0] == "| metric | x | y |"
    assert "| seg/miou | 0.5000 | **0.7000** |" in table
    assert "| depth/rmse | **1.0000** | 2.0000 |" in table  # lower is better
    assert "| knn/top1 | - | 0.3000 |" in table  # one value: nothing to mark
    assert "| seg/miou | 0.5000 | 0.7000 |" in compare([a, b], names=["a", "b"]).replace("**", "")
