"""Sharded training checkpoints with ``torch.distributed.checkpoint`` (``train.checkpoint_format=sharded``).

Every rank writes its own shards of the objective (student, teacher, heads, centres) and of the AdamW state;
no rank gathers the full state, so a g/14 run with its teacher and optimiser state never holds it all on
rank 0. Loading reshards: a checkpoint written by W processes resumes on any other number (or on one
process without FSDP), because the state is keyed by parameter names and DCP records each shard's place.

Layout: ``checkpoints/step_{step:08d}.dcp/`` holding DCP's files (``.metadata`` plus one file per rank)
and ``extra.pt`` (step, scaler, per-rank RNG states, counters, configs: small, written by rank 0). The
directory is written under ``.step_{step:08d}.dcp.partial`` and renamed when complete, so a kill mid-save
leaves the previous checkpoints as they were and nothing under a checkpoint name.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{8})\.dcp$")
_PARTIAL = re.compile(r"^\.step_\d{8}\.dcp\.partial$")
EXTRA = "extra.pt"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_main() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def sharded_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.dcp"


def list_sharded(directory: str | os.PathLike) -> list[Path]:
    """Complete sharded checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if (m := _NAME.match(p.name)) and (p / ".metadata").is_file() and (p / EXTRA).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_sharded(directory: str | os.PathLike) -> Path | None:
    """The newest complete sharded checkpoint whose small ``extra.pt`` loads, or None."""
    for path in reversed(list_sharded(directory)):
        try:
            torch.load(path / EXTRA, map_location="cpu", weights_only=True)
            return path
        except Exception as err:  # noqa: BLE001 - any failure means "not usable", try the previous one
            log.warning("skipping unreadable sharded checkpoint %s (%s)", path, err)
    return None


def step_of(path: str | os.PathLike) -> int:
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path}: not a sharded checkpoint name (step_XXXXXXXX.dcp)")
    return int(match.group(1))


def clean_stale_partials(directory: str | os.PathLike) -> list[Path]:
    """Removes ``.step_*.dcp.partial`` directories a killed save left; call on one rank, before saving."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if p.is_dir() and _PARTIAL.match(p.name)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _state(objective: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Sharded (per-rank DTensor under FSDP2) state dicts keyed by parameter names."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {
        "objective": get_model_state_dict(objective),
        "optimizer": get_optimizer_state_dict(objective, optimizer),
    }


def save_sharded(
    directory: str | os.PathLike,
    step: int,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Collective: every rank calls it. ``extra`` (rank 0's is written) must be ``weights_only``-loadable."""
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    final = sharded_path(directory, step)
    partial = directory / f".{final.name}.partial"
    if _is_main():
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    _barrier()
    dcp.save(_state(objective, optimizer), checkpoint_id=str(partial), no_dist=not _distributed())
    if _is_main():
        torch.save(extra, partial / EXTRA)
        if final.exists():  # the same step saved again (e.g. a resumed run's last step)
            shutil.rmtree(final)
        os.replace(partial, final)
        if keep > 0:
            for old in list_sharded(directory)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_sharded(path: str | os.PathLike, objective: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: loads the shards this rank's (possibly differently sharded) objective and optimiser hold;
    returns the checkpoint's ``extra`` dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    path = Path(path)
    if not (path / ".metadata").is_file() or not (path / EXTRA).is_file():
        raise FileNotFoundError(f"{path}: not a complete sharded checkpoint (.metadata or {EXTRA} missing)")
    state = _state(objective, optimizer)
    dcp.load(state, checkpoint_id=str(path), no_dist=not _distributed())
    options = StateDictOptions(strict=True)
    set_model_state_dict(objective, state["objective"], options=options)
    set_optimizer_state_dict(objective, optimizer, state["optimizer"], options=options)
    return torch.load(path / EXTRA, map_location="cpu", weights_only=True)


def full_module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """One module's unsharded CPU state (e.g. the student model for the final export): collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
