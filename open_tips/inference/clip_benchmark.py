"""TIPS models in LAION's CLIP_benchmark (``pip install 'open_tips[clip-benchmark]'``).

CLIP_benchmark loads a model with ``load(model_name, pretrained, cache_dir, device)`` returning
``(model, transform, tokenizer)``: ``model.encode_image(images)`` and ``model.encode_text(tokens)`` give one
embedding per row (it normalises them itself), ``tokenizer(list[str])`` gives one tensor. ``load_open_tips``
has that signature; ``register()`` adds it under ``--model_type open_tips``. From the shell::

    python -m open_tips.inference.clip_benchmark eval --model_type open_tips \\
        --pretrained google/tipsv2-b14 --model auto:web --dataset mscoco_captions ...

Arguments, mapped onto ``load_pretrained``:

- ``pretrained``: anything ``load_pretrained`` reads (npz, HF directory, hub id, training run); empty for a
  registry name's published weights (``tipsv2-b14`` -> ``google/tipsv2-b14``).
- ``model_name``: ``[config][:cls]``. ``config`` is a registry name that overrides the architecture read
  off the weights (``auto`` or empty: read it). A TIPS model has two image embeddings, so ``cls`` picks
  the one CLIP_benchmark sees: ``web`` (CLS1, trained against alt-text; the default, as CLIP_benchmark's
  datasets carry human or web captions), ``synthetic`` (CLS2) or ``mean`` (the normalised mean of both).
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from open_tips.inference.transforms import ImageTransform, create_model_and_transforms
from open_tips.inference.zeroshot import image_embedding
from open_tips.models.tips import TIPSModel

MODEL_TYPE = "open_tips"
CLS_CHOICES = ("web", "synthetic", "mean")


class ClipBenchmarkModel(nn.Module):
    """A TIPS model with CLIP's two-method interface: one image embedding (``cls``) and pooled text."""

    def __init__(self, model: TIPSModel, cls: str = "web") -> None:
        super().__init__()
        if cls not in CLS_CHOICES:
            raise ValueError(f"cls must be one of {', '.join(CLS_CHOICES)}, got {cls!r}")
        if model.text is None:
            raise ValueError("CLIP_benchmark needs the text tower: this checkpoint is vision-only")
        self.model, self.cls = model, cls

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.encode_image(images)
        return image_embedding(out.cls_web, out.cls_synthetic, self.cls)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        # The padding mask is id 0 (encode_text's default), exactly what the tokenizer marks.
        return self.model.encode_text(token_ids)


class TokenIds:
    """``list[str] -> LongTensor [B, L]``: the model's tokenizer without its padding mask (ids 0 are padding)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        ids, _ = self.tokenizer([texts] if isinstance(texts, str) else list(texts))
        return ids


def parse_model_name(model_name: str | None) -> tuple[str | None, str]:
    """``"[config][:cls]"`` -> (config or None, cls)."""
    config, _, cls = (model_name or "").partition(":")
    cls = cls or "web"
    if cls not in CLS_CHOICES:
        raise ValueError(
            f"--model {model_name!r}: the part after ':' must be one of {', '.join(CLS_CHOICES)}"
        )
    return (None if config in ("", "auto") else config), cls


def load_open_tips(
    model_name: str = "auto",
    pretrained: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ClipBenchmarkModel, ImageTransform, TokenIds]:
    """(model, transform, tokenizer) as CLIP_benchmark's ``load_clip`` returns them (see the module doc)."""
    config, cls = parse_model_name(model_name)
    if pretrained:
        extra = {"cache_dir": cache_dir} if cache_dir else {}
        model, transform, tokenizer = create_model_and_transforms(
            pretrained, config=config, device=device, **extra
        )
    elif config is not None:
        model, transform, tokenizer = create_model_and_transforms(config, device=device)
    else:
        raise ValueError(
            "give --pretrained (a checkpoint path or hub id) or a model name with published weights"
        )
    if tokenizer is None:
        raise ValueError(
            f"{pretrained or config}: no tokenizer found next to the checkpoint (tokenizer.model)"
        )
    return ClipBenchmarkModel(model, cls).eval(), transform, TokenIds(tokenizer)


def register() -> None:
    """Makes ``model_type="open_tips"`` known to ``clip_benchmark.models.load_clip`` and its CLI."""
    # Optional dependency, imported only when asked for.
    from clip_benchmark import models

    models.TYPE2FUNC[MODEL_TYPE] = load_open_tips
    if MODEL_TYPE not in models.MODEL_TYPES:
        # The same list object the CLI's --model_type choices hold, so the CLI accepts it too.
        models.MODEL_TYPES.append(MODEL_TYPE)


def main() -> int:
    """``python -m open_tips.inference.clip_benchmark ARGS``: CLIP_benchmark's CLI with open_tips registered."""
    register()
    from clip_benchmark import cli  # optional dependency (needs the full clip-benchmark install)

    sys.argv[0] = "clip_benchmark"
    cli.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
