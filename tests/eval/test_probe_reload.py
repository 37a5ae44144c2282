"""A probe fitted with `open-tips probe fit` on the built-in data, saved and reloaded, scores exactly what
`open-tips eval`'s segmentation probe scores on the same images: one protocol, not two."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from open_tips.cli import main
from open_tips.data.builtin import SHAPE_CLASSES
from open_tips.eval.suites.builtin import _split
from tests.helpers import make_tiny_checkpoint

NUM_TRAIN, NUM_TEST, EPOCHS, SEED = 24, 12, 4, 0
MODEL = ["--config", "tiny", "--device", "cpu", "--image-size", "56"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reload")
    (folder / "ckpt").mkdir()
    checkpoint = make_tiny_checkpoint(folder / "ckpt")
    # the built-in suite's splits, as `open-tips eval` generates them (seeds + 10000 / + 20000; samples at
    # 112 px for a 56 px run), written as lossless PNGs so the probe command reads the same pixels
    for name, seed, count in (("train", SEED + 10_000, NUM_TRAIN), ("test", SEED + 20_000, NUM_TEST)):
        split = _split(seed, count, 112, 0.5)
        (folder / name).mkdir()
        (folder / f"{name}_masks").mkdir()
        for index, (image, mask) in enumerate(zip(split.images, split.masks)):
            image.save(folder / name / f"{index:04d}.png")
            Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(
                folder / f"{name}_masks" / f"{index:04d}.png"
            )
    out = folder / "eval"
    args = ["eval", "--checkpoint", str(checkpoint), "--tasks", "seg", "--output", str(out), "--no-cache"]
    sizes = ["--num-train", str(NUM_TRAIN), "--num-test", str(NUM_TEST), "--probe-epochs", str(EPOCHS)]
    # batches of 8 images, as the probe command extracts features: the same float operations
    assert main([*args, *sizes, "--no-pictures", "--batch-size", "8", *MODEL]) == 0
    results = json.loads((out / "results.json").read_text())
    return folder, checkpoint, results


def test_reloaded_probe_reproduces_eval_miou(setup):
    from open_tips.commands.probe import _features, load_probe
    from open_tips.eval.dense_probe import predict_chunks
    from open_tips.eval.metrics import confusion_matrix, segmentation_metrics
    from open_tips.eval.segmentation import read_mask, resize_mask
    from open_tips.formats.load import load_pretrained

    folder, checkpoint, results = setup
    names = ["background", *SHAPE_CLASSES]
    probe_file = folder / "seg.safetensors"
    args = ["probe", "fit", "--task", "seg", "--images", str(folder / "train")]
    args += [
        "--targets",
        str(folder / "train_masks"),
        "--classes",
        ",".join(names),
        "--output",
        str(probe_file),
    ]
    assert (
        main([*args, "--checkpoint", str(checkpoint), "--epochs", str(EPOCHS), "--lr", "0.05", *MODEL]) == 0
    )

    probe, meta = load_probe(probe_file)
    assert meta["task"] == "seg" and meta["classes"] == names and meta["image_size"] == 56
    assert meta["layers"] == [1] and meta["with_cls"] is False and meta["images"] == NUM_TRAIN
    model = load_pretrained(checkpoint, config="tiny", device="cpu").eval()
    tests = sorted((folder / "test").glob("*.png"))
    features = _features(model, tests, 56, meta["layers"], meta["with_cls"], "cpu")
    masks = torch.stack([resize_mask(read_mask(folder / "test_masks" / p.name), 56) for p in tests])
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    for chunk, logits in predict_chunks(probe, features, tuple(masks.shape[1:])):
        confusion += confusion_matrix(logits.argmax(dim=1), masks[chunk], len(names))
    reloaded = segmentation_metrics(confusion)
    expected = results["tasks"]["seg"]
    assert reloaded["miou"] == expected["miou"]  # exactly: same features, same fit, same weights on disk
    assert reloaded["pixel_accuracy"] == expected["pixel_accuracy"]
    # not a degenerate agreement (a constant prediction scores the same under many probes): the probe
    # predicts several classes, so the numbers depend on its weights
    assert int((confusion.sum(dim=0) > 0).sum()) >= 2
