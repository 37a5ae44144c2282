"""HF-format directories: ``config.json`` + ``model.safetensors`` as transformers' ``Tipsv2Model`` writes them.

transformers saves the official key names under the prefixes ``vision_encoder.`` / ``text_encoder.`` plus a
``temperature`` scalar; some releases stored their own module names instead (``vision_model.encoder.layer.N
.attention.q_proj`` ...). Files are read by what they contain: both spellings are mapped to the official
names here, so this module does not depend on transformers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from open_tips.formats.common import CheckpointError
from open_tips.utils.atomic import atomic_write

VISION_PREFIXES = ("vision_encoder.", "vision_model.")
TEXT_PREFIXES = ("text_encoder.", "text_model.")

# transformers-internal module names -> official names (after the tower prefix is removed).
_VISION_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.(cls_token|mask_token|register_tokens)$", r"\1"),
    (r"^layernorm\.", "norm."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layer_scale([12])\.lambda1$", r".ls\1.gamma"),
    (r"\.mlp\.down_proj\.", ".mlp.w3."),
]
_TEXT_RENAMES = [
    (r"^final_layer_norm\.", "ln_final."),
    (r"^embeddings\.token_embedding\.", "token_embedding."),
    (r"^encoder\.layers\.(\d+)\.", r"transformer.resblocks.\1."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]
# Split projections that the official layout packs into one tensor: (parts, packed name).
_VISION_PACKED = [
    ((".attention.q_proj.", ".attention.k_proj.", ".attention.v_proj."), ".attn.qkv."),
    ((".mlp.gate_proj.", ".mlp.up_proj."), ".mlp.w12."),
]
_TEXT_PACKED = [((".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj."), ".attn.in_proj_")]
_IGNORED = re.compile(r"(position_ids|embeddings\.position_embedding\.weights)$")


def _pack(state: dict[str, torch.Tensor], packed: list) -> dict[str, torch.Tensor]:
    out = dict(state)
    for parts, target in packed:
        for key in [k for k in state if parts[0] in k]:
            names = [key.replace(parts[0], p) for p in parts]
            if all(n in out for n in names):
                out[key.replace(parts[0], target)] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def _rename(state: dict[str, torch.Tensor], renames: list) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def to_official(state: dict[str, torch.Tensor]) -> tuple[dict, dict, float | None]:
    """Splits a flat HF state dict into official (vision, text) dicts and the temperature."""
    vision: dict[str, torch.Tensor] = {}
    text: dict[str, torch.Tensor] = {}
    temperature = None
    for key, value in state.items():
        if key in ("temperature", "temperature_contrastive"):
            temperature = float(value.reshape(-1)[0])
        elif _IGNORED.search(key):
            continue
        elif key.startswith(VISION_PREFIXES):
            vision[key.split(".", 1)[1]] = value
        elif key.startswith(TEXT_PREFIXES):
            text[key.split(".", 1)[1]] = value
        else:
            vision[key] = value  # a bare vision tower (Tipsv2VisionModel) has no prefix
    if any(k.startswith(("embeddings.", "encoder.")) for k in vision):
        vision = _rename(_pack(vision, _VISION_PACKED), _VISION_RENAMES)
    # transformers writes the vision MLP as mlp.c_fc / mlp.c_proj; the official files say fc1 / fc2.
    vision = _rename(vision, [(r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2.")])
    if any(k.startswith(("embeddings.", "encoder.", "final_layer_norm")) for k in text):
        text = _rename(_pack(text, _TEXT_PACKED), _TEXT_RENAMES)
    return vision, text, temperature


def read_hf_dir(
    directory: str | os.PathLike, vision_only: bool = False
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json contents, flat tensor dict) of an HF-format directory (single file or sharded). With
    ``vision_only``, text-tower tensors are not read from disk at all."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not an HF-format model directory)")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: malformed JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    index_path = directory / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            files = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{index_path}: malformed index (needs a 'weight_map' object)") from err
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{directory}: no model.safetensors (pickled pytorch_model.bin is not loaded)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            with safe_open(str(directory / name), framework="pt") as handle:
                for key in handle.keys():
                    if vision_only and key.startswith(TEXT_PREFIXES):
                        continue
                    state[key] = handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{directory / name}: unreadable safetensors file ({err})") from err
    return config, state


# Heads of the official model families, by the ``vision_fn`` name of the original flat config.
_VISION_FN_HEADS = {"small": 6, "base": 12, "large": 16, "so400m": 16, "so": 16, "giant": 24, "g": 24}
TEMPERATURE_FIELDS = ("temperature", "temperature_contrastive", "temperature_init_value")


def _first(mapping: dict, names: tuple[str, ...]):
    for name in names:
        if mapping.get(name) is not None:
            return mapping[name]
    return None


def config_fields(config: dict, source: str) -> dict:
    """What a ``config.json`` says beyond the weights, whichever layout it has:

    - nested (transformers' ``Tipsv2Config``): ``vision_config`` / ``text_config`` objects,
      ``temperature_init_value``;
    - flat (the original hub repos): ``embed_dim``, ``vision_fn``, ``text_num_layers``, ``ffn_layer``,
      ``temperature`` ... at the top level.

    Returns ``temperature``, ``vision_heads``, ``text_heads``, ``max_len``, ``image_size`` (each None when
    the file does not say) and ``layout`` ("nested" or "flat").
    """
    nested = isinstance(config.get("vision_config"), dict) or isinstance(config.get("text_config"), dict)
    vision = config.get("vision_config") or {}
    text = config.get("text_config") or {}
    extra = config.get("open_tips") or {}
    if nested:
        fields = {
            "layout": "nested",
            "temperature": _first(config, TEMPERATURE_FIELDS),
            "vision_heads": vision.get("num_attention_heads"),
            "text_heads": text.get("num_attention_heads"),
            "max_len": text.get("max_position_embeddings"),
            "image_size": extra.get("image_size"),
            "config_image_size": vision.get("image_size"),
        }
    else:
        vision_heads = _first(config, ("vision_num_heads", "num_heads", "num_attention_heads"))
        vision_fn = str(config.get("vision_fn") or "").lower()
        if vision_heads is None and vision_fn:
            for key, heads in _VISION_FN_HEADS.items():
                if vision_fn.removeprefix("vit_").startswith(key):
                    vision_heads = heads
                    break
        fields = {
            "layout": "flat",
            "temperature": _first(config, TEMPERATURE_FIELDS),
            "vision_heads": vision_heads,
            "text_heads": _first(config, ("text_num_heads", "text_num_attention_heads")) or vision_heads,
            "max_len": _first(
                config, ("max_len", "text_max_len", "context_length", "max_position_embeddings")
            ),
            "image_size": extra.get("image_size"),
            "config_image_size": _first(config, ("image_size", "img_size", "image_resolution")),
        }
    for key in ("vision_heads", "text_heads", "max_len", "image_size", "config_image_size"):
        value = fields[key]
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise CheckpointError(
                f"{source}: config field for {key} must be a positive integer, got {value!r}"
            )
        fields[key] = value
    temperature = fields["temperature"]
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise CheckpointError(f"{source}: temperature must be a positive number, got {temperature!r}")
        fields["temperature"] = float(temperature)
    return fields


def mlp_ratio(width: int, hidden: int, swiglu: bool) -> float:
    """The ``mlp_ratio`` for which transformers rebuilds exactly ``hidden`` features."""
    if swiglu:
        if hidden % 8:
            raise ValueError(
                f"SwiGLU hidden size {hidden} is not a multiple of 8; transformers cannot express it"
            )
        ratio = (1.5 * hidden + 0.5) / width
        if (int(int(width * ratio) * 2 / 3) + 7) // 8 * 8 != hidden:
            raise ValueError(f"no mlp_ratio reproduces SwiGLU hidden size {hidden}")
        return ratio
    ratio = hidden / width
    if int(width * ratio) != hidden:
        ratio = (hidden + 0.5) / width
    return float(int(ratio)) if ratio == int(ratio) else ratio


def hf_config_dict(model) -> dict:
    cfg = model.cfg
    if model.text is None:
        raise ValueError("save_pretrained needs a text tower: Tipsv2Model holds both towers")
    vision, text = cfg.vision, cfg.text
    return {
        "architectures": ["Tipsv2Model"],
        "model_type": "tipsv2",
        "temperature_init_value": float(model.temperature.detach()),
        "vision_config": {
            "model_type": "tipsv2_vision_model",
            "hidden_size": vision.width,
            "num_hidden_layers": vision.depth,
            "num_attention_heads": vision.heads,
            "mlp_ratio": mlp_ratio(vision.width, vision.mlp_hidden, vision.swiglu),
            "use_swiglu_ffn": vision.swiglu,
            "hidden_act": "gelu",
            "layer_norm_eps": vision.ln_eps,
            "image_size": vision.pos_grid * vision.patch_size,
            "patch_size": vision.patch_size,
            "num_channels": 3,
            "qkv_bias": vision.qkv_bias,
            "layerscale_value": 1.0,
            "num_register_tokens": 1,
        },
        "text_config": {
            "model_type": "tipsv2_text_model",
            "vocab_size": text.vocab_size,
            "hidden_size": text.width,
            "intermediate_size": text.mlp_hidden,
            "num_hidden_layers": text.depth,
            "num_attention_heads": text.heads,
            "max_position_embeddings": text.max_len,
            "hidden_act": "relu",
            "layer_norm_eps": text.ln_eps,
            "pad_token_id": 0,
            "scale_sqrt_depth": True,
            "pooling_epsilon": 1e-8,
        },
        "open_tips": {"name": cfg.name, "image_size": cfg.image_size},
    }


def image_processor_dict(image_size: int) -> dict:
    """transformers' ``Tipsv2ImageProcessor`` settings for a model trained at ``image_size``: a square
    bilinear resize, pixels scaled to [0, 1], no mean/std normalisation."""
    return {
        "image_processor_type": "Tipsv2ImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,  # PIL.Image.BILINEAR
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,
    }


def tokenizer_config_dict(tokenizer, max_len: int) -> dict:
    """``tokenizer_config.json`` for transformers' ``Tipsv2Tokenizer``, which builds its BPE from the
    ``tokenizer.model`` beside it: lower-cased, no BOS/EOS, right padding with id 0."""
    piece = tokenizer.processor.IdToPiece
    return {
        "tokenizer_class": "Tipsv2Tokenizer",
        "processor_class": "Tipsv2Processor",
        "model_max_length": max_len,
        "do_lower_case": True,
        "pad_token": piece(0),
        "unk_token": piece(1) if tokenizer.vocab_size > 1 else "<unk>",
        "bos_token": None,
        "eos_token": None,
        "padding_side": "right",
    }


def processor_files(model) -> dict[str, dict]:
    """The JSON files with which ``AutoProcessor`` / ``AutoTokenizer`` / ``AutoImageProcessor`` and
    ``pipeline("zero-shot-image-classification")`` rebuild the preprocessing of an export."""
    images = image_processor_dict(model.cfg.image_size)
    files = {"preprocessor_config.json": images}
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "model_path", None):
        if tokenizer.model_type != "bpe":
            warnings.warn(
                f"{tokenizer.model_path}: a SentencePiece {tokenizer.model_type} model; transformers' "
                "Tipsv2Tokenizer reads tokenizer.model as BPE and will give other token ids than open_tips "
                "(retrain it with Tokenizer.train, which writes BPE)",
                stacklevel=3,
            )
        files["tokenizer_config.json"] = tokenizer_config_dict(tokenizer, model.cfg.text.max_len)
        files["processor_config.json"] = {"processor_class": "Tipsv2Processor", "image_processor": images}
    return files


def save_hf_dir(model, directory: str | os.PathLike) -> None:
    """Writes config.json + model.safetensors (official keys, tower prefixes, temperature), the processor
    and tokenizer configs transformers needs, and tokenizer.model; the directory is assembled aside and
    moved into place so a crash leaves no half-written model."""
    directory = Path(directory)
    config = hf_config_dict(model)
    extra_files = processor_files(model)
    state = {
        f"vision_encoder.{k}": v.detach().float().cpu().contiguous()
        for k, v in model.vision.state_dict().items()
    }
    state.update(
        {
            f"text_encoder.{k}": v.detach().float().cpu().contiguous()
            for k, v in model.text.state_dict().items()
        }
    )
    state["temperature"] = model.temperature.detach().float().cpu().reshape(())
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, content in extra_files.items():
            (staging / name).write_text(json.dumps(content, indent=2) + "\n")
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None and getattr(tokenizer, "model_path", None):
            shutil.copyfile(tokenizer.model_path, staging / "tokenizer.model")
        directory.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            atomic_write(directory / item.name, lambda tmp, src=item: shutil.copyfile(src, tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
