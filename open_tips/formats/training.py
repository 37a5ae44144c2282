"""The layout of open_tips training checkpoints, for readers: ``<run>/checkpoints/step_{step:08d}.pt``.

``open_tips.train.checkpoint`` writes them; ``load_pretrained`` (a run directory or one ``.pt``) and resume
find them here, so the naming lives in one place below both.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoints in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint that loads; an unreadable one (e.g. damaged on disk) is skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return path
        except Exception as err:  # noqa: BLE001 - any failure means "not usable", try the previous one
            log.warning("skipping unreadable checkpoint %s (%s)", path, err)
    return None


__all__ = ["checkpoint_path", "latest_checkpoint", "list_checkpoints"]
