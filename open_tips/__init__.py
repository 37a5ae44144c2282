"""open_tips: TIPS / TIPSv2 image-text encoders in plain PyTorch."""

from open_tips.formats.common import CheckpointError
from open_tips.formats.load import load_pretrained
from open_tips.models import ImageEmbeddings, TIPSConfig, TIPSModel, create_model, get_config, list_configs

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


def __getattr__(name: str):
    # imported on first use: the transforms pull in torchvision (about 2 s), which `open-tips --help` and
    # plain loading do not need
    if name in ("ImageTransform", "create_model_and_transforms"):
        from open_tips.inference import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'open_tips' has no attribute {name!r}")
