"""Hugging Face hub ids (``org/name``): resolved through the local cache, downloaded only when allowed.

The cache is the one transformers uses (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), laid out as ``models--org--name/refs/<branch>`` -> commit ->
``snapshots/<commit>/``. As in transformers, a model missing from the cache is downloaded unless the user is
offline (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``) or passes ``local_files_only=True``; offline, the
error lists what the cache holds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from open_tips.formats.common import CheckpointError

# What a TIPS model repository needs: weights, configs, tokenizer (not README images or other formats).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.npz"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE = {"1", "true", "yes", "on"}


def looks_like_hub_id(text: str | os.PathLike) -> bool:
    """``org/name`` that is not a path on disk and has no checkpoint file suffix."""
    text = str(text)
    if not _HUB_ID.match(text) or Path(text).exists():
        return False
    return not text.endswith((".npz", ".pt", ".pth", ".safetensors", ".json"))


def hub_cache_dir() -> Path:
    """The cache directory as transformers finds it, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface" / "hub"


def is_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def cached_model_ids(cache_dir: Path) -> list[str]:
    """``org/name`` of every model repository with at least one snapshot in the cache."""
    if not cache_dir.is_dir():
        return []
    found = []
    for folder in sorted(cache_dir.glob("models--*")):
        snapshots = folder / "snapshots"
        if snapshots.is_dir() and any(snapshots.iterdir()):
            found.append(folder.name[len("models--") :].replace("--", "/"))
    return found


def resolve_hub_id(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """The local snapshot folder of ``repo_id`` at ``revision`` (branch, tag or commit; default ``main``)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(
            f"{repo_id}: reading hub ids needs huggingface_hub (pip install huggingface_hub)"
        ) from err
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    offline = is_offline() if local_files_only is None else local_files_only or is_offline()
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:  # the cache first, without touching the network
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                local_files_only=True,
                allow_patterns=ALLOW_PATTERNS,
            )
        )
    except LocalEntryNotFoundError:
        pass
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{where}: unreadable Hugging Face cache entry in {cache} ({err})") from err
    if offline:
        cached = cached_model_ids(cache)
        listing = ", ".join(cached) if cached else "nothing"
        raise CheckpointError(
            f"{where}: not a local path and not in the Hugging Face cache {cache} (offline, so not downloaded); "
            f"cached models: {listing}"
        )
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=ALLOW_PATTERNS)
        )
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{where}: not a local path, and downloading it failed ({first})") from err
