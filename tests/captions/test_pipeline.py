"""The captioning pipeline end to end: the tiny random PaliGemma on shards of real COCO images (no network)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from open_tips.captions.model import Captioner, DecodeSettings
from open_tips.captions.pipeline import PipelineConfig, SystemicFailure, run_pipeline
from open_tips.captions.prompts import parse_templates
from open_tips.cli import main

from .conftest import digest, make_shards, sample_members, tar_members, write_tar

ROOT = Path(__file__).resolve().parents[2]


def _cli(model: Path, inputs: list[str], output: Path, *extra: str) -> int:
    return main(
        [
            "caption",
            "--model",
            str(model),
            "--input",
            *inputs,
            "--output",
            str(output),
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
            "--batch-size",
            "2",
            "--no-progress",
            *extra,
        ]
    )


def _check_training_format(path: Path) -> int:
    """The contract's sample format, read back independently: <key>.jpg + <key>.json with web_caption and a list
    of synthetic captions whose new entries are {"text", "template", "model"} dicts."""
    count = 0
    for name, data in tar_members(path):
        if name.endswith(".json"):
            meta = json.loads(data)
            if "synthetic_captions" in meta and meta.get("web_caption"):
                assert isinstance(meta["synthetic_captions"], list)
                assert all(
                    isinstance(c, str) or {"text", "template", "model"} <= set(c)
                    for c in meta["synthetic_captions"]
                )
                count += 1
    return count


def test_shards_end_to_end(tiny_model: Path, coco_jpegs, tmp_path: Path) -> None:
    (k0, j0), (k1, j1), (k2, j2), (k3, j3), (k4, j4), (k5, j5) = coco_jpegs[:6]
    existing = ["an older caption", {"text": "old detailed", "template": "detailed", "model": "other-model"}]
    shard_a = write_tar(
        tmp_path / "in" / "part-000000.tar",
        [
            sample_members(
                k0, j0, web="a cat on a sofa", synthetic=existing, extra={"url": "http://x", "w": 96}
            ),
            sample_members(k1, j1[:300], web="truncated jpeg"),  # corrupt image
            sample_members(k2, j2, web=None),  # no web caption: rewrite cannot run
        ],
    )
    shard_b = write_tar(
        tmp_path / "in" / "part-000001.tar",
        [
            [(f"{k3}.jpg", j3), (f"{k3}.txt", b"alt-text from a txt member")],  # img2dataset style, no .json
            sample_members(k4, j4, web="two dogs"),
            [(f"{k5}.json", b"{not json"), (f"{k5}.jpg", j5)],
        ],
    )
    before = {p: digest(p) for p in (shard_a, shard_b)}
    out = tmp_path / "out"
    assert (
        _cli(
            tiny_model,
            [str(tmp_path / "in" / "part-{000000..000001}.tar")],
            out,
            "--template",
            "detailed",
            "rewrite",
        )
        == 0
    )
    assert {p: digest(p) for p in (shard_a, shard_b)} == before  # inputs untouched

    for source in (shard_a, shard_b):
        original, produced = tar_members(source), tar_members(out / source.name)
        names = [n for n, _ in produced]
        if source is shard_b:  # a .json is added right after the members of the sample that had none
            assert names[names.index(f"{k3}.txt") + 1] == f"{k3}.json"
            names.remove(f"{k3}.json")
        assert names == [n for n, _ in original]
        originals = dict(original)
        for name, data in produced:
            if not name.endswith(".json"):
                assert data == originals[name]  # images and other members byte for byte
    produced = {n: d for p in (shard_a, shard_b) for n, d in tar_members(out / p.name)}
    meta0 = json.loads(produced[f"{k0}.json"])
    assert meta0["url"] == "http://x" and meta0["w"] == 96 and meta0["web_caption"] == "a cat on a sofa"
    assert meta0["synthetic_captions"][:2] == existing  # originals kept as they were, new ones appended
    new = meta0["synthetic_captions"][2:]
    assert [c["template"] for c in new] == ["detailed", "rewrite"]
    assert all(c["model"] == tiny_model.name and c["text"] for c in new)
    assert produced[f"{k1}.json"] == dict(tar_members(shard_a))[f"{k1}.json"]  # failed: json unchanged
    assert [c["template"] for c in json.loads(produced[f"{k2}.json"])["synthetic_captions"]] == ["detailed"]
    assert [c["template"] for c in json.loads(produced[f"{k3}.json"])["synthetic_captions"]] == [
        "detailed",
        "rewrite",
    ]
    assert "web_caption" not in json.loads(produced[f"{k3}.json"])  # the .txt member still carries it
    assert produced[f"{k5}.json"] == b"{not json"

    summary = json.loads((out / "summary-rank0.json").read_text())
    assert (summary["samples"], summary["captioned"], summary["failed"], summary["skipped"]) == (6, 4, 3, 0)
    assert summary["failed_reasons"] == {"corrupt_image": 1, "missing_web_caption": 1, "malformed_json": 1}
    assert summary["by_template"] == {"detailed": {"added": 4}, "rewrite": {"added": 3, "failed": 1}}
    reasons = {(f["key"], f["template"]): f["reason"] for f in summary["failures"]}
    assert reasons == {
        (k1, "*"): "corrupt_image",
        (k2, "rewrite"): "missing_web_caption",
        (k5, "*"): "malformed_json",
    }
    marker = json.loads((out / "_done" / "part-000000.json").read_text())
    assert marker["samples"] == 3 and {f["key"] for f in marker["failures"]} == {k1, k2}
    assert json.loads((out / "summary.json").read_text())["captions_added"] == 7
    assert _check_training_format(out / shard_a.name) == 1  # k0 (k2 has no web caption, k1 failed)

    try:  # the training reader, where the data package provides it
        from open_tips.data.shards import ShardDataset
    except ImportError:
        return
    read = {
        s["__key__"]: s for s in ShardDataset(str(out / "part-{000000..000001}.tar"), shuffle_shards=False)
    }
    assert set(read) == {k0, k3, k4}  # the others lack a web caption or are broken
    assert isinstance(read[k0]["image"], Image.Image)
    assert [c["template"] for c in read[k4]["synthetic_captions"]] == ["detailed", "rewrite"]

    # Captioning the output again with one more template adds only the new template's captions.
    again = tmp_path / "again"
    assert _cli(tiny_model, [str(out / "part-*.tar")], again, "--template", "detailed", "short") == 0
    summary = json.loads((again / "summary-rank0.json").read_text())
    assert summary["by_template"] == {"detailed": {"already_present": 4}, "short": {"added": 4}}


class StubCaptioner:
    """Stands in for a model: echoes the prompt, or misbehaves for chosen images (by their width)."""

    name, prompt_style = "stub", "prefix"

    def __init__(self, empty_width: int = -1, raise_width: int = -1, always_raise: bool = False) -> None:
        self.empty_width, self.raise_width, self.always_raise = empty_width, raise_width, always_raise
        self.calls: list[int] = []

    def generate(self, images: list[Image.Image], prompts: list[str], settings: DecodeSettings) -> list[str]:
        self.calls.append(len(images))
        if self.always_raise or any(i.width == self.raise_width for i in images):
            raise RuntimeError("boom")
        return ["" if i.width == self.empty_width else f"caption for {p}" for i, p in zip(images, prompts)]


def _resized(data: bytes, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).resize((width, 48)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_bad_generations_are_recorded_not_fatal(coco_jpegs, tmp_path: Path) -> None:
    jpegs = [(key, _resized(data, 40 + i)) for i, (key, data) in enumerate(coco_jpegs[:4])]
    make_shards(tmp_path / "in", jpegs, 4)
    config = PipelineConfig(parse_templates(["short"]), batch_size=4, progress=False)
    stub = StubCaptioner(empty_width=40, raise_width=41)
    summary = run_pipeline([str(tmp_path / "in" / "in-000000.tar")], tmp_path / "out", config, stub, "stub")
    assert summary["failed_reasons"] == {"empty_output": 1, "generation_error": 1}
    assert {(f["key"], f["reason"]) for f in summary["failures"]} == {
        (jpegs[0][0], "empty_output"),
        (jpegs[1][0], "generation_error"),
    }
    assert stub.calls == [4, 1, 1, 1, 1]  # the failing batch was retried one sample at a time
    # A model that fails on everything is a broken set-up, not bad input: the job stops after 8 in a row.
    make_shards(tmp_path / "in2", coco_jpegs[:10], 10)
    with pytest.raises(SystemicFailure, match="8 samples in a row"):
        run_pipeline(
            [str(tmp_path / "in2" / "in-000000.tar")],
            tmp_path / "out2",
            config,
            StubCaptioner(always_raise=True),
            "stub",
        )
    assert not list((tmp_path / "out2" / "_done").glob("*.json"))  # not marked done: a rerun tries again
    assert not list((tmp_path / "out2").glob("*.tar")) and not list((tmp_path / "out2").glob(".*tmp*"))


def test_resume_after_a_fault_mid_unit(tiny_model: Path, coco_jpegs, tmp_path: Path) -> None:
    make_shards(tmp_path / "in", coco_jpegs[:8], 2)  # 4 units
    inputs = [str(tmp_path / "in" / "in-*.tar")]
    captioner = Captioner(str(tiny_model), device="cpu")
    config = PipelineConfig(
        parse_templates(["short"]), DecodeSettings(max_new_tokens=4), batch_size=1, progress=False
    )
    reference = tmp_path / "reference"
    run_pipeline(inputs, reference, config, captioner, captioner.name)

    events: list[tuple[str, str]] = []

    def crash(event: str, unit: str, done: int) -> None:
        events.append((event, unit))
        if unit == "in-000002" and event == "batch":
            raise KeyboardInterrupt  # dies after the first batch of the third unit

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(inputs, out, config, captioner, captioner.name, hook=crash)
    assert sorted(p.stem for p in (out / "_done").glob("*.json")) == ["in-000000", "in-000001"]
    assert not (out / "in-000002.tar").exists() and not list(out.glob(".*tmp*"))
    with pytest.raises(ValueError, match="--resume"):
        run_pipeline(inputs, out, config, captioner, captioner.name)

    events.clear()
    config.resume = True
    summary = run_pipeline(
        inputs, out, config, captioner, captioner.name, hook=lambda *e: events.append(e[:2])
    )
    assert [u for e, u in events if e == "unit"] == ["in-000002", "in-000003"]  # no unit redone
    assert summary["units"] == {
        "assigned": 4,
        "processed": 2,
        "skipped_done": 2,
        "unreadable": 0,
        "total_in_job": 4,
    }
    assert summary["skipped"] == 4 and summary["job_complete"]
    for index in range(4):  # identical to the uninterrupted run
        assert digest(out / f"in-00000{index}.tar") == digest(reference / f"in-00000{index}.tar")

    config.templates = parse_templates(["detailed"])  # other settings into the same directory: refused
    with pytest.raises(ValueError, match="other settings"):
        run_pipeline(inputs, out, config, captioner, captioner.name)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from open_tips.captions.model import DecodeSettings
    from open_tips.captions.pipeline import PipelineConfig, caption
    from open_tips.captions.prompts import parse_templates

    def hook(event, unit, done):
        if unit == "in-000001" and event == "batch":
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like an OOM kill or a lost node

    config = PipelineConfig(parse_templates(["short"]), DecodeSettings(max_new_tokens=4), batch_size=1,
                            progress=False)
    caption(sys.argv[1], [sys.argv[2]], sys.argv[3], config, device="cpu", hook=hook)
""")


