"""Model FLOPs of a training step, counted from the architecture and the views the objective runs, and MFU.

Conventions (those of ``torch.utils.flop_counter.FlopCounterMode``, which the tests compare against):
a matmul of [M, K] x [K, N] is 2*M*K*N FLOPs; its backward is twice its forward when the input needs a
gradient (grad input + grad weight) and equal to it when only the weight does (the patch embedding, whose
input is the pixels); attention is counted as its two batched matmuls (backward 2x, i.e. without the score
recomputation a fused kernel does); work without gradient (teacher, targets) is forward only. Element-wise
ops, norms, softmax and the loss reductions are not counted. Gradient-checkpointing recompute is not
counted either: MFU is *model* FLOPs over peak, so it does not reward recomputation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from open_tips.models.configs import TextConfig, VisionConfig

log = logging.getLogger(__name__)

# Dense peak TFLOP/s per GPU (vendor spec sheets, without sparsity): (name fragment, bf16/fp16, fp32).
# fp32 is the non-tensor-core rate; a run that enables TF32 matmuls should pass train.peak_tflops.
_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),  # SXM
    ("A100", 312.0, 19.5),
)


def peak_tflops(device: torch.device | str, precision: str, override: float = 0.0) -> float | None:
    """The device's dense peak in TFLOP/s for ``precision`` (fp32 | bf16 | fp16), ``override`` when > 0,
    else from the table for known NVIDIA GPUs; None when unknown (e.g. a CPU), so no MFU is logged."""
    if override and override > 0:
        return float(override)
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, half, single in _PEAKS:
        if fragment in name:
            return single if precision == "fp32" else half
    return None


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def vision_forward_flops(cfg: VisionConfig, batch: int, height: int, width: int) -> int:
    """Forward FLOPs of the ViT on ``batch`` images of height x width pixels (patch embed + blocks)."""
    embed, blocks = _vision_parts(cfg, batch, height, width)
    return embed + blocks


def _vision_parts(cfg: VisionConfig, batch: int, height: int, width: int) -> tuple[int, int]:
    """(patch-embedding FLOPs, transformer-block FLOPs), forward."""
    p = cfg.patch_size
    patches = (height // p) * (width // p)
    seq = patches + 2  # CLS1, CLS2
    d = cfg.width
    embed = _linear(batch * patches, 3 * p * p, d)
    tokens = batch * seq
    if cfg.swiglu:
        mlp = _linear(tokens, d, 2 * cfg.mlp_hidden) + _linear(tokens, cfg.mlp_hidden, d)
    else:
        mlp = 2 * _linear(tokens, d, cfg.mlp_hidden)
    attention = 4 * batch * seq * seq * d  # q k^T and attn v
    block = _linear(tokens, d, 3 * d) + attention + _linear(tokens, d, d) + mlp
    return embed, cfg.depth * block


def text_forward_flops(cfg: TextConfig, batch: int, length: int) -> int:
    """Forward FLOPs of the text tower on ``batch`` captions padded to ``length`` tokens (padding included:
    the tower runs on it)."""
    d = cfg.width
    tokens = batch * length
    block = (
        _linear(tokens, d, 3 * d)
        + 4 * batch * length * length * d
        + _linear(tokens, d, d)
        + 2 * _linear(tokens, d, cfg.mlp_hidden)
    )
    return cfg.depth * block


def head_forward_flops(head: nn.Module, tokens: int) -> int:
    """Forward FLOPs of a projection head (every nn.Linear in it, the prototype layer included)."""
    return sum(
        _linear(tokens, m.in_features, m.out_features) for m in head.modules() if isinstance(m, nn.Linear)
    )


def _vision_train(cfg: VisionConfig, batch: int, height: int, width: int) -> int:
    embed, blocks = _vision_parts(cfg, batch, height, width)
    return 2 * embed + 3 * blocks  # the pixels need no gradient


def training_step_flops(objective: nn.Module, batch: Mapping[str, torch.Tensor], world_size: int = 1) -> dict:
    """FLOPs one rank spends on one (micro-)batch of ``objective`` (a TIPSObjective), by part; ``total`` is
    their sum. Follows ``TIPSObjective._views``: which global-crop encodings run and which train, the local
    crops, the teacher's pass (none for head_ema), one text pass per caption kind used, the heads, and the
    loss matmuls (contrastive logits over ``world_size`` gathered rows, SPARC, KoLeo)."""
    model = objective.model
    vcfg = model.vision.cfg
    terms = objective.terms
    needs: set[str] = set()
    for term in terms.values():
        needs |= set(term.needs)
    global_crops = batch["global_crops"]
    b, _, gh, gw = global_crops.shape
    masked = "masked" in needs and batch.get("masks") is not None
    teacher = objective.teacher
    head_ema = teacher is not None and teacher.kind == "head_ema"
    uses_contrast = "contrastive" in needs
    contrast_is_clean = objective.contrastive_view == "clean" or not masked
    parts: dict[str, int] = {}
    if (uses_contrast and contrast_is_clean) or head_ema:
        # Without a loss on it (head_ema with the masked view contrasted) the clean pass is forward only.
        trains = uses_contrast and contrast_is_clean
        parts["vision_clean"] = (
            _vision_train(vcfg, b, gh, gw) if trains else vision_forward_flops(vcfg, b, gh, gw)
        )
    if masked:
        parts["vision_masked"] = _vision_train(vcfg, b, gh, gw)
    local = batch.get("local_crops")
    num_local = 0
    if "local" in needs and local is not None:
        n, _, lh, lw = local.shape
        num_local = n
        parts["vision_local"] = _vision_train(vcfg, n, lh, lw)
    if teacher is not None and teacher.vision is not None:
        parts["teacher_vision"] = vision_forward_flops(teacher.vision.cfg, b, gh, gw)
    tcfg = model.text.cfg if model.text is not None else None
    for kind in ("web", "synthetic"):
        if f"text:{kind}" in needs and tcfg is not None:
            parts[f"text_{kind}"] = 3 * text_forward_flops(tcfg, b, batch[f"{kind}_ids"].shape[1])
    patches = (gh // vcfg.patch_size) * (gw // vcfg.patch_size)
    d = vcfg.width
    if "distill" in terms:
        term = terms["distill"]
        fields = len(term.cls_fields)
        student = 3 * head_forward_flops(term.head, num_local) * fields
        parts["head_distill"] = student + head_forward_flops(teacher.dino_head, b) * fields
    if "mask" in terms:
        term = terms["mask"]
        parts["head_mask"] = 3 * head_forward_flops(term.head, b * patches) + head_forward_flops(
            teacher.ibot_head, b * patches
        )
    losses = 0
    if "contrastive" in terms:
        term = terms["contrastive"]
        pairs = len(term.pairs)
        if world_size > 1 and term.kind == "softmax":
            logits = (
                (2 * _linear(b, d, world_size * b))
                if term.local_loss
                else _linear(world_size * b, d, world_size * b)
            )
        else:
            logits = _linear(b, d, b)
        losses += 3 * logits * pairs
    if "sparc" in terms:
        length = batch[f"{terms['sparc'].caption}_ids"].shape[1]
        # similarity [B,L,P], grouped = weights @ patches [B,L,D], token x grouped logits [B,L,L]
        losses += 3 * (2 * 2 * b * length * patches * d + 2 * b * length * length * d)
    if "koleo" in terms:
        losses += _linear(b, d, b)  # the neighbour search runs without gradient
    if losses:
        parts["losses"] = losses
    parts["total"] = sum(parts.values())
    return parts


class FlopsMeter:
    """Per-micro-batch FLOPs cached by the batch's shapes (they rarely change), summed over a log window."""

    def __init__(self, objective: nn.Module, world_size: int = 1) -> None:
        self.objective = objective
        self.world_size = world_size
        self._cache: dict[tuple, int] = {}
        self.window = 0

    def add(self, batch: Mapping[str, object]) -> None:
        key = tuple(
            (name, tuple(value.shape))
            for name, value in sorted(batch.items())
            if isinstance(value, torch.Tensor)
        )
        if key not in self._cache:
            try:
                self._cache[key] = training_step_flops(self.objective, batch, self.world_size)["total"]
            except (AttributeError, KeyError, TypeError) as err:  # an objective this count does not know
                log.warning("FLOPs not counted (%s): tflops/mfu will read 0", err)
                self._cache[key] = 0
        self.window += self._cache[key]

    def read(self, seconds: float, peak: float | None) -> dict[str, float]:
        """``tflops`` (achieved per rank over the window) and, with a peak, ``mfu``; resets the window."""
        achieved = self.window / max(seconds, 1e-9) / 1e12
        self.window = 0
        out = {"tflops": achieved}
        if peak:
            out["mfu"] = achieved / peak
        return out
