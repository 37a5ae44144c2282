"""Official TIPS ``.npz`` checkpoints: ``*_vision.npz`` (+ sibling ``*_text.npz``)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from open_tips.formats.common import CheckpointError, atomic_write, split_temperature


def read_npz(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All arrays of an ``.npz`` file as tensors; pickled, truncated or non-npz files are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state: dict[str, torch.Tensor] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                array = archive[key]
                if array.dtype == object:
                    raise CheckpointError(f"{path}: key {key!r} holds Python objects; refusing to unpickle")
                state[key] = torch.from_numpy(np.ascontiguousarray(array))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zipfile.LargeZipFile) as err:
        raise CheckpointError(
            f"{path}: not a readable .npz checkpoint ({type(err).__name__}: {err})"
        ) from err
    return state


def sibling_paths(path: str | os.PathLike) -> tuple[Path | None, Path | None]:
    """(vision, text) paths for a ``*_vision.npz`` or ``*_text.npz`` path; absent siblings are None."""
    path = Path(path)
    name = path.name
    for suffix in ("_vision.npz", "_text.npz"):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            vision = path.with_name(f"{stem}_vision.npz")
            text = path.with_name(f"{stem}_text.npz")
            return (vision if vision.is_file() else None, text if text.is_file() else None)
    return path, None


def _write_npz(path: Path, state: dict[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **state)

    atomic_write(path, write)


def save_official_npz(model, stem: str | os.PathLike) -> list[str]:
    """Writes ``{stem}_vision.npz`` (and ``{stem}_text.npz`` with ``temperature``) in the official layout."""
    stem = str(stem)
    vision = {k: v.detach().float().cpu().numpy() for k, v in model.vision.state_dict().items()}
    paths = [Path(f"{stem}_vision.npz")]
    _write_npz(paths[0], vision)
    if model.text is not None:
        text = {k: v.detach().float().cpu().numpy() for k, v in model.text.state_dict().items()}
        text["temperature"] = np.asarray(float(model.temperature.detach()), dtype=np.float32)
        paths.append(Path(f"{stem}_text.npz"))
        _write_npz(paths[1], text)
    return [str(p) for p in paths]


__all__ = ["read_npz", "sibling_paths", "save_official_npz", "split_temperature"]
