"""Fuzz: shards with every kind of bad input mixed into real COCO images; training proceeds and the skips are
counted per reason in the run summary."""

import io
import json
import random
import tarfile

import numpy as np
from PIL import Image

import open_tips.data.shards as shards
from open_tips.models.tokenizer import Tokenizer
from open_tips.train.config import load_config
from open_tips.train.loop import train
from tests import COCO_MINI

COCO = COCO_MINI / "train2017"


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _bad_members(rng: random.Random, good: Image.Image) -> dict[str, tuple[dict[str, bytes], str | None]]:
    """kind -> (tar members without key, skip reason or None when the sample must be accepted)."""
    meta = json.dumps({"web_caption": "a photo", "synthetic_captions": ["a detailed photo"]}).encode()
    jpeg = _encode(good, "JPEG")
    deep = Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 25).astype(np.uint16))
    return {
        "corrupt": ({"jpg": bytes(rng.getrandbits(8) for _ in range(300)), "json": meta}, "corrupt_image"),
        "truncated": ({"jpg": jpeg[: len(jpeg) // 3], "json": meta}, "corrupt_image"),
        "cmyk": ({"jpg": _encode(good.convert("CMYK"), "JPEG"), "json": meta}, None),
        "sixteen_bit": ({"png": _encode(deep, "PNG"), "json": meta}, None),
        "palette": ({"png": _encode(good.convert("P"), "PNG"), "json": meta}, None),
        "alpha": ({"png": _encode(good.convert("RGBA"), "PNG"), "json": meta}, None),
        "tiny": ({"png": _encode(Image.new("RGB", (3, 3)), "PNG"), "json": meta}, "image_too_small"),
        "huge": ({"png": _encode(Image.new("RGB", (700, 700)), "PNG"), "json": meta}, "image_too_large"),
        "no_caption": (
            {"jpg": jpeg, "json": json.dumps({"synthetic_captions": ["x"]}).encode()},
            "missing_caption",
        ),
        "empty_caption": (
            {"jpg": jpeg, "json": json.dumps({"web_caption": "   "}).encode()},
            "missing_caption",
        ),
        "bad_json": ({"jpg": jpeg, "json": b'{"web_caption": "unterminated'}, "malformed_json"),
        "no_image": ({"json": meta}, "missing_image"),
        "no_json": ({"jpg": jpeg}, "missing_json"),
    }


def test_training_proceeds_through_bad_data(tmp_path, monkeypatch):
    rng = random.Random(0)
    coco = sorted(COCO.glob("*.jpg"))[:8]
    expected: dict[str, int] = {}
    index = 0
    for shard in range(2):
        with tarfile.open(tmp_path / f"fuzz-{shard:06d}.tar", "w") as tar:

            def add(key, members):
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

            # bad samples first: skip counts travel with the samples read after them
            good = Image.open(coco[shard]).convert("RGB").resize((48, 48))
            for kind, (members, reason) in _bad_members(rng, good).items():
                add(f"{kind}{shard}", members)
                if reason:
                    expected[reason] = expected.get(reason, 0) + 1
            for image_path in coco[shard * 4 : (shard + 1) * 4]:
                image = Image.open(image_path).convert("RGB").resize((96, 72))
                add(
                    f"good{index:05d}",
                    {
                        "jpg": _encode(image, "JPEG"),
                        "json": json.dumps({"web_caption": f"coco image {index}"}).encode(),
                    },
                )
                index += 1
    tok = Tokenizer.train(
        [f"coco image {i} a photo a detailed photo" for i in range(50)], tmp_path / "tok", vocab_size=40
    )
    cfg = load_config(
        "tiny",
        overrides=[
            f"data.source={tmp_path}/fuzz-{{000000..000001}}.tar",
            f"data.tokenizer={tok.model_path}",
            "data.batch_size=4",
            "data.shuffle_buffer=0",
            "train.steps=4",
            "train.evaluate_at_end=false",
            f"train.output_dir={tmp_path / 'run'}",
            "train.log_every=1",
        ],
    )
    # a lower decompression-bomb limit so that the 700x700 image counts as too large
    original_init = shards.ShardDataset.__init__

    def limited_init(self, *args, **kwargs):
        original_init(self, *args, **{**kwargs, "max_pixels": 400 * 400})

    monkeypatch.setattr(shards.ShardDataset, "__init__", limited_init)
    summary = train(cfg)
    assert summary["finished"] and summary["steps"] == 4
    # 8 good + 2 x 4 accepted odd-mode images = 16 samples per epoch = 4 batches: every skip was seen
    assert summary["skipped_samples"] == expected, (summary["skipped_samples"], expected)
