"""The TIPS training objective: a weighted sum of named terms over one step's views.

``build_objective(cfg, model)`` turns the config into explicit arguments; ``TIPSObjective`` runs the forward
passes the terms need once (``StepViews``) and sums ``weight * term(views)``. The terms live in
``open_tips.train.terms``; adding a loss is a file in ``open_tips/losses`` plus one entry in ``build_terms``.

Views (choices documented in docs/training.md):
- the student encodes the clean global crop for the contrastive loss (``loss.contrastive_view=clean``) and
  the masked global crop for MIM; the local crops feed self-distillation;
- the teacher encodes the clean global crop: a full EMA copy, or (``head_ema``) the student backbone itself
  without gradient, in which case the student's clean forward is reused, detached.
"""

from __future__ import annotations

import torch
from torch import nn

from open_tips.models.heads import DINOHead
from open_tips.models.tips import TIPSModel
from open_tips.train.config import TrainConfig
from open_tips.train.teacher import Teacher
from open_tips.train.terms import (
    CONTRASTIVE_PAIRS,
    ContrastiveTerm,
    DistillTerm,
    KoLeoTerm,
    MaskedModellingTerm,
    SparcTerm,
    StepViews,
    Term,
)
from open_tips.train.terms_distill import with_feature_distill


class TIPSObjective(nn.Module):
    """``loss = sum(weight * term(views))`` over ``terms``, a list of (name, weight, term).

    Each term returns ``{"loss": ..., other logged values}``; its loss is reported as ``loss_<name>`` and
    the other values under their own names. The self-distillation and MIM heads belong to their terms; the
    ``teacher`` holds their EMA copies (and, for ``full_ema``, an EMA copy of the vision tower).
    """

    def __init__(
        self,
        model: TIPSModel,
        terms: list[tuple[str, float, Term]],
        *,
        teacher_kind: str = "full_ema",
        contrastive_view: str = "clean",
    ) -> None:
        super().__init__()
        self.model = model
        self.weights = {name: float(weight) for name, weight, _ in terms}
        self.terms = nn.ModuleDict({name: term for name, _, term in terms})
        self.contrastive_view = contrastive_view
        needs_teacher = any(term.needs_teacher for term in self.terms.values())
        self.teacher = (
            Teacher(teacher_kind, model.vision, self.dino_head, self.ibot_head) if needs_teacher else None
        )

    # The heads live in their terms; these names are what the teacher, FSDP wrapping and tests refer to.
    @property
    def dino_head(self) -> DINOHead | None:
        term = self.terms["distill"] if "distill" in self.terms else None
        return term.head if term is not None else None

    @property
    def ibot_head(self) -> DINOHead | None:
        term = self.terms["mask"] if "mask" in self.terms else None
        return term.head if term is not None else None

    def train(self, mode: bool = True) -> TIPSObjective:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # DINOv2: the teacher never drops paths, whatever the student does
        return self

    def update_teacher(self, momentum: float) -> None:
        if self.teacher is not None:
            self.teacher.update(momentum, self.model.vision, self.dino_head, self.ibot_head)

    def _views(self, batch: dict) -> StepViews:
        vision, text = self.model.vision, self.model.text
        needs: set[str] = set()
        for term in self.terms.values():
            needs |= term.needs
        global_crops = batch["global_crops"]
        masks = batch["masks"] if "masked" in needs else None
        head_ema = self.teacher is not None and self.teacher.kind == "head_ema"
        if "contrastive" in needs:
            needs.add("clean" if self.contrastive_view == "clean" or masks is None else "masked")
        if head_ema:
            needs.add("clean")
        views = StepViews(global_crops=global_crops, masks=masks, num_local=0)
        if "clean" in needs:
            views.clean = vision.encode(global_crops)
        if masks is not None:
            views.masked = vision.encode(global_crops, masks)
        views.contrast = (
            views.clean if self.contrastive_view == "clean" or views.masked is None else views.masked
        )
        if "local" in needs:
            local_crops = batch["local_crops"]
            views.local = vision.encode(local_crops)
            views.num_local = local_crops.shape[0] // global_crops.shape[0]
        if self.teacher is not None:
            with torch.no_grad():
                if self.teacher.vision is not None:
                    tokens = self.teacher.vision(global_crops)  # __call__, so FSDP hooks run
                    views.teacher = self.teacher.vision.split_tokens(tokens, vision.grid_size(global_crops))
                else:
                    clean = views.clean
                    views.teacher = type(clean)(
                        clean.cls_web.detach(), clean.cls_synthetic.detach(), clean.patch_tokens.detach()
                    )
        for kind in ("web", "synthetic"):
            if f"text:{kind}" in needs:
                ids, padding = batch[f"{kind}_ids"], batch[f"{kind}_padding"]
                tokens = text.forward_tokens(ids, padding)
                views.text_tokens[kind] = tokens
                views.text_padding[kind] = padding
                views.text_ids[kind] = ids
                views.text[kind] = text.pool(tokens, padding)
        return views

    def forward(
        self, batch: dict, teacher_temp: float, weight_scales: dict[str, float] | None = None
    ) -> dict[str, torch.Tensor]:
        """``weight_scales`` multiplies the named terms' weights this step (the SSL weight warm-up)."""
        views = self._views(batch)
        out: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name, term in self.terms.items():
            result = term(
                views, teacher=self.teacher, temperature=self.model.temperature, teacher_temp=teacher_temp
            )
            loss = result.pop("loss")
            out[f"loss_{name}"] = loss
            out.update(result)
            weighted = self.weights[name] * (weight_scales or {}).get(name, 1.0) * loss
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError("the objective has no terms")
        out["loss"] = total
        out["temperature"] = self.model.temperature.detach().reshape(())
        return out


