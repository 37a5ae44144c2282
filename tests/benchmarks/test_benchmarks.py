"""Each benchmark's --quick mode runs and its sides agree (outputs, shapes): parity checks, not timings."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import COCO_MINI

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
needs_coco = pytest.mark.skipif(
    not (COCO_MINI / "train2017").is_dir(), reason=f"COCO-mini not found at {COCO_MINI}"
)


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_encode_quick_sides_agree(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "encode.json"
    result = load("encode").main(
        ["--quick", "--compile-backend", "eager", "--repeats", "1", "--json", str(out)]
    )
    (row,) = result["rows"]
    assert row["shapes"]["eager"] == row["shapes"]["hf"] == row["shapes"]["compiled"] == [2, 2 + 16, 64]
    assert max(row["rel_diff_vs_hf"].values()) < 1e-5  # same weights, same tokens
    assert set(row["ratio_vs_hf"]) == {"eager", "compiled"} and all(
        r > 0 for r in row["ratio_vs_hf"].values()
    )
    assert json.loads(out.read_text())["rows"][0]["size"] == 56


@needs_coco
def test_embed_folder_quick_sides_agree(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("OPEN_TIPS_COCO_MINI", str(COCO_MINI))
    result = load("embed_folder").main(["--quick", "--image-dir", str(COCO_MINI / "train2017")])
    assert (
        result["shapes"]["open_tips"]
        == result["shapes"]["transformers"]
        == {
            "cls_web": [8, 64],
            "cls_synthetic": [8, 64],
        }
    )
    assert result["same_order"]
    # the same weights and images; only the resize kernels differ (float vs uint8 bilinear)
    assert max(result["rel_diff"].values()) < 0.05


def test_train_step_quick_sides_agree(tmp_path):
    pytest.importorskip("open_clip")
    result = load("train_step").main(["--vs", "open_clip", "--quick", "--on-top", "+dual"])
    batch = result["batch"]
    for side, loss in result["first_loss"].items():  # both start near chance: log(batch) for InfoNCE
        assert 0.5 * math.log(batch) < loss < 2.0 * math.log(batch), side
    assert result["img_per_s"]["open_tips_clip"] > 0 and result["img_per_s"]["open_clip"] > 0
    assert result["on_top"]["+dual"]["step_time_vs_clip"] > 0


@needs_coco
def test_loader_quick_sides_agree(monkeypatch):
    monkeypatch.setenv("OPEN_TIPS_COCO_MINI", str(COCO_MINI))
    module = load("loader")
    monkeypatch.setattr(module, "COCO", COCO_MINI)
    result = module.main(["--quick"])
    assert result["shapes"]["open_tips"] == result["shapes"]["plain"]
    assert result["dtypes"]["open_tips"] == result["dtypes"]["plain"]
    assert result["shapes"]["open_tips"]["local_crops"] == [6 * 16, 3, 98, 98]
    assert result["samples_per_pass"]["open_tips"] == result["samples_per_pass"]["plain"] == 32


def run_gpu_script(out: Path, only: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(out), OPEN_TIPS_COCO_MINI=str(COCO_MINI), ONLY=only, PYTHON=sys.executable)
    command = ["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_dry_run_encode_and_train(tmp_path):
    """Two of its steps in tiny mode (the whole dry run is the slow test below)."""
    pytest.importorskip("transformers")
    proc = run_gpu_script(tmp_path / "out", only="encode_b14_448,train_tiny")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [row["step"] for row in summary["steps"]] == ["encode_b14_448", "train_tiny"]
    assert summary["failed"] == [], summary
    encode = json.loads((tmp_path / "out" / "encode_b14_448.json").read_text())
    assert max(encode["rows"][0]["rel_diff_vs_hf"].values()) < 2e-2  # bf16 autocast on both sides
    train = json.loads((tmp_path / "out" / "train_tiny.json").read_text())
    assert train["last_window"]["images_per_s"] > 0 and "tflops" in train["last_window"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_dry_run(tmp_path):
    pytest.importorskip("transformers")
    proc = run_gpu_script(tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    always = {
        "encode_b14_448",
        "encode_l14_448",
        "train_tiny",
        "train_tiny-tipsv2",
        "ema_memory",
        "fsdp_1gpu",
    }
    expected = set(always) | {"dtype_cpu"}
    if (COCO_MINI / "train2017").is_dir():
        expected.add("loader")
    failed = {row["step"]: row["log_tail"] for row in summary["steps"] if row["rc"]}
    assert not (failed.keys() & expected), failed
    for name in sorted(always):
        assert (tmp_path / "out" / f"{name}.json").exists(), name
