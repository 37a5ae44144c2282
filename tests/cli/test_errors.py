"""Every `open-tips` failure is one line naming the file / key / flag, a non-zero exit and no traceback
(`--debug` shows it), and nothing is left behind. The commands run in subprocesses, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import open_tips
from open_tips.cli import main


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "open_tips.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def _one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"open-tips {command}: error: "), lines[0]
    return lines[0]


def test_version_and_help_without_importing_torch():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"open-tips {open_tips.__version__}"
    # --help lists every command module, read without importing any of them (or torch)
    probe = (
        "import sys\nfrom open_tips.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH False" in proc.stdout
    commands_dir = Path(open_tips.__file__).parent / "commands"
    for module in commands_dir.glob("[!_]*.py"):
        assert f"    {module.stem.replace('_', '-')}" in proc.stdout, module.stem
    assert "train a TIPS model" in proc.stdout  # the help text the command registers


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["optim.lrr=1e-3"], "unknown config key 'optim.lrr'; did you mean optim.lr"),
        (["optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
        (["--preset", "huge"], "unknown preset 'huge'; known: tiny"),
        (["loss.contrastive=cosine"], "loss.contrastive: 'cosine' is not one of softmax, sigmoid"),
    ],
)
def test_train_config_mistakes_are_one_line(tmp_path, args, expected):
    run_dir = tmp_path / "run"
    line = _one_error_line(_cli("train", "--output-dir", str(run_dir), *args), "train")
    assert expected in line
    assert not run_dir.exists()


def test_train_yaml_mistakes_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-3,\n")
    line = _one_error_line(_cli("train", "--config", str(bad)), "train")
    assert f"{bad}: malformed YAML" in line
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  steps: many\n")
    line = _one_error_line(_cli("train", "--config", str(wrong)), "train")
    assert f"{wrong}: train.steps: expected an integer, got 'many'" in line
    line = _one_error_line(_cli("train", "--config", str(tmp_path / "none.yaml")), "train")
    assert f"--config {tmp_path / 'none.yaml'}: no such file" in line


def test_overrides_are_taken_after_options_too():
    proc = _cli("train", "--steps", "7", "train.log_every=3", "--print-config", "optim.lr=0.5")
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert config["train"]["steps"] == 7 and config["train"]["log_every"] == 3
    assert config["optim"]["lr"] == 0.5
    # what is not an override is still refused by name, wherever it stands
    proc = _cli("train", "train.seed=1", "--print-config", "stray")
    assert proc.returncode == 2 and "unrecognized arguments: stray" in proc.stderr
    proc = _cli("train", "--print-config", "stray")
    assert proc.returncode == 2 and "override 'stray' is not of the form key=value" in proc.stderr


def test_train_missing_init_from_and_bad_tokenizer(tmp_path):
    run_dir = tmp_path / "run"
    missing = tmp_path / "nope_vision.npz"
    line = _one_error_line(_cli("train", "--output-dir", str(run_dir), "--init-from", str(missing)), "train")
    assert f"--init-from {missing}: no such file or directory" in line
    junk = tmp_path / "tokenizer.model"
    junk.write_text("not a sentencepiece model")
    line = _one_error_line(_cli("train", "--output-dir", str(run_dir), f"data.tokenizer={junk}"), "train")
    assert f"data.tokenizer: {junk}: not a SentencePiece model" in line
    assert not run_dir.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_cuda_without_gpu_stops_before_anything_is_written(checkpoint, tmp_path):
    image = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), "red").save(image)
    out = tmp_path / "emb.npz"
    line = _one_error_line(
        _cli("embed", str(image), "--checkpoint", str(checkpoint), "--device", "cuda", "--output", str(out)),
        "embed",
    )
    assert "--device cuda: no CUDA GPU is available here; use --device cpu" in line
    assert not out.exists()
    run_dir = tmp_path / "run"
    line = _one_error_line(_cli("train", "--output-dir", str(run_dir), "--device", "cuda"), "train")
    assert "--device cuda: no CUDA GPU" in line
    assert not run_dir.exists()
    line = _one_error_line(_cli("train", "--output-dir", str(run_dir), "train.device=cuda:0"), "train")
    assert "train.device cuda:0: no CUDA GPU" in line  # the same check for a config value
    line = _one_error_line(_cli("train", "--output-dir", str(run_dir), "--device", "gpu"), "train")
    assert "--device gpu: not a device; use cpu, cuda, cuda:N or mps" in line
    assert not run_dir.exists()
    # the same single check for every command, before its outputs exist
    captions = tmp_path / "captions"
    line = _one_error_line(
        _cli("caption", "--model", "m", "--input", str(image), "--output", str(captions), "--device", "cuda"),
        "caption",
    )
    assert "--device cuda: no CUDA GPU" in line and not captions.exists()
    results = tmp_path / "eval"
    line = _one_error_line(
        _cli("eval", "--checkpoint", str(checkpoint), "--output", str(results), "--device", "cuda:1"), "eval"
    )
    assert "--device cuda:1: no CUDA GPU" in line and not results.exists()


def test_wrong_config_names_both_shapes_briefly(checkpoint, tmp_path):
    image = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), "red").save(image)
    out = tmp_path / "emb.npz"
    proc = _cli(
        "embed", str(image), "--checkpoint", str(checkpoint), "--config", "tipsv2-b14", "--output", str(out)
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) < 300, proc.stderr[:500]
    assert "checkpoint width 64 depth 2 vs tipsv2-b14 width 768 depth 12" in lines[0]
    assert not out.exists()
    # a non-SentencePiece --tokenizer is named, not a traceback
    junk = tmp_path / "junk.model"
    junk.write_text("nope")
    proc = _cli(
        "zeroshot", str(image), "--checkpoint", str(checkpoint), "--config", "tiny", "--tokenizer", str(junk),
        "--classes", "cat,dog",
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{junk}: not a SentencePiece model" in proc.stderr


def test_debug_shows_the_traceback():
    proc = _cli("train", "optim.lrr=1", "--print-config", "--debug")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "CommandError: unknown config key 'optim.lrr'" in proc.stderr


def test_unexpected_failures_are_one_line_with_the_type(monkeypatch, capsys):
    import open_tips.commands.train as train_command

    def broken(_args):
        raise RuntimeError("something\ninternal broke")

    monkeypatch.setattr(train_command, "run", broken)
    assert main(["train"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "open-tips train: error: RuntimeError: something internal broke (--debug shows the traceback)"
    ]
    monkeypatch.setenv("OPEN_TIPS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="internal broke"):
        main(["train"])
