"""Fixtures for the inference command tests: a random `tiny` checkpoint with a tokenizer beside it, and a
folder of real COCO images plus one corrupt file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

import open_tips
from tests import COCO_MINI
from tests.helpers import make_tiny_checkpoint

COCO = COCO_MINI / "val2017"
NUM_IMAGES = 3
# The commands' device: cpu, or $OPEN_TIPS_TEST_DEVICE (benchmarks/gpu.sh runs the --dtype / --compile tests
# with cuda; the tests that compare against the in-process CPU model expect cpu).
DEVICE = os.environ.get("OPEN_TIPS_TEST_DEVICE", "cpu")
# --config tiny: heads cannot be read off the weights at width 64.
COMMON = ["--config", "tiny", "--device", DEVICE, "--image-size", "56"]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """``tips_test_vision.npz`` + ``_text.npz`` + ``tokenizer.model`` in one folder."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def model(checkpoint):
    return open_tips.load_pretrained(checkpoint, config="tiny", device="cpu")


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    """Three COCO photos (landscape and portrait) and ``broken.jpg``, which is not an image."""
    if not COCO.is_dir():
        pytest.skip(f"COCO-mini not found at {COCO}")
    folder = tmp_path_factory.mktemp("images")
    photos = sorted(COCO.glob("*.jpg"))
    portrait = next(p for p in photos if Image.open(p).height > Image.open(p).width)
    for path in [*[p for p in photos if p != portrait][: NUM_IMAGES - 1], portrait]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return folder


def open_rgb(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # as a photo viewer shows it


def good_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.jpg") if p.name != "broken.jpg")


def square_pixels(path: Path, size: int) -> torch.Tensor:
    """[1, 3, size, size] as the commands resize by default (bilinear, antialiased)."""
    image = open_rgb(path)
    pixels = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
    return TF.resize(pixels, [size, size], antialias=True).clamp(0, 1)[None]


def notebook_pixels(path: Path, size: int, patch: int = 14) -> tuple[torch.Tensor, tuple[int, int]]:
    """The official notebook's zero-shot segmentation input, written out independently: short side to
    ``size`` with PIL bicubic (long side truncated), then bicubic up to the next patch multiple.
    Returns (pixels [1, 3, H, W], original (height, width))."""
    image = open_rgb(path)
    width, height = image.size
    new_w, new_h = (
        (size, int(size * height / width)) if width < height else (int(size * width / height), size)
    )
    pixels = TF.to_dtype(TF.to_image(image.resize((new_w, new_h), Image.BICUBIC)), torch.float32, scale=True)
    aligned = (math.ceil(new_h / patch) * patch, math.ceil(new_w / patch) * patch)
    return F.interpolate(pixels[None], size=aligned, mode="bicubic", align_corners=False), (height, width)
