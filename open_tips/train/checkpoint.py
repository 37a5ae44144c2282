"""Training checkpoints: written atomically, found newest-complete-first, loaded with ``weights_only``.

A checkpoint is ``checkpoints/step_{step:08d}.pt``. It is written by open_tips.utils.atomic: to a hidden
temporary file in the same directory, fsynced, renamed, directory fsynced, so a kill or a full disk
mid-write leaves the previous checkpoints intact and no partial file under a checkpoint name; temporary files a kill leaves behind are removed by
``clean_stale_temporaries`` when the next run starts. Written files get the permissions the user's umask
gives (not the 0600 of a bare temporary file).

Run directories: ``run_outputs`` lists what an earlier ``train`` left in a directory (checkpoints, metrics,
exports, logs), ``clear_run_outputs`` removes exactly those (``--overwrite``).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The file naming is shared with the readers (load_pretrained) one layer down; re-exported for callers here.
from open_tips.formats.training import checkpoint_path, list_checkpoints
from open_tips.formats.training import latest_checkpoint as latest_checkpoint
from open_tips.utils.atomic import atomic_write, atomic_write_text, remove_stale_temporaries

log = logging.getLogger(__name__)

# What `open-tips train` writes into a run directory. A directory holding any of RUN_STARTED has a run in it
# (refused without --resume / --overwrite); the others alone are what a start that failed early leaves.
RUN_STARTED = ("checkpoints", "metrics.jsonl", "final", "tensorboard", "eval", "loss_curves.png")
RUN_OUTPUTS = (*RUN_STARTED, "config.yaml", "tokenizer.model", "tokenizer.vocab")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    atomic_write_text(path, text)


def clean_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporary files that a killed checkpoint write left in ``directory``; returns them.
    Call only when no other process writes there (at the start of a run, on the main rank)."""
    return remove_stale_temporaries(directory)


def run_outputs(run_dir: str | os.PathLike, started_only: bool = True) -> list[str]:
    """Names of the training outputs present in ``run_dir`` (those of RUN_STARTED, or all RUN_OUTPUTS)."""
    run_dir = Path(run_dir)
    names = RUN_STARTED if started_only else RUN_OUTPUTS
    return [name for name in names if (run_dir / name).exists()]


def clear_run_outputs(run_dir: str | os.PathLike) -> list[str]:
    """Deletes the training outputs in ``run_dir`` (nothing else); returns the names removed."""
    removed = run_outputs(run_dir, started_only=False)
    for name in removed:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return removed


def save_checkpoint(payload: dict[str, Any], directory: str | os.PathLike, step: int, keep: int = 2) -> Path:
    path = checkpoint_path(directory, step)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    if keep > 0:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    import ast

    python_state = ast.literal_eval(state["python"])
    random.setstate(python_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
