"""`open-tips dense` (and `probe`) in a subprocess on real COCO-mini images with random tiny weights:
files, shapes, value conventions, agreement with the ``predict_dense`` API, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import open_tips
from open_tips.formats.dpt import load_dense_heads, save_dense_heads, write_scenic_zip
from open_tips.inference.images import load_image
from open_tips.models.dpt import default_layers
from tests import COCO_MINI
from tests.cli.conftest import good_images, open_rgb
from tests.models.test_dpt import random_decoders

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--config", "tiny", "--device", "cpu", "--image-size", "56"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "open_tips.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def heads(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """A depth decoder as an official Scenic zip and normals + 150-class segmentation in one open_tips file,
    all on the tiny tower's blocks."""
    folder = tmp_path_factory.mktemp("heads")
    decoders = random_decoders(64, default_layers(2), channels=32, num_classes=150, seed=3)
    write_scenic_zip(decoders["depth"], folder / "tips_v2_tiny_depth_dpt.zip")
    save_dense_heads(folder / "heads.safetensors", {k: decoders[k] for k in ("normals", "segmentation")})
    narrow = random_decoders(32, default_layers(2), channels=16, seed=4)["depth"]
    write_scenic_zip(narrow, folder / "narrow_depth_dpt.zip")
    (folder / "broken_dpt.zip").write_bytes(b"PK\x03\x04 truncated")
    return {
        "zip": folder / "tips_v2_tiny_depth_dpt.zip",
        "file": folder / "heads.safetensors",
        "narrow": folder / "narrow_depth_dpt.zip",
        "broken": folder / "broken_dpt.zip",
    }


def test_dense_writes_every_output(checkpoint, heads, images, tmp_path):
    out = tmp_path / "dense"
    run = cli(
        "dense", str(images), "--checkpoint", str(checkpoint), "--heads", str(heads["zip"]), str(heads["file"]),
        "--tasks", "depth,normals,seg", "--output-dir", str(out), *TINY,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "skipped 1 unreadable image" in run.stdout
    assert "100%" in run.stderr and "dense" in run.stderr  # the progress bar
    model = open_tips.load_pretrained(checkpoint, config="tiny", device="cpu")
    decoders = load_dense_heads([heads["zip"], heads["file"]], backbone_depth=2)
    for path in good_images(images):
        height, width = open_rgb(path).height, open_rgb(path).width
        depth = np.load(out / f"{path.stem}_depth.npy")
        assert depth.dtype == np.float32 and depth.shape == (height, width)
        assert 0.001 - 1e-6 <= depth.min() and depth.max() <= 10.0
        png = np.asarray(Image.open(out / f"{path.stem}_depth.png"))
        assert png.shape == (height, width) and png.dtype in (np.uint16, np.int32)
        assert np.array_equal(png.astype(np.int64), np.round(depth * 1000).astype(np.int64))  # millimetres
        normals = Image.open(out / f"{path.stem}_normals.png")
        assert normals.mode == "RGB" and normals.size == (width, height)
        unit = np.asarray(normals).astype(np.float64) / 127.5 - 1.0
        assert np.abs(np.linalg.norm(unit, axis=-1) - 1.0).mean() < 0.02  # (n + 1) / 2 * 255 of unit vectors
        labels_png = Image.open(out / f"{path.stem}_labels.png")
        assert labels_png.mode == "P" and labels_png.size == (width, height)
        labels = np.asarray(labels_png)
        assert labels.max() < 150
        meta = json.loads((out / f"{path.stem}_labels.json").read_text())
        assert len(meta["classes"]) == 150 and meta["classes"][0] == "wall"  # ADE20K names built in
        overlay = Image.open(out / f"{path.stem}_overlay.png")
        assert overlay.height >= 256 + 28 and overlay.width >= 2 * 256
        summary = Image.open(out / f"{path.stem}_dense.png")
        assert summary.height >= 256 and summary.width >= 4 * 256  # image + three outputs
        # the command's files agree with the API on the same input
        pixels, _ = load_image(path, 56)
        with torch.no_grad():
            api = model.predict_dense(pixels[None], decoders, size=(height, width))
        assert np.allclose(api["depth"][0].numpy(), depth, atol=1e-4)
        assert (api["segmentation"][0].numpy() == labels).mean() > 0.999
    assert not list(out.glob("broken*"))


@pytest.mark.parametrize(
    ("heads_key", "extra", "message"),
    [
        ("missing", [], "decoder checkpoint not found"),
        ("broken", [], "broken_dpt.zip: not a readable zip"),
        ("narrow", [], "expects tower width 32, the checkpoint has width 64"),
        ("zip", ["--tasks", "depth,edges"], "unknown dense task 'edges'"),
        ("zip", ["--tasks", "normals"], "no normals decoder in"),
    ],
)
def test_dense_bad_input_is_one_line(checkpoint, heads, images, tmp_path, heads_key, extra, message):
    path = heads.get(heads_key, tmp_path / "absent_dpt.zip")
    run = cli(
        "dense", str(good_images(images)[0]), "--checkpoint", str(checkpoint), "--heads", str(path),
        "--output-dir", str(tmp_path / "o"), *TINY, *extra,
    )  # fmt: skip
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], run.stderr


COCO_ANN = COCO_MINI / "annotations" / "instances_val2017.json"


def test_probe_fit_apply_and_refusal(checkpoint, tmp_path):
    if not COCO_ANN.is_file():
        pytest.skip("COCO-mini annotations not found")
    from open_tips.commands.probe import load_probe
    from open_tips.inference.dense_heads import backbone_identity

    folder = tmp_path / "imgs"
    folder.mkdir()
    for path in sorted((COCO_ANN.parent.parent / "val2017").glob("*.jpg"))[:10]:
        (folder / path.name).write_bytes(path.read_bytes())
    probe_path = tmp_path / "fg.safetensors"
    run = cli(
        "probe", "fit", "--task", "fg", "--images", str(folder), "--coco", str(COCO_ANN), "--output",
        str(probe_path), "--checkpoint", str(checkpoint), *TINY, "--epochs", "3", "--val-fraction", "0.3",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "held-out" in run.stdout and "miou" in run.stdout
    probe, meta = load_probe(probe_path)
    model = open_tips.load_pretrained(checkpoint, config="tiny", device="cpu")
    assert meta["task"] == "fg" and meta["classes"] == ["background", "foreground"]
    assert meta["image_size"] == 56 and meta["layers"] == [1] and meta["with_cls"] is False
    assert meta["backbone"] == backbone_identity(model)
    assert probe.head.out_channels == 2 and probe.head.in_channels == 64
    image = sorted(folder.glob("*.jpg"))[0]
    run = cli(
        "probe", "apply", str(image), "--probe", str(probe_path), "--output-dir", str(tmp_path / "o"),
        "--checkpoint", str(checkpoint), *TINY,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    labels = np.asarray(Image.open(tmp_path / "o" / f"{image.stem}_labels.png"))
    assert labels.shape == (open_rgb(image).height, open_rgb(image).width) and labels.max() <= 1
    assert Image.open(tmp_path / "o" / f"{image.stem}_probe.png").height >= 256
    # another backbone (same architecture, other weights) is refused with one clear line
    from tests.helpers import write_official_npz

    other, _, _ = write_official_npz(tmp_path, open_tips.get_config("tiny"), stem="other", seed=99)
    run = cli(
        "probe", "apply", str(image), "--probe", str(probe_path), "--output-dir", str(tmp_path / "o2"),
        "--checkpoint", str(other), *TINY,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "fitted on another backbone" in run.stderr and str(probe_path) in run.stderr