def build_terms(cfg: TrainConfig, model: TIPSModel) -> list[tuple[str, float, Term]]:
    """The config's loss section as explicit (name, weight, term) entries."""
    loss = cfg.loss
    gather_kwargs = {"local_loss": cfg.distributed.local_loss}
    pairs = CONTRASTIVE_PAIRS[loss.pairs]
    terms: list[tuple[str, float, Term]] = [
        ("contrastive", 1.0, ContrastiveTerm(list(pairs), kind=loss.contrastive, **gather_kwargs))
    ]
    width = model.cfg.vision.width
    head_kwargs = {
        "out_dim": loss.head_out_dim,
        "hidden_dim": loss.head_hidden_dim,
        "bottleneck_dim": loss.head_bottleneck_dim,
        "nlayers": loss.head_layers,
        "norm": loss.head_norm,
    }
    centre_kwargs = {
        "student_temp": loss.student_temp,
        "center_momentum": loss.center_momentum,
        "centering": loss.centering,
        "center_warm_start": loss.center_warm_start,
    }
    if loss.distill:
        cls_fields = {
            "web": ["cls_web"],
            "synthetic": ["cls_synthetic"],
            "both": ["cls_web", "cls_synthetic"],
        }
        head = DINOHead(width, **head_kwargs)
        terms.append(
            ("distill", loss.distill_weight, DistillTerm(head, cls_fields[loss.distill_cls], **centre_kwargs))
        )
    if loss.mim:
        head = DINOHead(width, **head_kwargs)
        term = MaskedModellingTerm(head, all_tokens=loss.ibot_all_tokens, **centre_kwargs)
        terms.append(("mask", loss.mask_weight, term))
    if loss.sparc_weight > 0:
        terms.append(("sparc", loss.sparc_weight, SparcTerm(loss.sparc_caption)))
    if loss.koleo_weight > 0:
        terms.append(("koleo", loss.koleo_weight, KoLeoTerm()))
    return with_feature_distill(cfg, model, terms)  # distill.teacher: a frozen teacher's features


def build_objective(cfg: TrainConfig, model: TIPSModel) -> TIPSObjective:
    return TIPSObjective(
        model,
        build_terms(cfg, model),
        teacher_kind=cfg.teacher.kind,
        contrastive_view=cfg.loss.contrastive_view,
    )
