"""The inference commands on random-weight checkpoints and real COCO images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import open_tips
from open_tips.cli import main
from open_tips.inference.images import load_image
from open_tips.inference.zeroshot import class_embeddings, image_embedding, load_templates
from tests.helpers import make_tiny_checkpoint

COCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-mini" / "val2017"
CLASSES = "cat,dog,person,car,pizza"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for path in sorted(COCO.glob("*.jpg"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def _model(checkpoint):
    return open_tips.load_pretrained(checkpoint, config="tiny")


COMMON = ["--config", "tiny", "--device", "cpu", "--image-size", "56"]


def test_embed_npz_and_safetensors(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert main(["embed", str(images), "--checkpoint", str(checkpoint), "--output", str(out), "--patch-tokens",
                 "--batch-size", "2", *COMMON]) == 0
    assert "skipped 1" in capsys.readouterr().out
    data = np.load(out)
    assert data["cls_web"].shape == (3, 64) and data["patch_tokens"].shape == (3, 4, 4, 64)
    assert len(data["paths"]) == 3 and all("broken" not in p for p in data["paths"])
    model = _model(checkpoint)
    pixels, _ = load_image(Path(data["paths"][1]), 56)
    with torch.no_grad():
        direct = model.encode_image(pixels[None]).cls_web[0].numpy()
    assert np.allclose(data["cls_web"][1], direct, atol=1e-5)

    out_st = tmp_path / "emb.safetensors"
    assert main(["embed", str(images), "--checkpoint", str(checkpoint), "--output", str(out_st), "--normalize",
                 *COMMON]) == 0
    from safetensors.numpy import load_file

    loaded = load_file(str(out_st))
    assert np.allclose(np.linalg.norm(loaded["cls_synthetic"], axis=1), 1.0, atol=1e-5)


def test_zeroshot_matches_api(checkpoint, images, tmp_path):
    out = tmp_path / "zs.json"
    assert main(["zeroshot", str(images), "--checkpoint", str(checkpoint), "--classes", CLASSES, "--cls", "mean",
                 "--top-k", "5", "--output", str(out), *COMMON]) == 0
    results = json.loads(out.read_text())
    assert len(results["results"]) == 3 and len(results["skipped"]) == 1
    model = _model(checkpoint)
    names = CLASSES.split(",")
    classes = class_embeddings(model, names, load_templates("default"))
    for entry in results["results"]:
        probabilities = [r["probability"] for r in entry["ranked"]]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert probabilities == sorted(probabilities, reverse=True)
        pixels, _ = load_image(Path(entry["image"]), 56)
        with torch.no_grad():
            out = model.encode_image(pixels[None])
            scores = image_embedding(out.cls_web, out.cls_synthetic, "mean") @ classes.T
        assert entry["ranked"][0]["label"] == names[int(scores.argmax())]


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_zeroshot_seg_outputs(checkpoint, images, tmp_path, mode):
    out = tmp_path / mode
    assert main(["zeroshot-seg", str(images), "--checkpoint", str(checkpoint), "--classes", CLASSES,
                 "--mode", mode, "--window", "56", "--stride", "42", "--output-dir", str(out), *COMMON]) == 0
    label_files = sorted(out.glob("*_labels.png"))
    assert len(label_files) == 3 and len(list(out.glob("*_overlay.png"))) == 3
    labels = np.asarray(Image.open(label_files[0]))
    assert labels.max() < 5
    if mode == "whole":
        assert labels.shape == (56, 56)
        from open_tips.inference.dense import segmentation_logits

        model = _model(checkpoint)
        classes = class_embeddings(model, CLASSES.split(","), load_templates("default"))
        image_path = next(p for p in images.glob("*.jpg") if p.stem == label_files[0].stem.replace("_labels", ""))
        pixels, _ = load_image(image_path, 56)
        expected = segmentation_logits(model, pixels[None], classes)[0].argmax(0).numpy()
        assert np.array_equal(labels, expected)
    else:
        assert min(labels.shape) == 56 and max(labels.shape) > 56  # short side 56, aspect kept


def test_pca_picture(checkpoint, images, tmp_path):
    assert main(["pca", str(images), "--checkpoint", str(checkpoint), "--output-dir", str(tmp_path), *COMMON]) == 0
    pictures = sorted(tmp_path.glob("*_pca.png"))
    assert len(pictures) == 3
    picture = Image.open(pictures[0])
    assert picture.size == (112, 56)
    right = np.asarray(picture)[:, 56:]
    assert right.reshape(-1, 3).std(axis=0).min() > 0  # three varying components


def test_convert_round_trip(checkpoint, tmp_path):
    hf_dir = tmp_path / "hf"
    assert main(["convert", "--checkpoint", str(checkpoint), "--output", str(hf_dir), "--config", "tiny"]) == 0
    assert (hf_dir / "config.json").exists() and (hf_dir / "tokenizer.model").exists()
    assert main(["convert", "--checkpoint", str(hf_dir), "--output", str(tmp_path / "back" / "tips")]) == 0
    original, back = _model(checkpoint), open_tips.load_pretrained(tmp_path / "back" / "tips_vision.npz", config="tiny")
    pixels = torch.rand(1, 3, 70, 56)
    with torch.no_grad():
        assert torch.allclose(original.encode_image(pixels).patch_tokens, back.encode_image(pixels).patch_tokens,
                              atol=1e-5)
    assert back.tokenizer is not None
