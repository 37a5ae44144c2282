"""Vision and text towers, the TIPS model and the registry of named configs."""

from open_tips.models.configs import (
    TextConfig,
    TIPSConfig,
    VisionConfig,
    get_config,
    list_configs,
    register_config,
)
from open_tips.models.dpt import DPTConfig, DPTDecoder
from open_tips.models.text import TextTransformer
from open_tips.models.tips import TIPSModel, create_model
from open_tips.models.vision import ImageEmbeddings, VisionTransformer

__all__ = [
    "DPTConfig",
    "DPTDecoder",
    "ImageEmbeddings",
    "TIPSConfig",
    "TIPSModel",
    "TextConfig",
    "TextTransformer",
    "VisionConfig",
    "VisionTransformer",
    "create_model",
    "get_config",
    "list_configs",
    "register_config",
]
