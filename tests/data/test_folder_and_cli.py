"""Folder layouts (captions.jsonl, COCO captions) and the make-shards command."""

import json
import tarfile
from pathlib import Path

import pytest

from open_tips.cli import main as cli_main
from open_tips.data.builtin import BuiltinShapes
from open_tips.data.folder import CocoCaptionsDataset, FolderDataset
from open_tips.data.shards import ShardDataset
from tests import COCO_MINI

COCO = COCO_MINI
COCO_VAL = COCO / "annotations" / "captions_val2017.json"


def _jsonl_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    BuiltinShapes(2, 32)[0]["image"].save(root / "a.jpg")
    BuiltinShapes(2, 32)[1]["image"].convert("P").save(root / "sub" / "a.png")
    (root / "b.jpg").write_bytes(b"broken")
    lines = [
        json.dumps({"image": "a.jpg", "web_caption": "first", "synthetic_captions": ["s1", {"text": "s2"}]}),
        "{bad json",
        json.dumps({"image": "b.jpg", "web_caption": "unreadable image"}),
        json.dumps({"image": "c.jpg"}),
        json.dumps({"web_caption": "no image path"}),
        "",
        json.dumps({"image": "sub/a.png", "web_caption": "  second  ", "source": "x"}),
        json.dumps({"image": "gone.jpg", "web_caption": "missing file"}),
    ]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_jsonl_folder_skips_and_counts(tmp_path):
    data = FolderDataset(_jsonl_folder(tmp_path / "folder"))
    assert len(data) == 4  # a.jpg, b.jpg, sub/a.png, gone.jpg are indexed
    assert dict(data.index_skipped) == {"malformed_json": 1, "missing_caption": 1, "missing_image": 1}
    first = data[0]
    assert first["web_caption"] == "first" and first["image"].mode == "RGB"
    assert [c["text"] for c in first["synthetic_captions"]] == ["s1", "s2"]
    assert first["__key__"] == "a" and data[2]["__key__"] == "sub/a"  # keys keep sub-folders apart
    assert data[2]["web_caption"] == "second" and data[2]["source"] == "x" and data[2]["image"].mode == "RGB"
    assert data[1]["web_caption"] == "second"  # b.jpg is unreadable: the next loadable sample stands in
    assert data[3]["web_caption"] == "first"  # gone.jpg: wraps around
    assert dict(data.skipped) == {"corrupt_image": 1, "missing_image": 1}
    counts = data[3]["__skip_counts__"]
    assert sorted(counts.values(), key=len) == [dict(data.skipped), dict(data.index_skipped)]
    assert FolderDataset(tmp_path / "folder" / "captions.jsonl").records == data.records  # the file itself
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        FolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        FolderDataset(tmp_path / "nowhere")
    with pytest.raises(IndexError):
        data[4]


def test_coco_layouts():
    coco = FolderDataset(COCO_VAL)  # images from the split's folder beside "annotations"
    raw = json.loads(COCO_VAL.read_text())
    assert len(coco) == len(raw["images"]) and coco.layout == "coco"
    sample = coco[0]
    first = raw["images"][0]
    captions = [a["caption"] for a in raw["annotations"] if a["image_id"] == first["id"]]
    assert sample["__key__"] == Path(first["file_name"]).stem
    assert sample["web_caption"] == " ".join(captions[0].split())
    assert len(sample["synthetic_captions"]) == len(captions) - 1 >= 4
    assert {c["template"] for c in sample["synthetic_captions"]} == {"coco"}
    assert sample["image"].mode == "RGB" and sample["image"].size == (first["width"], first["height"])
    train_images = len(json.loads((COCO / "annotations" / "captions_train2017.json").read_text())["images"])
    root = FolderDataset(COCO)  # the COCO root: the training split only, val2017 is the eval's test set
    assert root.splits == ["train2017"] and len(root) == train_images
    assert not {s["__key__"] for s in (root.records)} & {r["__key__"] for r in coco.records}
    both = FolderDataset(COCO, splits=["train2017", "val2017"])
    assert len(both) == len(coco) + train_images
    with pytest.raises(ValueError, match="captions_test2017.json"):
        FolderDataset(COCO, splits=["test2017"])
    assert len(CocoCaptionsDataset(COCO_VAL, COCO / "val2017")) == len(coco)


def test_make_shards_cli(tmp_path, capsys):
    out = tmp_path / "builtin"
    assert (
        cli_main(
            [
                "make-shards",
                "--input",
                "builtin:40",
                "--output",
                str(out),
                "--per-shard",
                "16",
                "--image-size",
                "48",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    assert "shard-{000000..000002}.tar" in capsys.readouterr().out
    samples = list(ShardDataset(str(out / "shard-{000000..000002}.tar"), shuffle_shards=False))
    reference = BuiltinShapes(40, 48, seed=0)
    assert [s["web_caption"] for s in samples] == [reference[i]["web_caption"] for i in range(40)]
    assert samples[0]["image"].size == (48, 48) and samples[0]["labels"] == reference[0]["labels"]

    # COCO: the original JPEG bytes are copied, not re-encoded
    assert (
        cli_main(
            [
                "make-shards",
                "--input",
                str(COCO_VAL),
                "--output",
                str(tmp_path / "coco"),
                "--per-shard",
                "50",
                "--prefix",
                "val",
            ]
        )
        == 0
    )
    shards = sorted((tmp_path / "coco").glob("val-*.tar"))
    assert len(shards) == 2
    with tarfile.open(shards[0]) as tar:
        member = tar.getmembers()[0]
        assert tar.extractfile(member).read() == (COCO / "val2017" / member.name).read_bytes()
    coco = list(ShardDataset([str(p) for p in shards]))
    assert len(coco) == len(FolderDataset(COCO_VAL))

    # a folder with bad entries: the good ones are written, the rest counted
    assert (
        cli_main(
            [
                "make-shards",
                "--input",
                str(_jsonl_folder(tmp_path / "folder")),
                "--output",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "'corrupt_image': 1" in printed and "'malformed_json': 1" in printed
    assert [
        s["web_caption"] for s in ShardDataset(str(tmp_path / "f" / "shard-000000.tar"), shuffle_shards=False)
    ] == ["first", "second"]

    assert cli_main(["make-shards", "--input", "builtin:zero", "--output", str(tmp_path / "x")]) == 2
    assert (
        cli_main(["make-shards", "--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]) == 2
    )
