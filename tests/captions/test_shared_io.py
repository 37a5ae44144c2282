"""The captioner reads, decodes and lists through training's data stack (open_tips.data), so the two agree:
the same pixels for 16-bit PNGs, the same rejected images with the same reasons (a 4x4 image is not captioned,
as training drops it), the same members of a damaged shard; and the original members are still copied byte
for byte."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from open_tips.captions.model import DecodeSettings
from open_tips.captions.pipeline import PipelineConfig, parse_sample, run_pipeline
from open_tips.captions.prompts import parse_templates
from open_tips.captions.sources import Unit, decode_image, discover_units, read_unit
from open_tips.data.decode import SkipCounter, SkipSample
from open_tips.data.decode import decode_image as training_decode
from open_tips.data.shards import ShardDataset, iter_tar_samples

from .conftest import tar_members, write_tar


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png16() -> tuple[bytes, np.ndarray]:
    """A 64 x 64 16-bit greyscale PNG over the whole range (step 16), and its values."""
    values = (np.arange(64 * 64, dtype=np.int64) * 16).reshape(64, 64)
    return _encode(Image.fromarray(values.astype(np.uint16)), "PNG"), values


def _noise(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8))


def _meta(key: str) -> bytes:
    return json.dumps({"web_caption": f"web caption of {key}"}).encode()


def _mixed_shard(path: Path) -> dict[str, str | None]:
    """A shard of images training accepts and rejects; returns key -> expected reason (None = kept)."""
    jpeg = _encode(_noise(40), "JPEG")
    samples = {
        "good": ("jpg", jpeg, None),
        "tiny": ("png", _encode(_noise(4), "PNG"), "image_too_small"),
        "deep": ("png", _png16()[0], None),
        "cmyk": ("jpg", _encode(_noise(40).convert("CMYK"), "JPEG"), None),
        "broken": ("jpg", b"\xff\xd8 not a jpeg", "corrupt_image"),
        "cut": ("jpg", jpeg[: len(jpeg) // 2], "corrupt_image"),
    }
    write_tar(
        path, [[(f"{k}.{ext}", data), (f"{k}.json", _meta(k))] for k, (ext, data, _) in samples.items()]
    )
    return {key: reason for key, (_, _, reason) in samples.items()}


def _training_verdicts(url: str) -> dict[str, str | None]:
    dataset = ShardDataset(url, rank=0, world_size=1)
    verdicts: dict[str, str | None] = {}
    for raw in iter_tar_samples(url, SkipCounter()):
        try:
            dataset.decode(raw)
            verdicts[raw["__key__"]] = None
        except SkipSample as skip:
            verdicts[raw["__key__"]] = skip.reason
    return verdicts


def test_16_bit_png_decodes_as_training_does() -> None:
    data, values = _png16()
    captioner = np.asarray(decode_image(data))
    training = np.asarray(training_decode(data))
    assert np.array_equal(captioner, training)
    # 0..65535 -> 0..255 rounded (value / 257), the same in all three channels
    assert np.array_equal(captioner[..., 0], np.round(values / 257.0).astype(np.uint8))
    assert np.array_equal(captioner[..., 0], captioner[..., 2])


def test_captioner_rejects_the_images_training_rejects(tmp_path: Path) -> None:
    url = str(tmp_path / "mixed.tar")
    expected = _mixed_shard(Path(url))
    (unit,) = discover_units([url])
    captioner = {raw.key: parse_sample(raw).error for raw in read_unit(unit)}
    assert captioner == _training_verdicts(url) == expected


def test_damaged_shard_read_alike(tmp_path: Path) -> None:
    jpegs = [_encode(_noise(40, seed), "JPEG") for seed in range(3)]
    good = write_tar(
        tmp_path / "good.tar",
        [[(f"s{i}.jpg", data), (f"s{i}.json", _meta(f"s{i}"))] for i, data in enumerate(jpegs)],
    )
    # cut inside the second sample's image: the first sample is whole, nothing after the cut is reachable
    cut = tmp_path / "cut.tar"
    offset = next(m.offset_data for m in tarfile.open(good) if m.name == "s1.jpg")
    cut.write_bytes(good.read_bytes()[: offset + 100])
    skipped = SkipCounter()
    training = [raw["__key__"] for raw in iter_tar_samples(str(cut), skipped)]
    captioner = [(raw.key, raw.error) for raw in read_unit(Unit("cut", str(cut)))]
    assert training == ["s0"] and dict(skipped) == {"truncated_tar_member": 1}
    assert captioner == [("s0", None), ("s1", "truncated_tar_member")]


class _Stub:
    name, prompt_style = "stub", "prefix"

    def generate(self, images: list[Image.Image], prompts: list[str], settings: DecodeSettings) -> list[str]:
        return [f"a picture {image.size[0]} wide" for image in images]


def test_too_small_image_is_copied_uncaptioned(tmp_path: Path) -> None:
    shard = tmp_path / "in" / "in-000000.tar"
    expected = _mixed_shard(shard)
    config = PipelineConfig(parse_templates(["short"]), DecodeSettings(max_new_tokens=4), progress=False)
    summary = run_pipeline([str(shard)], tmp_path / "out", config, _Stub(), "stub")
    assert summary["failed_reasons"] == {"image_too_small": 1, "corrupt_image": 2}
    original, written = dict(tar_members(shard)), dict(tar_members(tmp_path / "out" / shard.name))
    assert original.keys() == written.keys()
    for key, reason in expected.items():
        image_member = next(
            name for name in original if name.startswith(f"{key}.") and not name.endswith("json")
        )
        assert written[image_member] == original[image_member]  # byte for byte
        captions = json.loads(written[f"{key}.json"]).get("synthetic_captions", [])
        assert bool(captions) == (reason is None), key  # rejected by training <=> not captioned
        if reason is not None:
            assert written[f"{key}.json"] == original[f"{key}.json"]
