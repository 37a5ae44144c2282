import os

import pytest
import torch

from open_tips.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from open_tips.train.schedules import cosine, linear_warmup, warmup_cosine


def test_schedules():
    assert cosine(0, 100, 0.994, 1.0) == pytest.approx(0.994)
    assert cosine(100, 100, 0.994, 1.0) == pytest.approx(1.0)
    assert cosine(50, 100, 0.0, 1.0) == pytest.approx(0.5)
    assert warmup_cosine(0, 100, 1.0, 0.0, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 1.0, 0.0, 10) == pytest.approx(0.0)
    assert linear_warmup(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(50, 10, 0.04, 0.07) == pytest.approx(0.07)


def test_checkpoints_atomic_rotation_and_damage(tmp_path, monkeypatch):
    for step in (10, 20, 30):
        save_checkpoint({"step": step, "w": torch.full((3,), float(step))}, tmp_path, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020.pt", "step_00000030.pt"]
    # a damaged newest file is skipped in favour of the previous complete one
    (tmp_path / "step_00000030.pt").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path).name == "step_00000020.pt"

    # a failing write (e.g. disk full) leaves no partial file and keeps the earlier checkpoints
    def failing_save(obj, path, *a, **k):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint({"step": 40}, tmp_path, 40)
    assert not (tmp_path / "step_00000040.pt").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert latest_checkpoint(tmp_path).name == "step_00000020.pt"
