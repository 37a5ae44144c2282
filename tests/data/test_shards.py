"""WebDataset shards: round trip, splitting across ranks/workers, and every kind of bad sample skipped."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader

from open_tips.cli import main as cli_main
from open_tips.data.builtin import BuiltinShapes
from open_tips.data.folder import CocoCaptionsDataset, FolderDataset
from open_tips.data.shards import ShardDataset, expand_urls, split_shards, write_shards

COCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-mini"


def _builtin_samples(n):
    data = BuiltinShapes(n, 64, seed=5)
    return [{k: data[i][k] for k in ("__key__", "image", "web_caption", "synthetic_captions")} for i in range(n)]


def test_round_trip_and_brace_expansion(tmp_path):
    samples = _builtin_samples(10)
    written = write_shards(samples, str(tmp_path / "s-%06d.tar"), max_per_shard=4)
    assert [Path(p).name for p in written] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"]
    assert not list(tmp_path.glob("*.tmp"))
    urls = expand_urls(str(tmp_path / "s-{000000..000002}.tar"))
    assert urls == written
    read = list(ShardDataset(urls, shuffle_shards=False))
    assert [s["__key__"] for s in read] == [s["__key__"] for s in samples]
    assert read[3]["web_caption"] == samples[3]["web_caption"]
    assert read[3]["synthetic_captions"][1]["template"] == "detailed"
    assert read[3]["image"].mode == "RGB" and read[3]["image"].size == (64, 64)


def test_pipe_urls(tmp_path):
    write_shards(_builtin_samples(3), str(tmp_path / "p-%06d.tar"), max_per_shard=10)
    read = list(ShardDataset(f"pipe:cat {tmp_path / 'p-000000.tar'}"))
    assert len(read) == 3


def test_ranks_and_workers_split_without_duplicates(tmp_path):
    write_shards(_builtin_samples(24), str(tmp_path / "d-%06d.tar"), max_per_shard=3)  # 8 shards
    urls = str(tmp_path / "d-{000000..000007}.tar")
    seen = []
    for rank in range(2):
        dataset = ShardDataset(urls, rank=rank, world_size=2, seed=1)
        loader = DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=lambda s: s)
        seen.extend(sample["__key__"] for sample in loader)
    assert len(seen) == 24 and len(set(seen)) == 24
    shards = [f"u{i}" for i in range(8)]
    parts = [split_shards(shards, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(sum(parts, [])) == sorted(shards)


def _jpeg(image, **kw):
    buffer = io.BytesIO()
    image.save(buffer, format=kw.pop("format", "JPEG"), **kw)
    return buffer.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_bad_samples_skipped_and_counted(tmp_path):
    good = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    meta = json.dumps({"web_caption": "a photo", "synthetic_captions": ["a detailed photo"]}).encode()
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, "ok.jpg", _jpeg(good)); _add(tar, "ok.json", meta)                              # noqa: E702
        _add(tar, "corrupt.jpg", b"\xff\xd8 not really a jpeg"); _add(tar, "corrupt.json", meta)  # noqa: E702
        data = _jpeg(good)
        _add(tar, "cut.jpg", data[: len(data) // 2]); _add(tar, "cut.json", meta)                  # noqa: E702
        _add(tar, "cmyk.jpg", _jpeg(good.convert("CMYK"))); _add(tar, "cmyk.json", meta)           # noqa: E702
        sixteen = Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16))
        _add(tar, "deep.png", _jpeg(sixteen, format="PNG")); _add(tar, "deep.json", meta)          # noqa: E702
        _add(tar, "pal.png", _jpeg(good.convert("P"), format="PNG")); _add(tar, "pal.json", meta)  # noqa: E702
        _add(tar, "alpha.png", _jpeg(good.convert("RGBA"), format="PNG")); _add(tar, "alpha.json", meta)  # noqa: E702
        huge = Image.new("RGB", (400, 400), (1, 2, 3))
        _add(tar, "huge.png", _jpeg(huge, format="PNG")); _add(tar, "huge.json", meta)             # noqa: E702
        _add(tar, "tiny.png", _jpeg(Image.new("RGB", (2, 2)), format="PNG")); _add(tar, "tiny.json", meta)  # noqa: E702
        _add(tar, "nocap.jpg", _jpeg(good)); _add(tar, "nocap.json", json.dumps({"web_caption": " "}).encode())  # noqa: E702
        _add(tar, "badjson.jpg", _jpeg(good)); _add(tar, "badjson.json", b"{not json")             # noqa: E702
        _add(tar, "noimage.json", meta)
    # a truncated member at the end of a second shard
    with tarfile.open(tmp_path / "cut.tar", "w") as tar:
        _add(tar, "fine.jpg", _jpeg(good)); _add(tar, "fine.json", meta)                          # noqa: E702
        _add(tar, "last.jpg", _jpeg(good)); _add(tar, "last.json", meta)                          # noqa: E702
    raw = (tmp_path / "cut.tar").read_bytes()
    with tarfile.open(tmp_path / "cut.tar") as tar:
        cut_at = tar.getmember("last.jpg").offset_data + 10  # inside the last image's data
    (tmp_path / "cut.tar").write_bytes(raw[:cut_at])

    dataset = ShardDataset([str(path), str(tmp_path / "cut.tar")], max_pixels=300 * 300, shuffle_shards=False)
    keys = [s["__key__"] for s in dataset]
    assert keys[:5] == ["ok", "cmyk", "deep", "pal", "alpha"]
    assert "fine" in keys and "last" not in keys
    skipped = dict(dataset.skipped)
    assert skipped["corrupt_image"] == 2  # undecodable + truncated JPEG
    assert skipped["image_too_large"] == 1
    assert skipped["image_too_small"] == 1
    assert skipped["missing_caption"] == 1
    assert skipped["malformed_json"] == 1
    assert skipped["missing_image"] == 1
    assert skipped.get("truncated_tar_member", 0) + skipped.get("truncated_shard", 0) >= 1


def test_folder_and_coco_layouts(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    BuiltinShapes(2, 32)[0]["image"].save(root / "a.jpg")
    (root / "b.jpg").write_bytes(b"broken")
    lines = [json.dumps({"image": "a.jpg", "web_caption": "a"}), "{bad json",
             json.dumps({"image": "b.jpg", "web_caption": "b"}), json.dumps({"image": "c.jpg"})]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    data = FolderDataset(root)
    assert len(data) == 2 and data.skipped["malformed_json"] == 1 and data.skipped["missing_caption"] == 1
    assert data[1]["web_caption"] == "a"  # b.jpg is unreadable: the next readable sample stands in
    assert data.skipped["corrupt_image"] == 1
    coco = CocoCaptionsDataset(COCO / "annotations" / "captions_val2017.json", COCO / "val2017")
    sample = coco.load(0)
    assert sample["image"].mode == "RGB" and len(sample["synthetic_captions"]) >= 4


def test_make_shards_cli_and_training_on_shards(tmp_path):
    out = tmp_path / "shards"
    assert cli_main(["make-shards", "--input", "builtin:40", "--output", str(out), "--per-shard", "16"]) == 0
    assert len(list(out.glob("shard-*.tar"))) == 3
    assert cli_main(["make-shards", "--input", str(COCO / "annotations" / "captions_val2017.json"),
                     "--image-dir", str(COCO / "val2017"), "--output", str(tmp_path / "coco"),
                     "--per-shard", "50"]) == 0
    coco_samples = list(ShardDataset(str(tmp_path / "coco" / "shard-{000000..000001}.tar")))
    assert len(coco_samples) >= 50

    from open_tips.data.tokenizer import Tokenizer
    from open_tips.train.config import load_config
    from open_tips.train.loop import train

    texts = [s["web_caption"] for s in _builtin_samples(100)]
    tok = Tokenizer.train(texts * 3, tmp_path / "tok", vocab_size=120)
    cfg = load_config("tiny", overrides=[
        f"data.source={out}/shard-{{000000..000002}}.tar", f"data.tokenizer={tok.model_path}",
        "data.batch_size=8", "data.shuffle_buffer=16", "train.steps=6", "train.evaluate_at_end=false",
        f"train.output_dir={tmp_path / 'run'}", "train.log_every=1"])
    summary = train(cfg)
    assert summary["finished"] and summary["steps"] == 6
