"""Official TIPS ``.npz`` checkpoints: ``*_vision.npz`` (+ sibling ``*_text.npz``)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from open_tips.formats.common import CheckpointError, split_temperature
from open_tips.formats.identify import inferred_image_size
from open_tips.models.configs import TIPSConfig, heads_for_width
from open_tips.utils.atomic import atomic_write

# The official layout has no place for an architecture; open_tips adds this key (JSON bytes as uint8) only
# when the weights alone would be read back wrongly (head counts other than the standard ones for the width,
# or a training resolution that the file name and geometry do not imply).
METADATA_KEY = "open_tips_config"


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


def pop_metadata(state: dict[str, torch.Tensor], source: str) -> TIPSConfig | None:
    """Removes and decodes the open_tips architecture record of an npz state dict, if it has one."""
    if METADATA_KEY not in state:
        return None
    raw = state.pop(METADATA_KEY)
    try:
        return TIPSConfig.from_dict(json.loads(bytes(raw.to(torch.uint8).numpy().tobytes()).decode("utf-8")))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{source}: key {METADATA_KEY!r} is not a valid open_tips config ({err})"
        ) from err


def needs_metadata(cfg: TIPSConfig, image_size_read_back: int) -> bool:
    """Whether an npz written from ``cfg`` would be read back as another architecture without a record."""
    if cfg.vision.heads != heads_for_width(cfg.vision.width):
        return True
    if cfg.text is not None and cfg.text.heads != heads_for_width(cfg.text.width):
        return True
    return cfg.image_size != image_size_read_back


def _metadata_array(cfg: TIPSConfig) -> np.ndarray:
    return np.frombuffer(json.dumps(cfg.to_dict(), sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()


def _write_npz(path: Path, state: dict[str, np.ndarray]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **state)

    atomic_write(path, write)


def save_official_npz(model, stem: str | os.PathLike, metadata: bool | None = None) -> list[str]:
    """Writes ``{stem}_vision.npz`` (and ``{stem}_text.npz`` with ``temperature``) in the official layout.

    ``metadata``: True always records the architecture under ``open_tips_config``, False never does and
    refuses a model that would then be read back wrongly, None (default) records it only when needed.
    """
    stem = str(stem)
    cfg = model.cfg
    needed = needs_metadata(cfg, inferred_image_size(cfg, Path(stem).name))
    if metadata is False and needed:
        raise CheckpointError(
            f"{stem}: the official npz layout cannot record this architecture (vision heads {cfg.vision.heads}, "
            f"text heads {cfg.text.heads if cfg.text else '-'}, image size {cfg.image_size}); "
            "allow the open_tips_config key or write an HF directory instead"
        )
    record = {METADATA_KEY: _metadata_array(cfg)} if (metadata or needed) else {}
    vision = {k: v.detach().float().cpu().numpy() for k, v in model.vision.state_dict().items()}
    paths = [Path(f"{stem}_vision.npz")]
    _write_npz(paths[0], {**vision, **record})
    if model.text is not None:
        text = {k: v.detach().float().cpu().numpy() for k, v in model.text.state_dict().items()}
        text["temperature"] = np.asarray(float(model.temperature.detach()), dtype=np.float32)
        paths.append(Path(f"{stem}_text.npz"))
        _write_npz(paths[1], {**text, **record})
    return [str(p) for p in paths]


__all__ = [
    "METADATA_KEY",
    "pop_metadata",
    "read_npz",
    "sibling_paths",
    "save_official_npz",
    "split_temperature",
]
