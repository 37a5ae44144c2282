"""WebDataset shards: round trip, URL forms, splitting across ranks/workers, and every kind of bad sample."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from open_tips.data.builtin import BuiltinShapes
from open_tips.data.decode import decode_image
from open_tips.data.shards import ShardDataset, expand_urls, split_shards, write_shards
from tests import COCO_MINI

COCO = COCO_MINI


def _builtin_samples(n, seed=5):
    data = BuiltinShapes(n, 64, seed=seed)
    return [
        {k: data[i][k] for k in ("__key__", "image", "web_caption", "synthetic_captions", "main_label")}
        for i in range(n)
    ]


def test_round_trip_and_brace_expansion(tmp_path):
    samples = _builtin_samples(10)
    written = write_shards(samples, str(tmp_path / "s-%06d.tar"), max_per_shard=4)
    assert [Path(p).name for p in written] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    urls = expand_urls(str(tmp_path / "s-{000000..000002}.tar"))
    assert urls == written
    assert expand_urls(f"{written[0]}::{tmp_path}/s-{{000001..000002}}.tar") == written
    read = list(ShardDataset(urls, shuffle_shards=False))
    assert [s["__key__"] for s in read] == [s["__key__"] for s in samples]
    for got, want in zip(read, samples):
        assert got["web_caption"] == want["web_caption"]
        assert got["synthetic_captions"] == want["synthetic_captions"]
        assert got["main_label"] == want["main_label"]  # extra JSON fields travel too
        assert got["image"].mode == "RGB" and got["image"].size == (64, 64)
        assert (
            np.abs(np.asarray(got["image"], float) - np.asarray(want["image"], float)).mean() < 12
        )  # JPEG q95 of per-pixel colour noise
    # keys that would break the key.ext split or collide are made safe; bytes images pass through unchanged
    raw = {
        "image": (COCO / "val2017" / "000000000139.jpg").read_bytes(),
        "image_ext": "jpg",
        "web_caption": "x",
    }
    write_shards(
        [{**raw, "__key__": "a.b"}, {**raw, "__key__": "a.b"}, {**raw, "__skip_counts__": {"x": {}}}],
        str(tmp_path / "k-%06d.tar"),
    )
    read = list(ShardDataset(str(tmp_path / "k-000000.tar")))
    assert [s["__key__"] for s in read] == ["a_b", "a_b_1", "000000002"]
    assert "__skip_counts__" not in json.loads(
        tarfile.open(tmp_path / "k-000000.tar").extractfile("a_b.json").read()
    )
    with tarfile.open(tmp_path / "k-000000.tar") as tar:
        assert tar.extractfile("a_b.jpg").read() == raw["image"]


def test_failed_writing_leaves_no_partial_shard(tmp_path):
    def samples():
        yield from _builtin_samples(3)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_shards(samples(), str(tmp_path / "f-%06d.tar"), max_per_shard=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f-000000.tar"]


def test_pipe_urls_and_txt_captions(tmp_path):
    write_shards(_builtin_samples(3), str(tmp_path / "p-%06d.tar"), max_per_shard=10)
    read = list(ShardDataset(f"pipe:cat {tmp_path / 'p-000000.tar'}"))
    assert len(read) == 3
    # img2dataset style: <key>.jpg + <key>.txt (+ metadata without web_caption)
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        _add(tar, "a.jpg", _encode(_noise_image()))
        _add(tar, "a.txt", b"caption from txt")
        _add(tar, "b.jpg", _encode(_noise_image()))
        _add(tar, "b.json", json.dumps({"url": "http://x", "synthetic_captions": ["syn"]}).encode())
        _add(tar, "b.txt", b"b caption")
    read = list(ShardDataset(str(tmp_path / "t.tar")))
    assert [(s["web_caption"], len(s["synthetic_captions"])) for s in read] == [
        ("caption from txt", 0),
        ("b caption", 1),
    ]


def _keys_read(urls, rank, world_size, workers, epoch=0, **kw):
    dataset = ShardDataset(urls, rank=rank, world_size=world_size, seed=1, **kw)
    dataset.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [sample["__key__"] for sample in loader]


def test_ranks_and_workers_split_without_duplicates(tmp_path):
    write_shards(_builtin_samples(24), str(tmp_path / "d-%06d.tar"), max_per_shard=3)  # 8 shards
    urls = str(tmp_path / "d-{000000..000007}.tar")
    all_keys = sorted(s["__key__"] for s in _builtin_samples(24))
    firsts = []
    for epoch in range(2):
        per_rank = [_keys_read(urls, rank, 2, 2, epoch) for rank in range(2)]
        seen = per_rank[0] + per_rank[1]
        assert sorted(seen) == all_keys  # full coverage, nothing twice, within every epoch
        assert len(per_rank[0]) == len(per_rank[1]) == 12
        firsts.append(per_rank[0])
    assert sorted(firsts[0]) != sorted(firsts[1])  # shards are reshuffled per epoch
    # deterministic for a seed; the shuffle buffer reorders samples but keeps the set
    assert _keys_read(urls, 0, 2, 2, shuffle_buffer=5) == _keys_read(urls, 0, 2, 2, shuffle_buffer=5)
    assert sorted(_keys_read(urls, 0, 2, 2, shuffle_buffer=5)) == sorted(firsts[0])
    # the pure splitting rule
    shards = [f"u{i}" for i in range(8)]
    parts = [split_shards(shards, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(sum(parts, [])) == shards and all(len(p) == 2 for p in parts)


def test_resampling_and_rank_from_environment(tmp_path, monkeypatch):
    write_shards(_builtin_samples(6), str(tmp_path / "r-%06d.tar"), max_per_shard=3)
    dataset = ShardDataset(str(tmp_path / "r-{000000..000001}.tar"), rank=0, world_size=4, resample=True)
    stream = iter(dataset)
    keys = [next(stream)["__key__"] for _ in range(30)]  # endless, even with more ranks than shards
    assert len(keys) == 30 and len(set(keys)) <= 6
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    dataset = ShardDataset(str(tmp_path / "r-{000000..000001}.tar"))
    assert (dataset.rank, dataset.world_size) == (1, 2)
    assert ShardDataset(str(tmp_path / "r-000000.tar"), rank=0, world_size=1).world_size == 1
    with pytest.raises(ValueError):
        ShardDataset(str(tmp_path / "r-000000.tar"), rank=2, world_size=2)


def _encode(image, fmt="JPEG", **kw):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _noise_image(size=32, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8"))


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _bad_shard(path: Path) -> None:
    good = _noise_image()
    meta = json.dumps({"web_caption": "a photo", "synthetic_captions": ["a detailed photo"]}).encode()
    jpeg = _encode(good)
    sixteen = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
    members = [
        ("ok", {"jpg": jpeg, "json": meta}),
        ("corrupt", {"jpg": b"\xff\xd8 not really a jpeg", "json": meta}),
        ("cut", {"jpg": jpeg[: len(jpeg) // 2], "json": meta}),
        ("cmyk", {"jpg": _encode(good.convert("CMYK")), "json": meta}),
        ("deep", {"png": _encode(sixteen, "PNG"), "json": meta}),
        ("pal", {"png": _encode(good.convert("P"), "PNG"), "json": meta}),
        ("alpha", {"png": _encode(good.convert("RGBA"), "PNG"), "json": meta}),
        ("grey", {"webp": _encode(good.convert("L"), "WEBP"), "json": meta}),
        ("huge", {"png": _encode(Image.new("RGB", (400, 400), (1, 2, 3)), "PNG"), "json": meta}),
        ("tiny", {"png": _encode(Image.new("RGB", (2, 2)), "PNG"), "json": meta}),
        ("nocap", {"jpg": jpeg, "json": json.dumps({"web_caption": " "}).encode()}),
        ("nokey", {"jpg": jpeg, "json": json.dumps({"synthetic_captions": ["x"]}).encode()}),
        ("badjson", {"jpg": jpeg, "json": b"{not json"}),
        ("listjson", {"jpg": jpeg, "json": b"[1, 2]"}),
        ("noimage", {"json": meta}),
        ("nometa", {"jpg": jpeg}),
        ("last", {"jpg": jpeg, "json": meta}),
    ]
    with tarfile.open(path, "w") as tar:
        for key, parts in members:
            for ext, data in parts.items():
                _add(tar, f"{key}.{ext}", data)


EXPECTED_SKIPS = {
    "corrupt_image": 2,
    "image_too_large": 1,
    "image_too_small": 1,
    "missing_caption": 2,
    "malformed_json": 2,
    "missing_image": 1,
    "missing_json": 1,
}
ACCEPTED = ["ok", "cmyk", "deep", "pal", "alpha", "grey", "last"]


def test_bad_samples_skipped_and_counted(tmp_path):
    _bad_shard(tmp_path / "bad.tar")
    dataset = ShardDataset(str(tmp_path / "bad.tar"), max_pixels=300 * 300)
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == ACCEPTED  # odd modes are converted, not skipped
    assert all(s["image"].mode == "RGB" and s["image"].size == (32, 32) for s in samples)
    deep = np.asarray(samples[2]["image"])
    assert deep.max() > 0 and np.all(
        deep[..., 0] == deep[..., 1]
    )  # 16-bit grey kept as grey, not clipped away
    assert np.asarray(samples[4]["image"]).min() >= 0  # alpha composited, still RGB
    assert dict(dataset.skipped) == EXPECTED_SKIPS
    # every sample carries its reader's running totals; the last one has them all
    assert samples[-1]["__skip_counts__"] == {"shards:0:0": EXPECTED_SKIPS}
    # the default limit accepts the 400 x 400 image
    assert "huge" in [s["__key__"] for s in ShardDataset(str(tmp_path / "bad.tar"))]


def test_damaged_archives(tmp_path):
    good_meta = json.dumps({"web_caption": "fine"}).encode()
    jpeg = _encode(_noise_image())
    with tarfile.open(tmp_path / "cut.tar", "w") as tar:
        for key in ("one", "two", "three"):
            _add(tar, f"{key}.json", good_meta)
            _add(tar, f"{key}.jpg", jpeg)
    raw = (tmp_path / "cut.tar").read_bytes()
    with tarfile.open(tmp_path / "cut.tar") as tar:
        cut_at = tar.getmember("two.jpg").offset_data + 10  # inside the second image's data
    (tmp_path / "cut.tar").write_bytes(raw[:cut_at])
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar archive at all" * 40)
    (tmp_path / "empty.tar").write_bytes(b"")
    good = tmp_path / "good.tar"
    write_shards(_builtin_samples(2), str(tmp_path / "good-%06d.tar"))
    (tmp_path / "good-000000.tar").rename(good)
    urls = [str(tmp_path / n) for n in ("cut.tar", "garbage.tar", "missing.tar", "empty.tar", "good.tar")]
    dataset = ShardDataset(urls + [f"pipe:cat {tmp_path / 'missing.tar'} 2>/dev/null"], shuffle_shards=False)
    keys = [s["__key__"] for s in dataset]
    assert keys == ["one"] + [s["__key__"] for s in _builtin_samples(2)]
    # "two" lost inside a member: counted once, not also as a missing image; the rest of that shard is lost
    assert dict(dataset.skipped) == {"truncated_tar_member": 1, "unreadable_shard": 4}
    # a gzip-compressed shard cut short loses its tail but keeps what came before
    gz = tmp_path / "z.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        for i in range(6):
            _add(tar, f"k{i}.json", good_meta)
            _add(tar, f"k{i}.png", _encode(_noise_image(64, seed=i), "PNG"))
    gz.write_bytes(gz.read_bytes()[: gz.stat().st_size * 2 // 3])
    dataset = ShardDataset(str(gz))
    keys = [s["__key__"] for s in dataset]
    assert 0 < len(keys) < 6 and sum(dataset.skipped.values()) == 1


def test_skip_counts_reach_the_batches_from_workers(tmp_path):
    from open_tips.data.captions import CaptionPolicy
    from open_tips.data.collate import TIPSBatchBuilder
    from open_tips.data.crops import MultiCropTransform
    from open_tips.data.masking import MaskGenerator
    from tests.data._toy import toy_tokenizer

    for i in range(2):
        _bad_shard(tmp_path / f"bad-{i}.tar")
    builder = TIPSBatchBuilder(toy_tokenizer, MultiCropTransform(28, 14, 1), MaskGenerator(), CaptionPolicy())
    dataset = ShardDataset(str(tmp_path / "bad-{0..1}.tar"), max_pixels=300 * 300)
    loader = DataLoader(dataset, batch_size=7, num_workers=2, collate_fn=builder)
    latest: dict = {}
    batches = 0
    for batch in loader:
        latest.update(batch["skip_counts"])
        batches += 1
    assert batches == 2 and set(latest) == {"shards:0:0", "shards:0:1"}
    assert all(counts == EXPECTED_SKIPS for counts in latest.values())
    assert not dataset.skipped  # the main process's copy saw nothing: counts travel with the samples


def test_decode_image_directly():
    assert decode_image(_encode(_noise_image(40))).size == (40, 40)
    # EXIF orientation 6 (rotated 90 degrees clockwise): shown upright
    wide = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_image(_encode(wide, exif=exif)).size == (20, 40)
