"""Reduced-size JPEG decoding for training crops: the scale rule keeps every crop a downscale, a scaled
decode matches the full decode resized, and the training reader uses it only where the rule allows."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from open_tips.data.decode import decode_image_tensor, jpeg_scale_for
from open_tips.data.shards import ShardDataset, write_shards
from open_tips.train.config import load_config
from open_tips.train.data import decode_crops
from tests import COCO_MINI

B14 = [(224, 0.32), (98, 0.05)]  # the b14 preset's global and local crops


def _photo(width: int, height: int) -> bytes:
    """A smooth, photo-like JPEG (COCO-mini's first image resized, else a gradient) of the given size."""
    files = sorted((COCO_MINI / "train2017").glob("*.jpg")) if COCO_MINI.is_dir() else []
    if files:
        image = Image.open(files[0]).convert("RGB").resize((width, height), Image.BICUBIC)
    else:
        ramp = torch.linspace(0, 255, width).expand(height, width)
        image = TF.to_pil_image(
            torch.stack([ramp, ramp.T[:height, :width] if height == width else ramp, ramp]).byte()
        )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_scale_rule():
    assert jpeg_scale_for(640, 480, B14) == 1  # COCO: the smallest local crop is only ~1.1x 98 px
    assert jpeg_scale_for(1280, 960, B14) == 2
    assert jpeg_scale_for(4000, 3000, B14) == 4
    assert jpeg_scale_for(8000, 6000, B14) == 8
    assert jpeg_scale_for(4000, 150, B14) == 1  # a thin strip: the fallback box is the whole short side
    assert jpeg_scale_for(1280, 960, [(224, 0.32)]) == 2  # global crop only
    assert jpeg_scale_for(1280, 960, []) == 1


@pytest.mark.parametrize("size", [(1280, 960), (1500, 700), (3000, 2000), (600, 2400)])
def test_every_drawable_box_stays_a_downscale(size):
    """2000 boxes of each crop drawn by RandomResizedCrop itself on the full-size image, mapped to the
    reduced image: none is smaller than its output on either side."""
    width, height = size
    scale = jpeg_scale_for(width, height, B14)
    assert scale > 1
    fake = torch.empty(1, 1, 1).expand(3, height, width)  # make_params reads the size only
    torch.manual_seed(0)
    for output, min_scale in B14:
        sampler = v2.RandomResizedCrop(output, scale=(min_scale, 1.0 if output == 224 else 0.32))
        smallest = min(
            min(box["height"], box["width"]) for box in (sampler.make_params([fake]) for _ in range(2000))
        )
        assert smallest // scale >= output, (size, output, smallest, scale)


def test_scaled_decode_matches_full_decode_resized():
    data = _photo(1280, 960)
    full = decode_image_tensor(data)
    reduced = decode_image_tensor(data, crops=B14)
    assert full.shape == (3, 960, 1280) and reduced.shape == (3, 480, 640) and reduced.dtype == torch.uint8
    resized = TF.resize(full, [480, 640], antialias=True)
    difference = (reduced.float() - resized.float()).abs()
    # libjpeg's scaled IDCT is another low-pass filter than an antialiased resize: small, noise-like
    # differences (a decode of another image would differ by tens of levels on average)
    assert difference.mean() < 3.0 and difference.quantile(0.99) < 20
    torch.manual_seed(0)
    sampler = v2.RandomResizedCrop(224, scale=(0.32, 1.0))
    for _ in range(5):  # the same boxes, drawn on the full image, halved for the reduced one
        box = sampler.make_params([full])
        top, left, height, width = box["top"], box["left"], box["height"], box["width"]
        from_full = TF.resized_crop(full, top, left, height, width, [224, 224], antialias=True)
        from_reduced = TF.resized_crop(
            reduced, top // 2, left // 2, height // 2, width // 2, [224, 224], antialias=True
        )
        # half-pixel box rounding at the reduced size plus the other filter: a few levels of 255
        assert (from_full.float() - from_reduced.float()).abs().mean() < 6.0
    small = _photo(640, 480)
    assert torch.equal(decode_image_tensor(small, crops=B14), decode_image_tensor(small))  # no reduction


def test_exif_rotation_kept_in_scaled_decode():
    image = Image.open(io.BytesIO(_photo(1280, 960)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    assert decode_image_tensor(buffer.getvalue()).shape == (3, 1280, 960)
    assert decode_image_tensor(buffer.getvalue(), crops=B14).shape == (3, 640, 480)


def test_training_reader_decodes_large_jpegs_reduced(tmp_path):
    samples = [
        {"__key__": f"s{i}", "image": Image.open(io.BytesIO(_photo(*size))), "web_caption": "a photo"}
        for i, size in enumerate([(1280, 960), (640, 480)])
    ]
    urls = write_shards(samples, str(tmp_path / "r-%06d.tar"))
    cfg = load_config("b14")
    assert cfg.data.reduced_decode and decode_crops(cfg.data) == B14
    assert decode_crops(load_config("b14", overrides=["data.reduced_decode=false"]).data) is None

    def shapes(**kw):
        reader = ShardDataset(urls, rank=0, world_size=1, shuffle_shards=False, image_type="tensor", **kw)
        return {s["__key__"]: tuple(s["image"].shape) for s in reader}

    assert shapes(decode_crops=B14) == {"s0": (3, 480, 640), "s1": (3, 480, 640)}
    assert shapes() == {"s0": (3, 960, 1280), "s1": (3, 480, 640)}
