"""``load_pretrained``: one entry point for every checkpoint format open_tips reads."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from open_tips.data.tokenizer import Tokenizer
from open_tips.formats.common import (
    CheckpointError,
    infer_text_config,
    infer_vision_config,
    load_strict,
    split_temperature,
)
from open_tips.formats.hf import read_hf_dir, to_official
from open_tips.formats.official import read_npz, sibling_paths
from open_tips.models.configs import TIPSConfig, get_config
from open_tips.models.tips import TIPSModel


def _find_tokenizer(*candidates: Path) -> Path | None:
    for folder in candidates:
        path = folder / "tokenizer.model"
        if path.is_file():
            return path
    return None


def _build(
    vision_state: dict,
    text_state: dict | None,
    temperature: float | None,
    source: str,
    config: str | TIPSConfig | None,
    heads: tuple[int | None, int | None] = (None, None),
    image_size: int | None = None,
    max_len: int = 64,
) -> TIPSModel:
    if config is not None:
        cfg = get_config(config) if isinstance(config, str) else TIPSConfig.from_dict(config.to_dict())
        if text_state is None:
            cfg.text = None
    else:
        vision_cfg = infer_vision_config(vision_state, source, heads[0])
        text_cfg = (
            infer_text_config(text_state, source, heads[1], max_len) if text_state is not None else None
        )
        if text_cfg is not None and text_cfg.width != vision_cfg.width:
            raise CheckpointError(
                f"{source}: text width {text_cfg.width} differs from vision width {vision_cfg.width}"
            )
        grid_px = vision_cfg.pos_grid * vision_cfg.patch_size
        cfg = TIPSConfig(
            vision=vision_cfg,
            text=text_cfg,
            image_size=image_size or max(grid_px, 224),
            name=Path(source).name,
        )
    if temperature is not None:
        if not temperature > 0:
            raise CheckpointError(f"{source}: temperature must be positive, got {temperature}")
        cfg.temperature = temperature
    model = TIPSModel(cfg)
    load_strict(model.vision, vision_state, f"{source} (vision)")
    if text_state is not None:
        load_strict(model.text, text_state, f"{source} (text)")
    return model


def load_pretrained(
    path: str | os.PathLike,
    config: str | TIPSConfig | None = None,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    device: str | torch.device | None = None,
) -> TIPSModel:
    """Loads a TIPS model from

    - an official ``*_vision.npz`` (its sibling ``*_text.npz`` is loaded too when present) or ``*_text.npz``;
    - an HF-format directory (``config.json`` + ``model.safetensors``, as ``Tipsv2Model.save_pretrained``
      writes it);
    - an open_tips training checkpoint (``.pt``, loaded with ``weights_only=True``) or its run directory.

    The architecture is read off the weights (width, depth, MLP kind, position grid); ``config`` (a registry
    name or a TIPSConfig) overrides it. A ``tokenizer.model`` next to the checkpoint is attached unless
    ``tokenizer`` is given.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    tokenizer_dir = path if path.is_dir() else path.parent
    if path.is_dir() and (path / "config.json").is_file():
        hf_config, flat = read_hf_dir(path)
        vision_state, text_state, temperature = to_official(flat)
        if temperature is None:
            temperature = hf_config.get("temperature_init_value")
        heads = (
            hf_config.get("vision_config", {}).get("num_attention_heads"),
            hf_config.get("text_config", {}).get("num_attention_heads"),
        )
        extra = hf_config.get("open_tips", {})
        max_len = hf_config.get("text_config", {}).get("max_position_embeddings", 64)
        model = _build(
            vision_state,
            text_state or None,
            temperature,
            str(path),
            config,
            heads,
            extra.get("image_size"),
            max_len,
        )
    elif path.is_dir() and (path / "checkpoints").is_dir() or path.suffix in (".pt", ".pth"):
        model = _load_training_checkpoint(path, config)
    elif path.suffix == ".npz":
        vision_path, text_path = sibling_paths(path)
        if vision_path is None:
            raise CheckpointError(f"{path}: no matching *_vision.npz next to this text checkpoint")
        vision_state = read_npz(vision_path)
        text_state = read_npz(text_path) if text_path is not None else None
        temperature = split_temperature(text_state) if text_state is not None else None
        model = _build(vision_state, text_state, temperature, str(vision_path), config)
    elif path.is_dir():
        found = sorted(path.glob("*_vision.npz"))
        if len(found) != 1:
            raise CheckpointError(
                f"{path}: expected config.json or exactly one *_vision.npz, found {len(found)}"
            )
        return load_pretrained(found[0], config=config, tokenizer=tokenizer, device=device)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format (expected .npz, .pt or an HF directory)")

    if tokenizer is None:
        found_tok = _find_tokenizer(tokenizer_dir, tokenizer_dir.parent)
        if found_tok is not None:
            tokenizer = found_tok
    if tokenizer is not None:
        max_len = model.cfg.text.max_len if model.cfg.text is not None else 64
        model.tokenizer = (
            tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer, max_len=max_len)
        )
    model.eval()
    if device is not None:
        model.to(device)
    return model


def _load_training_checkpoint(path: Path, config: str | TIPSConfig | None) -> TIPSModel:
    if path.is_dir():
        from open_tips.train.checkpoint import latest_checkpoint

        found = latest_checkpoint(path / "checkpoints")
        if found is None:
            raise CheckpointError(f"{path}: no complete checkpoint in {path / 'checkpoints'}")
        path = found
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for truncated / pickled-object files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise CheckpointError(
            f"{path}: not an open_tips training checkpoint (needs 'model' and 'model_config')"
        )
    cfg = (
        get_config(config)
        if isinstance(config, str)
        else config or TIPSConfig.from_dict(payload["model_config"])
    )
    model = TIPSModel(cfg)
    load_strict(model, payload["model"], str(path))
    return model
