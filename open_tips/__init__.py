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
    "get_config",
    "list_configs",
    "load_pretrained",
]
