"""open_tips: TIPS / TIPSv2 image-text encoders in plain PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "CheckpointError",
    "ImageEmbeddings",
    "TIPSConfig",
    "TIPSModel",
    "create_model",
    "create_model_and_transforms",
    "ImageTransform",
    "get_config",
    "list_configs",
    "load_pretrained",
]

# Public name -> module defining it. Imported on first use: torch alone takes seconds to import, and
# `open-tips --help` / `--version` (and `import open_tips` for the version) need none of it.
_LAZY = {
    "CheckpointError": "open_tips.formats.common",
    "load_pretrained": "open_tips.formats.load",
    "ImageEmbeddings": "open_tips.models",
    "TIPSConfig": "open_tips.models",
    "TIPSModel": "open_tips.models",
    "create_model": "open_tips.models",
    "get_config": "open_tips.models",
    "list_configs": "open_tips.models",
    "ImageTransform": "open_tips.inference.transforms",
    "create_model_and_transforms": "open_tips.inference.transforms",
}
# Sub-packages stay reachable as attributes (`open_tips.models`), as when this file imported them eagerly.
_SUBPACKAGES = ("captions", "commands", "data", "eval", "formats", "inference", "losses", "models", "train")

if TYPE_CHECKING:
    from open_tips.formats.common import CheckpointError
    from open_tips.formats.load import load_pretrained
    from open_tips.inference.transforms import ImageTransform, create_model_and_transforms
    from open_tips.models import (
        ImageEmbeddings,
        TIPSConfig,
        TIPSModel,
        create_model,
        get_config,
        list_configs,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'open_tips' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})
