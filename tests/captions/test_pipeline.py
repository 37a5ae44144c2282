"""The captioning pipeline end to end on a tiny random PaliGemma and real COCO images (no network)."""

import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from open_tips.captions.pipeline import clean_caption, discover_units
from open_tips.captions.tiny import make_tiny_paligemma
from open_tips.cli import main
from open_tips.data.shards import ShardDataset, write_shards

COCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-mini" / "val2017"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_paligemma(tmp_path_factory.mktemp("tinypg"))


def _shards(folder: Path, count: int, per_shard: int, bad: bool = False) -> list[Path]:
    from PIL import Image

    images = sorted(COCO.glob("*.jpg"))[: count]
    samples = [{"__key__": p.stem, "image": Image.open(p).convert("RGB").resize((64, 48)),
                "web_caption": f"photo {i}", "synthetic_captions": []} for i, p in enumerate(images)]
    if bad:
        samples[1]["image"] = b"not an image"
        samples[1]["image_ext"] = "jpg"
        samples[2]["web_caption"] = ""
    return [Path(p) for p in write_shards(samples, str(folder / "in-%06d.tar"), per_shard)]


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}


def test_end_to_end_and_trainer_reads_output(tiny_model, tmp_path):
    inputs = _shards(tmp_path / "in", 6, 3, bad=True)
    originals = {p: p.read_bytes() for p in inputs}
    out = tmp_path / "out"
    assert main(["caption", "--model", str(tiny_model), "--input", str(tmp_path / "in" / "in-{000000..000001}.tar"),
                 "--output", str(out), "--template", "short", "rewrite", "--batch-size", "2",
                 "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert all(p.read_bytes() == data for p, data in originals.items())  # inputs untouched
    produced = sorted(out.glob("in-*.tar"))
    assert [p.name for p in produced] == ["in-000000.tar", "in-000001.tar"]
    before, after = _members(inputs[0]), _members(produced[0])
    assert set(before) == set(after)
    jpg = next(k for k in before if k.endswith(".jpg"))
    assert before[jpg] == after[jpg]  # original members copied byte for byte
    good_json = json.loads(after[next(k for k in after if k.endswith(".json"))])
    templates = [c["template"] for c in good_json["synthetic_captions"]]
    assert templates == ["short", "rewrite"]
    assert all(c["model"] == tiny_model.name for c in good_json["synthetic_captions"])
    summary = json.loads((out / "summary-rank0.json").read_text())
    assert summary["captioned"] == 4 and summary["skipped"] == 1
    assert summary["failed"].get("corrupt_image") == 1
    assert summary["failed"].get("missing_web_caption_for_rewrite") == 1
    # the trainer's reader takes the output as training data
    read = list(ShardDataset(str(out / "in-{000000..000001}.tar"), shuffle_shards=False))
    assert len(read) == 4  # the corrupt image and the sample without web caption are skipped there too
    assert all(len(s["synthetic_captions"]) >= 1 for s in read)


def test_sidecar_and_disjoint_ranks(tiny_model, tmp_path):
    _shards(tmp_path / "in", 8, 2)
    pattern = str(tmp_path / "in" / "in-{000000..000003}.tar")
    for rank in range(2):
        assert main(["caption", "--model", str(tiny_model), "--input", pattern, "--output", str(tmp_path / "out"),
                     "--template", "detailed", "--sidecar", "--rank", str(rank), "--world-size", "2",
                     "--max-new-tokens", "4", "--device", "cpu"]) == 0
    files = sorted((tmp_path / "out").glob("*.jsonl"))
    assert [f.name for f in files] == [f"in-00000{i}.jsonl" for i in range(4)]
    keys = [json.loads(line)["key"] for f in files for line in f.read_text().splitlines()]
    assert len(keys) == 8 and len(set(keys)) == 8
    done = {json.loads(p.read_text())["unit"] for p in (tmp_path / "out" / "_done").glob("*.json")}
    rank0 = json.loads((tmp_path / "out" / "summary-rank0.json").read_text())
    assert rank0["units_total"] == 2 and done == {f"in-00000{i}" for i in range(4)}


def test_folder_input(tiny_model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(COCO.glob("*.jpg"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    units = discover_units([str(folder)], chunk_size=2)
    assert [len(u.images) for u in units] == [2, 1]
    assert main(["caption", "--model", str(tiny_model), "--input", str(folder), "--output", str(tmp_path / "out"),
                 "--chunk-size", "2", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "out").glob("images-*.tar"))) == 2


def test_kill_and_resume(tiny_model, tmp_path):
    _shards(tmp_path / "in", 12, 2)  # 6 units
    pattern = str(tmp_path / "in" / "in-{000000..000005}.tar")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "open_tips.cli", "caption", "--model", str(tiny_model), "--input", pattern,
               "--output", str(out), "--max-new-tokens", "24", "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "_done").glob("*.json")) if (out / "_done").exists() else []) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_first = {p.stem for p in (out / "_done").glob("*.json")}
    assert 1 <= len(finished_first) < 6, "kill the run mid-way"
    marker_times = {p.stem: p.stat().st_mtime for p in (out / "_done").glob("*.json")}
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    summary = json.loads((out / "summary-rank0.json").read_text())
    assert summary["units_skipped_done"] == len(finished_first)
    assert {p.stem for p in (out / "_done").glob("*.json")} == {f"in-00000{i}" for i in range(6)}
    assert all((out / "_done" / f"{name}.json").stat().st_mtime == t for name, t in marker_times.items())
    assert not list(out.glob(".*.tmp"))
    assert len(list(ShardDataset(str(out / "in-{000000..000005}.tar")))) == 12


def test_clean_caption():
    assert clean_caption("caption en  a cat\n on a  mat", "caption en") == "a cat on a mat"
    assert clean_caption("  Describe EN: a dog", "describe en") == "a dog"
