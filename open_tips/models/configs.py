"""Architecture configs and the registry of named models.

Sizes follow the released TIPS v1 / TIPSv2 checkpoints (see docs/architecture.md). The registry maps a
name such as ``tipsv2-b14`` to a :class:`TIPSConfig`; aliases cover the file-name spellings used in
the official release (``so14`` and ``so400m14`` name the same model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Heads per width in the released models; widths not listed fall back to 64-dim heads.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 24}


def heads_for_width(width: int) -> int:
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    if width % 64 == 0:
        return width // 64
    for heads in (8, 4, 2, 1):
        if width % heads == 0:
            return heads
    return 1


@dataclass
class VisionConfig:
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_hidden: int = 3072
    swiglu: bool = False
    patch_size: int = 14
    pos_grid: int = 16
    ln_eps: float = 1e-6
    qkv_bias: bool = True
    layerscale_init: float = 1.0
    drop_path_rate: float = 0.0


@dataclass
class TextConfig:
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_hidden: int = 3072
    vocab_size: int = 32000
    max_len: int = 64
    ln_eps: float = 1e-5


@dataclass
class TIPSConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig | None = field(default_factory=TextConfig)
    temperature: float = 0.01
    image_size: int = 224  # the resolution the model was trained at; inputs may differ
    name: str = "custom"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TIPSConfig:
        data = dict(data)
        vision = VisionConfig(**data.pop("vision"))
        text_data = data.pop("text", None)
        text = TextConfig(**text_data) if text_data is not None else None
        return cls(vision=vision, text=text, **data)


def _vision(size: str, pos_grid: int) -> VisionConfig:
    width, depth, mlp, swiglu = {
        "s": (384, 12, 1536, False),
        "b": (768, 12, 3072, False),
        "l": (1024, 24, 4096, False),
        "so400m": (1152, 27, 4304, False),
        # SwiGLU hidden = (int(4 * 1536 * 2 / 3) + 7) // 8 * 8, as in DINOv2's fused SwiGLU.
        "g": (1536, 40, 4096, True),
    }[size]
    return VisionConfig(
        width=width,
        depth=depth,
        heads=heads_for_width(width),
        mlp_hidden=mlp,
        swiglu=swiglu,
        pos_grid=pos_grid,
    )


def _text(size: str) -> TextConfig:
    width, depth, mlp = {
        "s": (384, 12, 1536),
        "b": (768, 12, 3072),
        "l": (1024, 12, 4096),
        "so400m": (1152, 27, 4304),
        "g": (1536, 12, 6144),
    }[size]
    return TextConfig(width=width, depth=depth, heads=heads_for_width(width), mlp_hidden=mlp)


_REGISTRY: dict[str, TIPSConfig] = {}
_ALIASES: dict[str, str] = {}


def register_config(config: TIPSConfig, *aliases: str) -> None:
    _REGISTRY[config.name] = config
    for alias in aliases:
        _ALIASES[alias] = config.name


# TIPS v1: 16x16 position grid (224 px training), "hr" checkpoints fine-tuned at 448 px.
for _size, _file in (("s", "s14"), ("b", "b14"), ("l", "l14")):
    register_config(
        TIPSConfig(vision=_vision(_size, 16), text=_text(_size), image_size=448, name=f"tips-v1-{_file}-hr"),
        f"tips_oss_{_file}_highres_distilled",
    )
register_config(
    TIPSConfig(
        vision=_vision("so400m", 16), text=_text("so400m"), image_size=448, name="tips-v1-so400m14-hr"
    ),
    "tips_oss_so400m14_highres_largetext_distilled",
    "tips-v1-so14-hr",
)
register_config(
    TIPSConfig(vision=_vision("g", 16), text=_text("g"), image_size=448, name="tips-v1-g14-hr"),
    "tips_oss_g14_highres",
)
register_config(
    TIPSConfig(vision=_vision("g", 16), text=_text("g"), image_size=224, name="tips-v1-g14-lr"),
    "tips_oss_g14_lowres",
)

# TIPSv2: 32x32 position grid; temperatures as released (config.json of the HF checkpoints).
for _size, _file, _temp in (
    ("b", "b14", 0.005065968260169029),
    ("l", "l14", 0.004785),
    ("so400m", "so400m14", 0.004638),
    ("g", "g14", 0.003623),
):
    _aliases = [
        f"tips_v2_oss_{_file}",
        f"tipsv2-{_file}".replace("so400m14", "so14"),
        f"tips_v2_oss_{_file}".replace("so400m14", "so14"),
    ]
    register_config(
        TIPSConfig(
            vision=_vision(_size, 32),
            text=_text(_size),
            temperature=_temp,
            image_size=448,
            name=f"tipsv2-{_file}",
        ),
        *[a for a in _aliases if a != f"tipsv2-{_file}"],
    )

# Tiny configs for tests, CPU training and the built-in dataset.
register_config(
    TIPSConfig(
        vision=VisionConfig(width=64, depth=2, heads=4, mlp_hidden=256, pos_grid=4),
        text=TextConfig(width=64, depth=2, heads=4, mlp_hidden=256, vocab_size=512, max_len=32),
        temperature=0.07,
        image_size=56,
        name="tiny",
    )
)
register_config(
    TIPSConfig(
        vision=VisionConfig(width=64, depth=2, heads=4, mlp_hidden=176, swiglu=True, pos_grid=4),
        text=TextConfig(width=64, depth=2, heads=4, mlp_hidden=256, vocab_size=512, max_len=32),
        temperature=0.07,
        image_size=56,
        name="tiny-swiglu",
    )
)
register_config(
    TIPSConfig(
        vision=VisionConfig(width=192, depth=6, heads=3, mlp_hidden=768, pos_grid=8, drop_path_rate=0.0),
        text=TextConfig(width=192, depth=4, heads=3, mlp_hidden=768, vocab_size=2048, max_len=48),
        temperature=0.07,
        image_size=112,
        name="small-112",
    )
)


def get_config(name: str) -> TIPSConfig:
    """Returns a fresh copy of the named config (aliases accepted)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(list_configs())}")
    return TIPSConfig.from_dict(_REGISTRY[key].to_dict())


def list_configs() -> list[str]:
    return sorted(_REGISTRY)
