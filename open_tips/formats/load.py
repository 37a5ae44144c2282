"""``load_pretrained``: one entry point for every checkpoint format open_tips reads."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from open_tips.formats.common import (
    CheckpointError,
    infer_text_config,
    infer_vision_config,
    load_strict,
    split_temperature,
)
from open_tips.formats.hf import config_fields, read_hf_dir, to_official
from open_tips.formats.hub import looks_like_hub_id, resolve_hub_id
from open_tips.formats.identify import identify, inferred_image_size
from open_tips.formats.official import pop_metadata, read_npz, sibling_paths
from open_tips.formats.training import latest_checkpoint
from open_tips.models.configs import TIPSConfig, get_config
from open_tips.models.tips import TIPSModel
from open_tips.models.tokenizer import Tokenizer, find_tokenizer

DEFAULT_TEMPERATURE = 0.01


def _build(
    vision_state: dict,
    text_state: dict | None,
    temperature: float | None,
    source: str,
    config: str | TIPSConfig | None,
    heads: tuple[int | None, int | None] = (None, None),
    image_size: int | None = None,
    max_len: int = 64,
    hint: str | None = None,
    stored: TIPSConfig | None = None,
) -> TIPSModel:
    if config is not None or stored is not None:
        chosen = config if config is not None else stored
        cfg = get_config(chosen) if isinstance(chosen, str) else TIPSConfig.from_dict(chosen.to_dict())
        if text_state is None:
            cfg.text = None
        if image_size is not None and config is None:
            cfg.image_size = image_size
        known_temperature = config is not None or stored is not None
    else:
        vision_cfg = infer_vision_config(vision_state, source, heads[0])
        text_cfg = (
            infer_text_config(text_state, source, heads[1], max_len) if text_state is not None else None
        )
        if text_cfg is not None and text_cfg.width != vision_cfg.width:
            raise CheckpointError(
                f"{source}: text width {text_cfg.width} differs from vision width {vision_cfg.width}"
            )
        found = identify(vision_cfg, text_cfg, hint)
        name = found[0].name if len(found) == 1 else Path(source).name
        cfg = TIPSConfig(vision=vision_cfg, text=text_cfg, name=name)
        cfg.image_size = image_size or inferred_image_size(cfg, hint)
        known_temperature = len(found) == 1 and found[0].name.startswith("tipsv2")
        if known_temperature:
            cfg.temperature = found[0].temperature
        else:
            cfg.temperature = DEFAULT_TEMPERATURE
    if temperature is not None:
        if not temperature > 0:
            raise CheckpointError(f"{source}: temperature must be positive, got {temperature}")
        cfg.temperature = temperature
    elif text_state is not None:
        warnings.warn(
            f"{source}: no temperature in the weights or config; using {cfg.temperature:g}"
            + ("" if known_temperature else " (a placeholder: zero-shot probabilities will be off)"),
            stacklevel=3,
        )
    if config is not None:
        try:
            found_cfg = infer_vision_config(vision_state, source)
        except CheckpointError:
            found_cfg = None  # load_strict names what is missing
        if found_cfg is not None:
            _check_config_fits(cfg, found_cfg.width, found_cfg.depth, source)
    model = TIPSModel(cfg)
    load_strict(model.vision, vision_state, f"{source} (vision)")
    if text_state is not None:
        load_strict(model.text, text_state, f"{source} (text)")
    return model


def _preprocessor_size(directory: Path) -> int | None:
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return None
    try:
        size = json.loads(path.read_text()).get("size") or {}
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: malformed JSON ({err})") from err
    value = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    return int(value) if isinstance(value, int) and value > 0 else None


def _load_hf_dir(path: Path, config, vision_only: bool, hint: str) -> TIPSModel:
    hf_config, flat = read_hf_dir(path, vision_only=vision_only)
    fields = config_fields(hf_config, str(path / "config.json"))
    vision_state, text_state, temperature = to_official(flat)
    if temperature is None:
        temperature = fields["temperature"]
    if vision_only:
        text_state = {}
    image_size = fields["image_size"] or _preprocessor_size(path)
    if image_size is None and config is None:
        # identified released models know their resolution; else the config's own image_size
        vision_cfg = infer_vision_config(vision_state, str(path), fields["vision_heads"])
        if len({c.image_size for c in identify(vision_cfg, None, hint)}) != 1:
            image_size = fields["config_image_size"]
    return _build(
        vision_state,
        text_state or None,
        temperature,
        str(path),
        config,
        (fields["vision_heads"], fields["text_heads"]),
        image_size,
        fields["max_len"] or 64,
        hint=hint,
    )


def _load_npz(path: Path, config, vision_only: bool) -> TIPSModel:
    vision_path, text_path = sibling_paths(path)
    if vision_path is None:
        raise CheckpointError(f"{path}: no matching *_vision.npz next to this text checkpoint")
    vision_state = read_npz(vision_path)
    stored = pop_metadata(vision_state, str(vision_path))
    text_state = None
    temperature = None
    if text_path is not None and not vision_only:
        text_state = read_npz(text_path)
        stored = pop_metadata(text_state, str(text_path)) or stored
        temperature = split_temperature(text_state)
    return _build(
        vision_state, text_state, temperature, str(vision_path), config, hint=vision_path.name, stored=stored
    )


def load_pretrained(
    path: str | os.PathLike,
    config: str | TIPSConfig | None = None,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
    vision_only: bool = False,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> TIPSModel:
    """Loads a TIPS model from

    - an official ``*_vision.npz`` (its sibling ``*_text.npz`` is loaded too when present) or ``*_text.npz``;
    - an HF-format directory (``config.json`` + ``model.safetensors``): what ``Tipsv2Model.save_pretrained``
      and ``TIPSModel.save_pretrained`` write, and the original hub repos (official keys under
      ``vision_encoder.`` / ``text_encoder.``, flat ``config.json`` with a top-level ``temperature``);
    - a Hugging Face hub id ``org/name`` (at ``revision``), resolved through the local cache
      (``HF_HUB_CACHE``) and downloaded only when not offline (``HF_HUB_OFFLINE=1``) and not
      ``local_files_only``;
    - an open_tips training checkpoint (``.pt``, loaded with ``weights_only=True``) or its run directory.

    The architecture is read off the weights (width, depth, MLP kind, position grid) and the config file;
    ``config`` (a registry name or a TIPSConfig) overrides it. ``vision_only`` skips reading the text tower.
    A ``tokenizer.model`` next to the checkpoint is attached unless ``tokenizer`` is given.
    """
    path = Path(path)
    hint = path.name
    if not path.exists():
        if looks_like_hub_id(path):
            hint = str(path).split("/")[-1]
            path = resolve_hub_id(str(path), revision, cache_dir, local_files_only)
        else:
            raise FileNotFoundError(f"checkpoint not found: {path}")
    elif revision is not None:
        raise CheckpointError(f"{path}: revision= applies to hub ids, not to a local path")
    tokenizer_dir = path if path.is_dir() else path.parent
    if path.is_dir() and (path / "config.json").is_file():
        model = _load_hf_dir(path, config, vision_only, hint)
    elif path.is_dir() and (path / "checkpoints").is_dir() or path.suffix in (".pt", ".pth"):
        model = _load_training_checkpoint(path, config)
        if vision_only:
            model.text = None
            model.cfg.text = None
    elif path.suffix == ".npz":
        model = _load_npz(path, config, vision_only)
    elif path.is_dir():
        found = sorted(path.glob("*_vision.npz"))
        if len(found) != 1:
            raise CheckpointError(
                f"{path}: expected config.json or exactly one *_vision.npz, found {len(found)}"
            )
        return load_pretrained(
            found[0], config=config, tokenizer=tokenizer, device=device, vision_only=vision_only
        )
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format (expected .npz, .pt or an HF directory)")

    if tokenizer is None and not vision_only:
        found_tok = find_tokenizer(tokenizer_dir, tokenizer_dir.parent)
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


def _check_config_fits(cfg: TIPSConfig, width: int, depth: int, source: str) -> None:
    """A chosen config of another shape: one line naming both shapes, not every mismatched key."""
    if (cfg.vision.width, cfg.vision.depth) != (width, depth):
        raise CheckpointError(
            f"{source}: checkpoint width {width} depth {depth} vs {cfg.name} width {cfg.vision.width} "
            f"depth {cfg.vision.depth}; choose a config of that shape, or none (--config unset) to read the "
            "architecture off the weights"
        )


def _load_training_checkpoint(path: Path, config: str | TIPSConfig | None) -> TIPSModel:
    if path.is_dir():
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
    if config is not None:
        stored = TIPSConfig.from_dict(payload["model_config"]).vision
        _check_config_fits(cfg, stored.width, stored.depth, str(path))
    model = TIPSModel(cfg)
    load_strict(model, payload["model"], str(path))
    return model
