"""TIPSModel: vision tower + text tower + learned temperature, with the public encode API."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from open_tips.models.configs import TIPSConfig, get_config
from open_tips.models.text import TextTransformer
from open_tips.models.vision import ImageEmbeddings, VisionTransformer


class TIPSModel(nn.Module):
    """Image-text encoder with two CLS tokens.

    ``encode_image`` returns ``cls_web``, ``cls_synthetic`` and ``patch_tokens`` after the final norm and
    not L2-normalised; ``encode_text`` returns pooled text embeddings. Logits are cosine / temperature;
    the temperature is learned in log space.
    """

    def __init__(self, cfg: TIPSConfig, tokenizer=None) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = VisionTransformer(cfg.vision)
        self.text = TextTransformer(cfg.text) if cfg.text is not None else None
        # Shape [1], not a scalar: FSDP2 cannot shard 0-d parameters.
        self.log_temperature = nn.Parameter(torch.tensor([math.log(cfg.temperature)]))
        self.tokenizer = tokenizer

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    @property
    def device(self) -> torch.device:
        return self.log_temperature.device

    def encode_image(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> ImageEmbeddings:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels of shape B x 3 x H x W, got {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise TypeError(f"expected float pixels in [0, 1], got dtype {pixels.dtype}")
        return self.vision.encode(pixels, masks)

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise RuntimeError("no tokenizer attached: pass tokenizer= to load_pretrained, or token ids")
        ids, padding = self.tokenizer(texts)
        return ids.to(self.device), padding.to(self.device)

    def encode_text(
        self, token_ids: torch.Tensor | str | Sequence[str], padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.text is None:
            raise RuntimeError("this model has no text tower (a vision-only checkpoint was loaded)")
        if isinstance(token_ids, str) or (
            isinstance(token_ids, Sequence) and not isinstance(token_ids, torch.Tensor)
        ):
            token_ids, padding_mask = self.tokenize(token_ids)
        if padding_mask is None:
            padding_mask = token_ids == 0
        return self.text(token_ids, padding_mask)

    def encode_text_tokens(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Per-token text features [B, L, D] (for fine-grained losses such as SPARC)."""
        if self.text is None:
            raise RuntimeError("this model has no text tower")
        return self.text.forward_tokens(token_ids, padding_mask)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.vision.grad_checkpointing = enabled
        if self.text is not None:
            self.text.grad_checkpointing = enabled

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes an HF-format directory (config.json + model.safetensors) that transformers'
        ``Tipsv2Model.from_pretrained`` loads with the same outputs."""
        # Deferred, and allowed by the layers contract (pyproject.toml): a convenience method of the public
        # model object; the model layer itself never writes files, open_tips.formats does.
        from open_tips.formats.hf import save_hf_dir

        save_hf_dir(self, directory)

    def save_npz(self, stem: str | os.PathLike) -> list[str]:
        """Writes ``{stem}_vision.npz`` and ``{stem}_text.npz`` in the official layout."""
        # Deferred and allowed by the layers contract, as in save_pretrained.
        from open_tips.formats.official import save_official_npz

        return save_official_npz(self, stem)

    def predict_dense(self, pixels: torch.Tensor, decoders, size=None, return_logits: bool = False) -> dict:
        """Depth / normals / segmentation from DPT decoders (``open_tips.formats.dpt.load_dense_heads``);
        see ``open_tips.inference.dense_heads.predict_dense``."""
        # Deferred and allowed by the layers contract, as in save_pretrained: the implementation is inference's.
        from open_tips.inference.dense_heads import predict_dense

        return predict_dense(self, decoders, pixels, size=size, return_logits=return_logits)


def create_model(name_or_config: str | TIPSConfig, tokenizer=None) -> TIPSModel:
    """A randomly initialised model from a registry name or a config."""
    cfg = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return TIPSModel(cfg, tokenizer=tokenizer)
