"""--dtype and --compile on the inference commands: outputs close to float32 and the precision recorded in
the files written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from open_tips.cli import main
from tests.cli.conftest import COMMON, NUM_IMAGES

# Largest relative error ||x - x_fp32|| / ||x_fp32|| accepted per output on the random tiny model. Measured:
# bf16 about 7e-3 (8-bit mantissa), fp16 about 9e-4 (11-bit); the bounds leave about 3x headroom.
TOLERANCE = {"bf16": 2e-2, "fp16": 3e-3}
KEYS = ("cls_web", "cls_synthetic", "patch_tokens")


def embed(checkpoint, images, out, *extra) -> dict:
    args = ["embed", str(images), "--checkpoint", str(checkpoint), "--output", str(out), "--patch-tokens"]
    assert main([*args, *COMMON, *extra]) == 0
    with safe_open(str(out), "np") as handle:
        return {"metadata": handle.metadata(), **{key: handle.get_tensor(key) for key in KEYS}}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def fp32(checkpoint, images, tmp_path_factory) -> dict:
    return embed(checkpoint, images, tmp_path_factory.mktemp("fp32") / "e.safetensors")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_embed_reduced_precision_close_to_fp32(checkpoint, images, tmp_path, fp32, dtype, capsys):
    half = embed(checkpoint, images, tmp_path / "e.safetensors", "--dtype", dtype)
    assert f"dtype {dtype}" in capsys.readouterr().out
    assert half["metadata"]["dtype"] == dtype and half["metadata"]["compile"] == "false"
    assert fp32["metadata"]["dtype"] == "fp32"
    for key in KEYS:
        assert half[key].dtype == np.float32  # written as float32 whatever the compute type
        assert half[key].shape == fp32[key].shape
        error = relative(half[key], fp32[key])
        # above zero: the weights really ran in the reduced type
        assert 0 < error <= TOLERANCE[dtype], (key, error)


def test_embed_npz_records_dtype(checkpoint, images, tmp_path):
    out = tmp_path / "e.npz"
    args = ["embed", str(images), "--checkpoint", str(checkpoint), "--output", str(out), "--dtype", "bf16"]
    assert main([*args, *COMMON]) == 0
    data = np.load(out)
    assert str(data["dtype"]) == "bf16" and str(data["compile"]) == "false"
    assert data["cls_web"].shape == (NUM_IMAGES, 64)


def test_zeroshot_bf16_probabilities_close(checkpoint, images, tmp_path):
    results = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / f"{dtype}.json"
        args = ["zeroshot", str(images), "--checkpoint", str(checkpoint), "--classes", "cat,dog,car,pizza"]
        assert main([*args, "--output", str(out), "--dtype", dtype, *COMMON]) == 0
        results[dtype] = json.loads(out.read_text())
    assert results["bf16"]["dtype"] == "bf16" and results["fp32"]["dtype"] == "fp32"
    for full, half in zip(results["fp32"]["results"], results["bf16"]["results"]):
        want = {r["label"]: r["probability"] for r in full["ranked"]}
        got = {r["label"]: r["probability"] for r in half["ranked"]}
        assert got.keys() == want.keys()
        # logits = cosine / 0.0123 amplify the bf16 error of the cosines (about 1e-3) about 80 times
        assert max(abs(got[k] - want[k]) for k in want) <= 0.05


def test_compile_runs_compiled_towers(checkpoint, images, tmp_path, fp32, monkeypatch):
    """--compile wraps the towers in torch.compile; dynamo captures them (backend "eager" here, so the test
    does not spend a minute in the C++ compiler) and the outputs equal the uncompiled ones."""
    calls = []
    real = torch.compile

    def counting(fn, **kwargs):
        calls.append(getattr(fn, "__name__", type(fn).__name__))
        return real(fn, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", counting)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    got = embed(checkpoint, images, tmp_path / "c.safetensors", "--compile")
    assert "forward_tokens" in calls
    assert counters["stats"]["unique_graphs"] >= 1  # a graph was captured, not a silent fallback
    assert got["metadata"]["compile"] == "true"
    for key in KEYS:
        np.testing.assert_allclose(got[key], fp32[key], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compile_inductor_bf16(checkpoint, images, tmp_path, fp32):
    """The real compiler (inductor, about a minute on two CPU cores) in bf16."""
    torch._dynamo.reset()
    got = embed(checkpoint, images, tmp_path / "c.safetensors", "--compile", "--dtype", "bf16")
    assert (got["metadata"]["dtype"], got["metadata"]["compile"]) == ("bf16", "true")
    for key in KEYS:
        assert relative(got[key], fp32[key]) <= TOLERANCE["bf16"], key


def test_eval_bf16_keeps_its_own_cache_and_identity(checkpoint, tmp_path):
    """`open-tips eval --dtype bf16`: every task runs on the cast tower; its features get their own cache
    entries (not the fp32 ones) and results.json tells the two models apart (weights digest)."""
    out, cache = tmp_path / "eval", tmp_path / "cache"
    base = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--config",
        "tiny",
        "--device",
        "cpu",
        "--image-size",
        "56",
    ]
    base += ["--num-train", "16", "--num-test", "8", "--tasks", "knn,seg", "--probe-epochs", "2"]
    base += ["--no-pictures", "--cache-dir", str(cache)]
    results = {}
    for dtype in ("fp32", "bf16"):
        assert main([*base, "--output", str(out / dtype), "--dtype", dtype]) == 0
        results[dtype] = json.loads((out / dtype / "results.json").read_text())
        if dtype == "fp32":
            fp32_entries = set(cache.rglob("*"))
            assert fp32_entries  # features were cached
    assert set(cache.rglob("*")) > fp32_entries  # bf16 wrote new entries instead of reading fp32's
    assert results["bf16"]["model"]["weights"] != results["fp32"]["model"]["weights"]
    assert results["bf16"]["model"]["fingerprint"] != results["fp32"]["model"]["fingerprint"]
    for task, metric in (("knn", "top5"), ("seg", "pixel_accuracy")):
        assert abs(results["bf16"]["tasks"][task][metric] - results["fp32"]["tasks"][task][metric]) <= 0.25
