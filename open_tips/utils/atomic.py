"""The one atomic file writer of open_tips: checkpoints, exports, shards, captioner outputs and reports.

A file is written under a hidden temporary name beside its target (``.<target name>.<random>.tmp``), fsynced,
given the mode a plain ``open(path, "w")`` would give it (0666 minus the umask, not the 0600 of a bare
temporary file), renamed onto the target, and the directory is fsynced so that the rename itself survives a
crash. Readers therefore see the previous file or the complete new one, never a partial one; a failure removes
the temporary file and leaves the previous target untouched. Temporary files that a killed process leaves
behind are found by ``temporary_target`` / removed by ``remove_stale_temporaries``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What tempfile.mkstemp makes of prefix ".<target>." and suffix ".tmp": ".<target>.<random>.tmp".
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp$")


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` sets it process-wide,
    which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file's (or a directory's) data to disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    try:
        fsync_path(directory)
    except OSError:  # some filesystems (and Windows) refuse fsync on a directory; the rename still happened
        log.debug("could not fsync directory %s", directory)


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Moves a complete temporary file onto ``path``: fsync, umask mode, rename, fsync of the directory.
    For writers that stream into their own temporary file (tar shards); others use ``atomic_write``."""
    fsync_path(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)
    _fsync_directory(Path(path).parent)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` on a temporary file beside ``path``, then ``publish``es it onto ``path``.
    On any failure (also KeyboardInterrupt) the temporary file is removed and ``path`` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    """``payload`` as indented UTF-8 JSON with a final newline."""
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def temporary_target(name: str) -> str | None:
    """The target file name a temporary file of ``atomic_write`` belongs to, or None for any other name."""
    match = _TEMPORARY.match(name)
    return match.group("target") if match else None


def remove_stale_temporaries(
    directory: str | os.PathLike, owned: Callable[[str], bool] = lambda target: True
) -> list[Path]:
    """Removes the temporary files an interrupted write left in ``directory`` whose target name ``owned``
    accepts; returns them. Call only where no other process is writing those targets."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        target = temporary_target(path.name)
        if target is not None and path.is_file() and owned(target):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s", len(removed), directory)
    return removed


__all__ = [
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
    "fsync_path",
    "publish",
    "remove_stale_temporaries",
    "temporary_target",
]
