"""create_model_and_transforms: the model, its PIL -> tensor transform, its tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import open_tips
from open_tips.cli import main
from tests.cli.conftest import COMMON, good_images, open_rgb


def test_transform_equals_embed_command(checkpoint, images, tmp_path):
    model, transform, tokenizer = open_tips.create_model_and_transforms(checkpoint, config="tiny")
    assert tokenizer is model.tokenizer and tokenizer is not None
    assert (transform.image_size, transform.patch_size, transform.resample) == (56, 14, "bilinear")
    paths = good_images(images)
    out = tmp_path / "feats.npz"
    assert (
        main(["embed", *map(str, paths), "--checkpoint", str(checkpoint), "--output", str(out), *COMMON]) == 0
    )
    pixels = torch.stack([transform(open_rgb(p)) for p in paths])
    assert pixels.shape == (len(paths), 3, 56, 56)
    with torch.no_grad():
        ours = model.encode_image(pixels).cls_web.numpy()
    np.testing.assert_allclose(ours, np.load(out)["cls_web"], rtol=1e-5, atol=1e-6)
    ids, padding = tokenizer(["a photo of a cat"])
    assert ids.shape == (1, model.cfg.text.max_len) and padding.dtype == torch.bool


def test_transform_has_no_normalisation_and_aligns_to_patches():
    transform = open_tips.ImageTransform(image_size=100, keep_aspect=True)
    white = transform(Image.new("RGB", (300, 200), (255, 255, 255)))
    assert white.shape == (3, 98, 154)  # short side 100 -> 98, long side 150 -> 154 (multiples of 14)
    assert torch.allclose(white, torch.ones_like(white))  # [0, 1], no mean/std
    grey = open_tips.ImageTransform(image_size=28, resample="bicubic")(Image.new("L", (40, 60), 128))
    assert grey.shape == (3, 28, 28) and torch.allclose(grey, torch.full_like(grey, 128 / 255), atol=1e-6)
    with pytest.raises(ValueError, match="resample"):
        open_tips.ImageTransform(image_size=224, resample="lanczos")
    with pytest.raises(TypeError, match="PIL"):
        transform(torch.zeros(3, 10, 10))


def test_resolution_comes_from_the_identified_model(tmp_path):
    """A TIPS v1 HR file (16x16 grid = 224 px) is identified and transformed at 448."""
    cfg = open_tips.get_config("tips-v1-s14-hr")
    zeros = {
        k: np.zeros(tuple(v.shape), np.float32)
        for k, v in open_tips.create_model(cfg).vision.state_dict().items()
    }
    path = tmp_path / "tips_oss_s14_highres_distilled_vision.npz"
    np.savez_compressed(path, **zeros)
    model, transform, tokenizer = open_tips.create_model_and_transforms(path)
    assert transform.image_size == 448 and tokenizer is None and model.text is None
    assert transform(Image.new("RGB", (640, 480))).shape == (3, 448, 448)


def test_registry_names(tmp_path, monkeypatch):
    model, transform, _ = open_tips.create_model_and_transforms("tiny", pretrained=False)
    assert model.cfg.name == "tiny" and transform.image_size == 56 and not model.training
    with pytest.raises(ValueError, match="pretrained=False"):
        open_tips.create_model_and_transforms("tiny")
    # a released TIPSv2 name goes to its hub id through the cache (empty here, offline)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(open_tips.CheckpointError, match="google/tipsv2-b14"):
        open_tips.create_model_and_transforms("tipsv2-b14")
