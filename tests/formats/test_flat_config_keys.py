"""The original flat ``config.json`` of the TIPSv2 hub repos, with the key names transformers' Tipsv2Config
converts for backward compatibility (``embed_dim``, ``img_size``, ``text_num_heads``, ``max_len``,
``vision_fn`` = vit_base / vit_large / vit_so400m / vit_giant2, ``temperature`` ...): open_tips reads the
same heads, context length, resolution and temperature from them."""

from __future__ import annotations

import pytest

from open_tips.formats.hf import config_fields
from open_tips.inference.transforms import HUB_IDS
from open_tips.models import get_config

# vision_fn -> (layers, heads) as transformers maps them; widths as the registry has them
VISION_FN = {
    "vit_base": ("tipsv2-b14", 12, 12),
    "vit_large": ("tipsv2-l14", 24, 16),
    "vit_so400m": ("tipsv2-so400m14", 27, 16),
    "vit_giant2": ("tipsv2-g14", 40, 24),
}


@pytest.mark.parametrize("vision_fn", sorted(VISION_FN))
def test_flat_keys_give_the_released_architecture(vision_fn):
    name, depth, heads = VISION_FN[vision_fn]
    cfg = get_config(name)
    flat = {
        "embed_dim": cfg.vision.width,
        "img_size": 448,
        "init_values": 1.0,
        "num_register_tokens": 1,
        "patch_size": 14,
        "text_hidden_size": cfg.text.width,
        "text_mlp_dim": cfg.text.mlp_hidden,
        "max_len": 64,
        "text_num_layers": cfg.text.depth,
        "vocab_size": 32000,
        "ffn_layer": "swiglu" if cfg.vision.swiglu else "mlp",
        "vision_fn": vision_fn,
        "temperature": 0.00507,
    }
    fields = config_fields(flat, "config.json")
    assert fields["layout"] == "flat"
    assert (cfg.vision.depth, cfg.vision.heads) == (depth, heads)  # the registry agrees with transformers
    assert fields["vision_heads"] == heads and fields["text_heads"] == cfg.text.heads
    assert fields["max_len"] == 64 and fields["config_image_size"] == 448
    assert fields["temperature"] == pytest.approx(0.00507)
    assert cfg.image_size == 448 and cfg.vision.pos_grid * cfg.vision.patch_size == 448
    # an explicit text_num_heads wins over the vision family's
    assert config_fields({**flat, "text_num_heads": 8}, "config.json")["text_heads"] == 8
    assert HUB_IDS[name] == f"google/{name}"
