"""The one atomic writer: durable (file and directory fsynced before/after the rename), umask-respecting,
and leaving no temporary file and the previous content on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from open_tips.utils import atomic
from open_tips.utils.atomic import (
    atomic_write,
    atomic_write_json,
    remove_stale_temporaries,
    temporary_target,
)


def _record_syncs(monkeypatch) -> list[tuple[str, str]]:
    """Logs ("fsync", path) and ("replace", target) in call order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced descriptors")
def test_file_fsynced_before_rename_and_directory_after(tmp_path: Path, monkeypatch) -> None:
    events = _record_syncs(monkeypatch)
    target = tmp_path / "out" / "model.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"weights"))
    assert target.read_bytes() == b"weights"
    kinds = [kind for kind, _ in events]
    replace_at = kinds.index("replace")
    synced_before = [path for kind, path in events[:replace_at] if kind == "fsync"]
    synced_after = [path for kind, path in events[replace_at:] if kind == "fsync"]
    assert synced_before and temporary_target(Path(synced_before[0]).name) == "model.bin"
    assert synced_after == [str(target.parent)]


def test_mode_follows_the_umask_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == 0o640 == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})

    def half_write(tmp: str) -> None:
        Path(tmp).write_text('{"step": 2')
        raise KeyboardInterrupt  # also an interrupt, not only an Exception

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_write)
    assert target.read_text() == '{\n  "step": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failed_fsync_counts_as_a_failure(tmp_path: Path, monkeypatch) -> None:
    def no_disk(path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "fsync_path", no_disk)
    with pytest.raises(OSError, match="No space"):
        atomic_write(tmp_path / "x.bin", lambda tmp: Path(tmp).write_bytes(b"1"))
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_found_by_target(tmp_path: Path) -> None:
    for name in (".step_00000010.pt.k2j_x9.tmp", ".a.tar.abc.tmp", "step_00000010.pt", ".hidden", "b.tmp"):
        (tmp_path / name).write_text("")
    assert temporary_target(".a.tar.abc.tmp") == "a.tar" and temporary_target("b.tmp") is None
    removed = remove_stale_temporaries(tmp_path, owned=lambda target: target.endswith(".pt"))
    assert [p.name for p in removed] == [".step_00000010.pt.k2j_x9.tmp"]
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".a.tar.abc.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "b.tmp", "step_00000010.pt"]
