"""`open-tips zeroshot-seg`, `pca` and `convert` on a random tiny checkpoint and real COCO images."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import open_tips
from open_tips.cli import main
from open_tips.inference.dense import window_starts
from open_tips.inference.zeroshot import TIPS_TEMPLATES, class_embeddings
from tests.cli.conftest import COMMON, good_images, notebook_pixels, open_rgb, square_pixels

CLASSES = ["cat", "dog", "person", "car", "pizza"]


def test_zeroshot_seg_whole_matches_direct_argmax(checkpoint, model, images, tmp_path, capsys):
    out = tmp_path / "seg"
    assert (
        main(
            [
                "zeroshot-seg",
                str(images),
                "--checkpoint",
                str(checkpoint),
                "--classes",
                ",".join(CLASSES),
                "--output-dir",
                str(out),
                *COMMON,
            ]
        )
        == 0
    )
    assert "skipped 1 unreadable image" in capsys.readouterr().out
    classes = class_embeddings(model, CLASSES, TIPS_TEMPLATES)
    for path in good_images(images):
        label_png = Image.open(out / f"{path.stem}_labels.png")
        assert label_png.mode == "P"  # palette image: viewers show colours, readers get class indices
        labels = np.asarray(label_png)
        assert labels.dtype == np.uint8 and labels.max() < len(CLASSES)
        assert labels.shape == (open_rgb(path).height, open_rgb(path).width)  # the original resolution
        meta = json.loads((out / f"{path.stem}_labels.json").read_text())
        assert meta["classes"] == CLASSES and meta["mode"] == "whole"
        overlay = Image.open(out / f"{path.stem}_overlay.png")
        assert overlay.width == 2 * labels.shape[1] and overlay.height > labels.shape[0]
        # the protocol written out: value-trick patches, cosine, bilinear to the original size, argmax
        pixels, size = notebook_pixels(path, 56)
        with torch.no_grad():
            dense = F.normalize(model.vision.forward_value_trick(pixels).patch_tokens[0], dim=-1)
        cosine = torch.einsum("hwd,cd->chw", dense, classes)
        expected = F.interpolate(cosine[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
        assert np.array_equal(labels, expected.numpy())


def test_zeroshot_seg_slide_and_square(checkpoint, images, tmp_path):
    path = good_images(images)[0]
    width, height = open_rgb(path).size
    assert (
        main(
            [
                "zeroshot-seg",
                str(path),
                "--checkpoint",
                str(checkpoint),
                "--classes",
                ",".join(CLASSES),
                "--mode",
                "slide",
                "--output-dir",
                str(tmp_path / "slide"),
                *COMMON,
            ]
        )
        == 0
    )
    labels = np.asarray(Image.open(tmp_path / "slide" / f"{path.stem}_labels.png"))
    assert labels.shape == (height, width) and labels.max() < len(CLASSES)
    meta = json.loads((tmp_path / "slide" / f"{path.stem}_labels.json").read_text())
    assert min(meta["input_size"]) == 56 and meta["mode"] == "slide"
    assert (
        main(
            [
                "zeroshot-seg",
                str(path),
                "--checkpoint",
                str(checkpoint),
                "--classes",
                ",".join(CLASSES),
                "--no-keep-aspect",
                "--output-dir",
                str(tmp_path / "square"),
                *COMMON,
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "square" / f"{path.stem}_labels.json").read_text())["input_size"] == [
        56,
        56,
    ]


def _notebook_slide(
    model, image: torch.Tensor, classes: torch.Tensor, side: int, stride: int
) -> torch.Tensor:
    """The notebook's predict_slide, written out: per window, cosines upsampled to the window, softmax over
    classes (no temperature), summed and divided by the number of windows covering each pixel."""
    _, height, width = image.shape
    probs, counts = torch.zeros(len(classes), height, width), torch.zeros(height, width)
    for i in range(max(height - side + stride - 1, 0) // stride + 1):
        for j in range(max(width - side + stride - 1, 0) // stride + 1):
            y2, x2 = min(i * stride + side, height), min(j * stride + side, width)
            y1, x1 = max(y2 - side, 0), max(x2 - side, 0)
            crop = image[None, :, y1:y2, x1:x2]
            aligned = [-(-s // 14) * 14 for s in crop.shape[-2:]]
            if aligned != list(crop.shape[-2:]):
                crop = F.interpolate(crop, size=aligned, mode="bicubic", align_corners=False)
            with torch.no_grad():
                dense = F.normalize(model.vision.forward_value_trick(crop).patch_tokens[0], dim=-1)
            cosine = torch.einsum("cd,hwd->chw", classes, dense)
            cosine = F.interpolate(
                cosine[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False
            )[0]
            probs[:, y1:y2, x1:x2] += cosine.softmax(dim=0)
            counts[y1:y2, x1:x2] += 1
    return probs / counts


def test_sliding_window_matches_notebook(checkpoint, model, images, tmp_path):
    from open_tips.inference.dense import sliding_window_probs
    from open_tips.inference.images import load_image_short_side

    path = good_images(images)[-1]  # the portrait photo
    classes = class_embeddings(model, CLASSES, TIPS_TEMPLATES)
    pixels, image = load_image_short_side(path, 70)
    expected = _notebook_slide(model, pixels, classes, side=56, stride=42)  # 70 x 93: 2 x 2 windows
    torch.testing.assert_close(
        sliding_window_probs(model, pixels[None], classes, 56, 42, batch_size=3),
        expected,
        atol=1e-5,
        rtol=1e-5,
    )
    assert (
        main(
            [
                "zeroshot-seg",
                str(path),
                "--checkpoint",
                str(checkpoint),
                "--classes",
                ",".join(CLASSES),
                "--mode",
                "slide",
                "--window",
                "56",
                "--stride",
                "42",
                "--output-dir",
                str(tmp_path),
                *COMMON[:-1],
                "70",
            ]
        )
        == 0
    )
    labels = np.asarray(Image.open(tmp_path / f"{path.stem}_labels.png"))
    direct = F.interpolate(expected[None], size=labels.shape, mode="bilinear", align_corners=False)[0].argmax(
        0
    )
    assert (labels != direct.numpy()).mean() < 1e-3  # equal up to float near-ties (windows run batched)


@pytest.mark.parametrize("length", [40, 56, 60, 100, 448, 597, 784, 785])
def test_window_starts_follow_the_notebook_grid(length):
    window, stride = 56, 42
    # the notebook: ceil((L - window) / stride) + 1 windows at i * stride, the last one moved back to the border
    grids = max(length - window + stride - 1, 0) // stride + 1
    expected = [max(min(i * stride + window, length) - window, 0) for i in range(grids)]
    starts = window_starts(length, window, stride)
    assert starts == expected
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered.all() and starts[-1] == max(length - window, 0)


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_pca_pictures(checkpoint, model, images, tmp_path, keep_aspect):
    extra = ["--keep-aspect"] if keep_aspect else []
    assert (
        main(
            [
                "pca",
                str(images),
                "--checkpoint",
                str(checkpoint),
                "--output-dir",
                str(tmp_path),
                *extra,
                *COMMON,
            ]
        )
        == 0
    )
    pictures = {p.name: p for p in tmp_path.glob("*_pca.png")}
    assert sorted(pictures) == [f"{p.stem}_pca.png" for p in good_images(images)]
    for path in good_images(images):
        picture = np.asarray(Image.open(pictures[f"{path.stem}_pca.png"]))
        image = open_rgb(path)
        if keep_aspect:  # short side 56, long side rounded to a multiple of 14
            long_side = round(56 * max(image.size) / min(image.size) / 14) * 14
            expected = (56, long_side) if image.width > image.height else (long_side, 56)
        else:
            expected = (56, 56)
        assert picture.shape == (expected[0], 2 * expected[1], 3)
        right = picture[:, expected[1] :].reshape(-1, 3)
        assert (right.min(axis=0) == 0).all() and (right.max(axis=0) == 255).all()  # min-max scaled each
    if not keep_aspect:  # nearest upsampling: each 14 x 14 patch is one colour, the component of that patch
        path = good_images(images)[0]
        picture = np.asarray(Image.open(pictures[f"{path.stem}_pca.png"]))[:, 56:].astype(float)
        with torch.no_grad():
            patches = model.encode_image(square_pixels(path, 56)).patch_tokens[0].reshape(16, -1)
        centred = patches - patches.mean(dim=0)
        first = (centred @ torch.linalg.svd(centred, full_matrices=False)[2][0]).numpy()
        red = picture[7::14, 7::14, 0].reshape(-1)
        assert abs(np.corrcoef(red, first)[0, 1]) > 0.999  # up to the sign of the component


def test_convert_round_trip(checkpoint, model, tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(checkpoint),
                "--output",
                str(hf_dir),
                "--config",
                "tiny",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "max relative error" in capsys.readouterr().out
    assert {p.name for p in hf_dir.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.model",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "processor_config.json",
    }
    back = tmp_path / "back"
    back.mkdir()
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(hf_dir),
                "--output",
                str(back / "tips_vision.npz"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )  # heads come from config.json; the npz stem is taken from the name
    assert {p.name for p in back.iterdir()} == {"tips_vision.npz", "tips_text.npz", "tokenizer.model"}
    again = open_tips.load_pretrained(back / "tips_vision.npz", config="tiny")
    assert again.tokenizer is not None
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 70, 56)
    ids, padding = model.tokenizer(["a photo of a cat", "a dog"])
    with torch.no_grad():
        a, b = model.encode_image(pixels), again.encode_image(pixels)
        for key in ("cls_web", "cls_synthetic", "patch_tokens"):
            torch.testing.assert_close(getattr(b, key), getattr(a, key), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            again.encode_text(ids, padding), model.encode_text(ids, padding), atol=1e-5, rtol=1e-5
        )
    assert float(again.temperature.detach()) == pytest.approx(float(model.temperature.detach()), rel=1e-6)


def test_convert_compares_what_a_user_would_load(checkpoint, tmp_path, capsys, monkeypatch):
    """HF -> npz without --config: the npz records the 4 heads, so the reloaded model is the same; when the
    record is suppressed (as a writer without it would), the reload gets 1 head and convert fails."""
    hf_dir = tmp_path / "hf"
    assert (
        main(["convert", "--checkpoint", str(checkpoint), "--output", str(hf_dir), "--config", "tiny"]) == 0
    )
    assert main(["convert", "--checkpoint", str(hf_dir), "--output", str(tmp_path / "ok_vision.npz")]) == 0
    assert open_tips.load_pretrained(tmp_path / "ok_vision.npz").cfg.vision.heads == 4
    import open_tips.formats.official as official

    monkeypatch.setattr(official, "needs_metadata", lambda *a: False)
    capsys.readouterr()
    assert main(["convert", "--checkpoint", str(hf_dir), "--output", str(tmp_path / "lost_vision.npz")]) == 1
    error = float(capsys.readouterr().out.split("max relative error ")[1].split()[0])
    assert error > 1e-2
