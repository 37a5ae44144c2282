"""The terms of the TIPS objective, each a small module over one step's ``StepViews``.

A term declares the views it ``needs`` ("clean", "masked", "local", "contrastive", "text:web",
"text:synthetic") and returns ``{"loss": scalar, **logged values}``. The maths lives in ``open_tips.losses``;
a term only picks the inputs (by ``ImageEmbeddings`` field: ``cls_web``, ``cls_synthetic``,
``patch_tokens``) and keeps the loss state (centres).

Where CLS2's synthetic caption enters the loss: ``ContrastiveTerm`` with the pair ("cls_synthetic",
"synthetic") — built by ``open_tips.train.objective.build_terms`` from ``loss.pairs=dual``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from open_tips.losses.contrastive import clip_loss, siglip_loss
from open_tips.losses.dino import DINOLoss, sinkhorn_knopp
from open_tips.losses.distributed import is_distributed
from open_tips.losses.ibot import IBOTPatchLoss
from open_tips.losses.koleo import koleo_loss
from open_tips.losses.monitor import distribution_stats
from open_tips.losses.sparc import sparc_loss
from open_tips.models.heads import DINOHead
from open_tips.models.vision import ImageEmbeddings


@dataclass
class StepViews:
    """The forward passes of one step, computed once and shared by the terms."""

    global_crops: torch.Tensor
    masks: torch.Tensor | None
    num_local: int
    clean: ImageEmbeddings | None = None  # student, clean global crop
    masked: ImageEmbeddings | None = None  # student, masked global crop (MIM)
    contrast: ImageEmbeddings | None = None  # whichever of the two the contrastive loss uses
    local: ImageEmbeddings | None = None  # student, local crops grouped crop-major [M*B, ...]
    teacher: ImageEmbeddings | None = None  # teacher, clean global crop, no gradient
    text: dict[str, torch.Tensor] = field(default_factory=dict)  # caption kind -> pooled [B, D]
    text_tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # caption kind -> [B, L, D]
    text_padding: dict[str, torch.Tensor] = field(default_factory=dict)  # caption kind -> [B, L] True = pad
    text_ids: dict[str, torch.Tensor] = field(default_factory=dict)  # caption kind -> [B, L] token ids


class Term(nn.Module):
    needs: frozenset[str] = frozenset()
    needs_teacher = False


# loss.pairs -> the (CLS field, caption kind) pairs the contrastive loss contrasts; the distillation terms
# that pair images with text use the same ones.
CONTRASTIVE_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "dual": (("cls_web", "web"), ("cls_synthetic", "synthetic")),
    "web": (("cls_web", "web"),),
    "synthetic": (("cls_web", "synthetic"),),
}


class ContrastiveTerm(Term):
    """Image-text contrastive loss over (CLS field, caption kind) pairs, averaged over the pairs.

    TIPS: ("cls_web", "web") and ("cls_synthetic", "synthetic"); each pair is also logged as
    ``loss_<caption kind>``."""

    def __init__(self, pairs: list[tuple[str, str]], kind: str = "softmax", local_loss: bool = True) -> None:
        super().__init__()
        self.pairs = list(pairs)
        self.kind = kind
        self.local_loss = local_loss
        self.siglip_bias = nn.Parameter(torch.tensor([-10.0])) if kind == "sigmoid" else None
        self.needs = frozenset({"contrastive"} | {f"text:{caption}" for _, caption in self.pairs})

    def forward(self, views: StepViews, temperature: torch.Tensor, **_: object) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        losses = []
        for cls_field, caption in self.pairs:
            image = getattr(views.contrast, cls_field)
            if self.siglip_bias is not None:
                value = siglip_loss(image, views.text[caption], temperature, self.siglip_bias)
            else:
                value = clip_loss(
                    image,
                    views.text[caption],
                    temperature,
                    gather=is_distributed(),
                    local_loss=self.local_loss,
                )
            losses.append(value)
            if len(self.pairs) > 1:
                out[f"loss_{caption}"] = value
        out["loss"] = torch.stack(losses).mean()
        return out


class _TeacherTargets(nn.Module):
    """Teacher probabilities from teacher logits: EMA centring (DINO), Sinkhorn-Knopp (SwAV / DINOv2), or
    ``none`` (a plain sharpened softmax: collapses; kept to show what centring prevents)."""

    def __init__(
        self, loss: DINOLoss | IBOTPatchLoss, centering: str, center_warm_start: bool = True
    ) -> None:
        super().__init__()
        # Warm start: DINO's centre starts at zero and needs ~1 / (1 - momentum) steps to reach the logits'
        # mean, so the first steps see an uncentred teacher in which every image picks the same few
        # prototypes (measured: entropy 3.9 of log K 6.9, gradient norm ~200 at step 0). Starting the centre
        # at the first batch's mean removes that phase.
        self.center_warm_start = center_warm_start
        self.register_buffer("center_started", torch.zeros((), dtype=torch.bool))
        if centering not in ("center", "sinkhorn", "none"):
            raise ValueError(f"centering must be center, sinkhorn or none, got {centering!r}")
        self.loss = loss
        self.centering = centering

    @torch.no_grad()
    def probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, teacher_temp)
        if self.centering == "none":
            return torch.softmax(teacher_logits.float() / teacher_temp, dim=-1)
        if not self.center_warm_start:
            probs = self.loss.softmax_center_teacher(teacher_logits, teacher_temp)
            self.loss.update_center(teacher_logits)  # after the targets, as DINO does
            return probs
        batch_center, count = self.loss.batch_center(teacher_logits)
        started = self.center_started
        center = torch.where(started, self.loss.center, batch_center)
        probs = torch.softmax((teacher_logits.float() - center.reshape(-1)) / teacher_temp, dim=-1)
        self.loss.update_center(teacher_logits, (batch_center, count))
        self.loss.center.copy_(torch.where(started, self.loss.center, batch_center))
        started.copy_(started | (count > 0))
        return probs


class DistillTerm(Term):
    """Self-distillation (DINO): the teacher's clean global crop supervises the student's local crops.

    One centre per CLS field, so ``cls_web`` and ``cls_synthetic`` are centred on their own statistics."""

    needs = frozenset({"local"})
    needs_teacher = True

    def __init__(
        self,
        head: DINOHead,
        cls_fields: list[str],
        *,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "center",
        center_warm_start: bool = True,
    ) -> None:
        super().__init__()
        self.head = head
        self.cls_fields = list(cls_fields)
        self.targets = nn.ModuleDict(
            {
                name: _TeacherTargets(
                    DINOLoss(head.out_dim, student_temp, center_momentum), centering, center_warm_start
                )
                for name in self.cls_fields
            }
        )
        self.student_temp = student_temp

    def forward(self, views: StepViews, teacher: nn.Module, teacher_temp: float, **_: object) -> dict:
        losses, stats = [], {}
        for name in self.cls_fields:
            with torch.no_grad():
                teacher_logits = teacher.dino_head(getattr(views.teacher, name))
                teacher_probs = self.targets[name].probs(teacher_logits, teacher_temp)
            student_logits = self.head(getattr(views.local, name))
            losses.append(
                self.targets[name].loss(list(student_logits.chunk(views.num_local)), [teacher_probs])
            )
            if not stats:  # monitors of the first CLS field
                stats = distribution_stats(teacher_probs, student_logits, self.student_temp)
        return {"loss": torch.stack(losses).mean(), **{f"distill_{k}": v for k, v in stats.items()}}


class MaskedModellingTerm(Term):
    """MIM (iBOT): the teacher's clean patch tokens supervise the student's masked ones; iBOT++ (TIPSv2)
    supervises every token."""

    needs = frozenset({"masked"})
    needs_teacher = True

    def __init__(
        self,
        head: DINOHead,
        *,
        all_tokens: bool = False,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "center",
        center_warm_start: bool = True,
    ) -> None:
        super().__init__()
        self.head = head
        self.all_tokens = all_tokens
        loss = IBOTPatchLoss(head.out_dim, student_temp, center_momentum)
        self.targets = _TeacherTargets(loss, centering, center_warm_start)
        self.student_temp = student_temp

    def forward(self, views: StepViews, teacher: nn.Module, teacher_temp: float, **_: object) -> dict:
        batch = views.global_crops.shape[0]
        teacher_patches = views.teacher.patch_tokens.reshape(batch, -1, views.teacher.patch_tokens.shape[-1])
        student_patches = views.masked.patch_tokens.reshape(batch, -1, views.masked.patch_tokens.shape[-1])
        with torch.no_grad():
            teacher_logits = teacher.ibot_head(teacher_patches)
            teacher_probs = self.targets.probs(teacher_logits, teacher_temp)
        student_logits = self.head(student_patches)
        loss = self.targets.loss(student_logits, teacher_probs, views.masks, all_tokens=self.all_tokens)
        stats = distribution_stats(teacher_probs, student_logits, self.student_temp)
        return {"loss": loss, **{f"mask_{k}": v for k, v in stats.items()}}


class SparcTerm(Term):
    """SPARC: patch tokens pooled per caption token, aligned with the caption's tokens."""

    def __init__(self, caption: str = "synthetic") -> None:
        super().__init__()
        self.caption = caption
        self.needs = frozenset({"contrastive", f"text:{caption}"})

    def forward(self, views: StepViews, temperature: torch.Tensor, **_: object) -> dict:
        patches = views.contrast.patch_tokens
        patches = patches.reshape(patches.shape[0], -1, patches.shape[-1])
        tokens, padding = views.text_tokens[self.caption], views.text_padding[self.caption]
        return {"loss": sparc_loss(patches, tokens, padding, temperature)}


class KoLeoTerm(Term):
    """KoLeo spreading of ``cls_web`` over the batch (DINOv2)."""

    needs = frozenset({"contrastive"})

    def forward(self, views: StepViews, **_: object) -> dict:
        return {"loss": koleo_loss(views.contrast.cls_web)}
