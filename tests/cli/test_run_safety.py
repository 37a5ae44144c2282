"""`open-tips train` as a user runs it, in subprocesses: a run directory is never silently reused, a signal
saves a checkpoint and says how to resume, and `--resume` continues the run with its own saved config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from open_tips.train.interrupt import GracefulStop, stop_signals_interrupt
from open_tips.train.metrics import read_metrics

# Small and quick; values that differ from the defaults so that a resume which ignored config.yaml shows.
FAST = [
    "data.num_samples=64",
    "data.batch_size=8",
    "train.log_every=1",
    "train.evaluate_at_end=false",
    "train.threads=1",
    "optim.warmup_steps=3",
]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "open_tips.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _fake_run(run_dir: Path) -> None:
    """What an earlier run leaves (contents are irrelevant to the refusal)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000500.pt").write_bytes(b"old")
    (run_dir / "metrics.jsonl").write_text('{"step": 499, "loss": 1.0}\n')


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    _fake_run(run_dir)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    proc = _cli("train", "--output-dir", str(run_dir), *FAST, "--steps", "2")
    assert proc.returncode == 2
    assert f"{run_dir} already holds a run" in proc.stderr
    assert "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # nothing written
    assert (run_dir / "checkpoints" / "step_00000500.pt").read_bytes() == b"old"


def test_resume_without_checkpoint_is_refused_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "new"
    proc = _cli("train", "--resume", "--output-dir", str(run_dir), *FAST)
    assert proc.returncode == 2
    assert "no checkpoint to resume from" in proc.stderr and "without --resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()
    # a folder holding only a damaged checkpoint has nothing to resume either
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000010.pt").write_bytes(b"truncated")
    proc = _cli("train", "--resume", "--output-dir", str(run_dir), *FAST)
    assert proc.returncode == 2 and "no checkpoint to resume from" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints"]


def test_failed_start_leaves_nothing_behind(tmp_path):
    run_dir = tmp_path / "run"
    # passes the up-front checks, fails inside the trainer after it made the run directory
    proc = _cli("train", "--output-dir", str(run_dir), *FAST, f"data.source={tmp_path / 'no_such_folder'}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("open-tips train: error: ")
    assert "Traceback" not in proc.stderr
    assert not run_dir.exists()
    # in a folder that was there before, only what the failed start wrote goes
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "tokenizer.model").write_bytes(b"mine too")
    proc = _cli("train", "--output-dir", str(run_dir), *FAST, f"data.source={tmp_path / 'no_such_folder'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt", "tokenizer.model"]
    assert (run_dir / "tokenizer.model").read_bytes() == b"mine too"


def _wait_for_metrics(run_dir: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    path = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it was signalled: {proc.stderr.read()[-3000:]}")
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and json.loads(lines[0])["step"] == 0:  # this run's first step (not the old run's file)
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no metrics line within the time limit")


def test_sigterm_saves_prints_resume_command_and_resume_continues_with_saved_config(tmp_path):
    run_dir = tmp_path / "run"
    _fake_run(run_dir)  # --overwrite clears an older run first
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "open_tips.cli",
            "train",
            "--output-dir",
            str(run_dir),
            "--overwrite",
            *FAST,
            "train.save_every=1000",  # only the signal can save before step 1000
            "--steps",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    _wait_for_metrics(run_dir, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "SIGTERM received: stopping after this step" in stderr
    assert f"resume with: open-tips train --resume --output-dir {run_dir}" in stderr
    assert "--overwrite: removed" in stderr
    saved = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    assert len(saved) == 1 and saved[0].name != "step_00000500.pt"  # the old run's files are gone
    step = int(saved[0].stem.split("_")[1])
    assert 1 <= step < 1000
    assert json.loads(stdout[stdout.index("{\n") :])["interrupted"] == "SIGTERM"
    payload = torch.load(saved[0], weights_only=True)
    assert payload["step"] == step
    logged = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")]
    assert logged == list(range(step))  # the checkpoint holds every step that was logged
    assert not (run_dir / "final").exists()  # not finished

    # resume: the saved config (batch size 8, save_every 1000, ...) with one override on top
    done = _cli("train", "--resume", "--output-dir", str(run_dir), f"train.steps={step + 2}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"from {saved[0].name} (step {step}) with its saved config.yaml" in done.stderr
    assert f"overrides: train.steps: 1000 -> {step + 2}" in done.stderr
    assert f"resumed from {saved[0]} at step {step}" in done.stderr
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(step + 2))
    summary = json.loads(done.stdout[done.stdout.index("{\n") :])
    assert summary["steps"] == step + 2 and summary["finished"]
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["batch_size"] == 8 and config["train"]["save_every"] == 1000
    assert config["train"]["steps"] == step + 2
    assert (run_dir / "final").is_dir()


def test_graceful_stop_second_signal_stops_at_once_and_handlers_come_back():
    class Solo:  # the loop's distributed context for one process
        def all_true(self, flag: bool) -> bool:
            return flag

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with GracefulStop(verbose=False) as stopper:
        assert not stopper.requested(Solo())
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.requested(Solo()) and stopper.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes; this is never reached
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt), stop_signals_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_under_torchrun_only_rank_zero_prints_config_and_summary(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "open_tips.cli",
            "train",
            "--output-dir",
            str(run_dir),
            *FAST,
            "data.batch_size=4",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("preset: tiny") == 1  # the config's first line
    assert proc.stdout.count('"run_dir"') == 1  # the summary