def test_resume_after_sigkill(tiny_model: Path, coco_jpegs, tmp_path: Path) -> None:
    make_shards(tmp_path / "in", coco_jpegs[:6], 2)
    pattern, out = str(tmp_path / "in" / "in-{000000..000002}.tar"), tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(tiny_model), pattern, str(out)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert [p.stem for p in (out / "_done").glob("*.json")] == ["in-000000"]
    assert list(out.glob(".in-000001.tar.*.tmp")), "the killed unit's temporary file is left behind"
    first = (out / "in-000000.tar").stat().st_mtime_ns
    assert _cli(tiny_model, [pattern], out, "--template", "short", "--batch-size", "1", "--resume") == 0
    assert (out / "in-000000.tar").stat().st_mtime_ns == first  # the finished unit was not redone
    assert not list(out.glob(".*tmp*"))  # the stale temporary file is gone
    assert sorted(p.stem for p in (out / "_done").glob("*.json")) == [f"in-00000{i}" for i in range(3)]
    assert json.loads((out / "summary.json").read_text())["captioned"] == 6


def test_two_ranks_split_without_overlap(tiny_model: Path, coco_jpegs, tmp_path: Path) -> None:
    make_shards(tmp_path / "in", coco_jpegs[:10], 2)  # 5 units
    args = [
        "--input",
        str(tmp_path / "in" / "in-*.tar"),
        "--template",
        "short",
        "--sidecar",
        "--max-new-tokens",
        "3",
    ]
    # Rank 1 in a child process that takes its rank from torchrun's variables; rank 0 here, at the same time.
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "open_tips.cli",
            "caption",
            "--model",
            str(tiny_model),
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--no-progress",
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "RANK": "1", "WORLD_SIZE": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert _cli(tiny_model, args[1:2], tmp_path / "out", *args[2:], "--rank", "0", "--world-size", "2") == 0
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()[-2000:]
    out = tmp_path / "out"
    per_rank = [json.loads((out / f"summary-rank{r}.json").read_text()) for r in range(2)]
    assert [s["units"]["processed"] for s in per_rank] == [3, 2]  # units 0, 2, 4 and 1, 3
    done = {
        r: {
            m["unit"]
            for m in map(json.loads, map(Path.read_text, (out / "_done").glob("*.json")))
            if int(m["unit"][-1]) % 2 == r
        }
        for r in range(2)
    }
    assert done == {0: {"in-000000", "in-000002", "in-000004"}, 1: {"in-000001", "in-000003"}}
    keys = [
        json.loads(line)["key"] for f in sorted(out.glob("in-*.jsonl")) for line in f.read_text().splitlines()
    ]
    assert sorted(keys) == sorted(k for k, _ in coco_jpegs[:10])  # complete and disjoint
    records = [json.loads(line) for f in out.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert all(r["synthetic_captions"][0]["template"] == "short" for r in records)
    assert not list(out.glob("*.tar"))  # sidecar mode writes no shards
    assert json.loads((out / "summary.json").read_text())["captioned"] == 10


def test_folder_input_and_damaged_shards(tiny_model: Path, coco_jpegs, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    lines = []
    for index, (key, data) in enumerate(coco_jpegs[:3]):
        (folder / f"{key}.v1.jpg").write_bytes(data)
        lines.append(json.dumps({"image": f"{key}.v1.jpg", "web_caption": f"photo {index}"}))
    lines += ["{broken", json.dumps({"image": "missing.jpg", "web_caption": "gone"})]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    good = make_shards(tmp_path / "in", coco_jpegs[3:7], 2)
    truncated = tmp_path / "in" / "in-000001.tar"
    truncated.write_bytes(good[1].read_bytes()[: 2048 + 700])  # cut inside the first sample's image
    (tmp_path / "in" / "in-000009.tar").write_bytes(b"this is not a tar file" * 10)

    out = tmp_path / "out"
    inputs = [str(folder), str(tmp_path / "in" / "in-*.tar")]
    assert (
        _cli(tiny_model, inputs, out, "--template", "short", "rewrite", "--chunk-size", "2") == 1
    )  # unreadable
    summary = json.loads((out / "summary-rank0.json").read_text())
    assert [u["unit"] for u in summary["unreadable_units"]] == ["in-000009"]
    assert not (out / "_done" / "in-000009.json").exists() and not summary["job_complete"]
    assert summary["failed_reasons"] == {"malformed_jsonl": 1, "missing_image": 1, "truncated_tar_member": 1}
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "in-000000.tar",
        "in-000001.tar",
        "photos-000000.tar",
        "photos-000001.tar",
        "photos-000002.tar",
    ]
    photo = {n: d for p in out.glob("photos-*.tar") for n, d in tar_members(p)}
    key = coco_jpegs[0][0]
    assert photo[f"{key}_v1.jpg"] == coco_jpegs[0][1]
    meta = json.loads(photo[f"{key}_v1.json"])
    assert meta["web_caption"] == "photo 0" and [c["template"] for c in meta["synthetic_captions"]] == [
        "short",
        "rewrite",
    ]

    (tmp_path / "in" / "in-000009.tar").unlink()  # fixed (here: gone); the rerun finishes the job
    write_tar(tmp_path / "in" / "in-000009.tar", [sample_members(*coco_jpegs[8])])
    assert (
        _cli(tiny_model, inputs, out, "--template", "short", "rewrite", "--chunk-size", "2", "--resume") == 0
    )
    assert json.loads((out / "summary-rank0.json").read_text())["units"]["processed"] == 1
    assert json.loads((out / "summary.json").read_text())["units"] == 6


def test_sampling_is_seeded_per_unit_and_bad_arguments_exit_2(
    tiny_model: Path, coco_jpegs, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (shard,) = make_shards(tmp_path / "in", coco_jpegs[:4], 4)
    sampled = ["--template", "short", "--do-sample", "--temperature", "1.5", "--top-p", "0.9"]
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert _cli(tiny_model, [f"pipe:cat {shard}"], tmp_path / name, *sampled, "--seed", seed) == 0
    assert digest(tmp_path / "a" / shard.name) == digest(tmp_path / "b" / shard.name)
    assert digest(tmp_path / "a" / shard.name) != digest(tmp_path / "c" / shard.name)
    for bad in (["--template", "nope"], ["--rank", "2", "--world-size", "2"], ["--batch-size", "0"]):
        assert _cli(tiny_model, [str(shard)], tmp_path / "bad", *bad) == 2
    assert "error" in capsys.readouterr().err
