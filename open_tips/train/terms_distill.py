"""Feature distillation from a frozen teacher (``distill.teacher``): the student's clean global crop is
pulled towards the teacher's features of the same pixels, on both CLS tokens and on the patch tokens.

The teacher is any model ``open_tips.load_pretrained`` reads (a released ``.npz``, an HF directory, a hub id,
a training run), frozen, in eval mode and run without gradient. It is deliberately *not* a submodule of the
term: it stays out of the objective's ``state_dict`` (checkpoints keep only what trains), out of the optimiser,
and out of DDP / FSDP wrapping; it follows the student's device on first use. When the teacher's width differs
from the student's, learned linear projections (student width -> teacher width) belong to the term, so they
are saved in checkpoints and resumed with the objective.

Besides feature mimicry, two terms from the CLIP distillation literature (CLIP-KD, Yang et al. 2024;
TinyCLIP) use the teacher's text tower too: *logit* (relational) distillation, the KL divergence between the
teacher's and the student's in-batch image-text similarity distributions (both directions, both at the
teacher's temperature), and *interactive* contrastive losses (the student's image embeddings against the
teacher's text embeddings and the teacher's image embeddings against the student's text ones, after the
projections when widths differ). Both need no labels beyond the batch's own pairing and need the teacher to
read the student's token ids (same tokenizer).

TIPS made its S/B/L models by distilling from g/14; how is not published. Choices: the student's clean global
crop (not the local or masked crops) is matched; the cosine loss compares directions (features L2-normalised),
smooth-L1 compares raw post-norm values; the relational terms use the local batch (no cross-rank gather).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from open_tips.formats.load import load_pretrained
from open_tips.losses.contrastive import clip_loss
from open_tips.models.tips import TIPSModel
from open_tips.models.vision import ImageEmbeddings
from open_tips.train.config import DistillSection, TrainConfig
from open_tips.train.terms import CONTRASTIVE_PAIRS, StepViews, Term

LOSSES = ("cosine", "smooth_l1")
CLS_FIELDS = ("cls_web", "cls_synthetic")


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over all leading positions of the per-vector distance (last dim = features)."""
    student, teacher = student.float(), teacher.float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(student, teacher)
    raise ValueError(f"distill.loss: {kind!r} is not one of {', '.join(LOSSES)}")


def logit_distill_loss(
    student_image: torch.Tensor,
    student_text: torch.Tensor,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    temperature: float | torch.Tensor,
) -> torch.Tensor:
    """Relational distillation: mean of KL(teacher || student) over the rows (image -> text) and the columns
    (text -> image) of the in-batch cosine-similarity matrices, both divided by ``temperature``. Zero when
    the student's similarities equal the teacher's; gradient only to the student's embeddings."""
    with torch.autocast(student_image.device.type, enabled=False):
        student = F.normalize(student_image.float(), dim=-1) @ F.normalize(student_text.float(), dim=-1).T
        with torch.no_grad():
            teacher = F.normalize(teacher_image.float(), dim=-1) @ F.normalize(teacher_text.float(), dim=-1).T
        student, teacher = student / temperature, teacher / temperature
        losses = [
            F.kl_div(
                F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True, reduction="batchmean"
            )
            for s, t in ((student, teacher), (student.T, teacher.T))
        ]
        return 0.5 * (losses[0] + losses[1])


class FeatureDistillTerm(Term):
    """``cls_weight * mean(loss(cls_web), loss(cls_synthetic)) + patch_weight * loss(patch tokens)``, plus
    ``text_weight * mean(loss(pooled text))`` over the caption kinds when ``text_weight > 0``, plus
    ``logit_weight * mean(logit_distill_loss)`` and ``interactive_weight * mean(interactive contrastive)``
    over the image-text ``pairs`` (CLS field, caption kind) when those weights are > 0.

    Logged: ``fdistill_cls``, ``fdistill_patch``, ``fdistill_text``, ``fdistill_logit`` and
    ``fdistill_interactive`` (unweighted)."""

    def __init__(
        self,
        teacher: TIPSModel,
        student_width: int,
        *,
        cls_weight: float = 1.0,
        patch_weight: float = 1.0,
        loss: str = "cosine",
        text_weight: float = 0.0,
        captions: tuple[str, ...] = ("web", "synthetic"),
        logit_weight: float = 0.0,
        interactive_weight: float = 0.0,
        pairs: tuple[tuple[str, str], ...] = (("cls_web", "web"), ("cls_synthetic", "synthetic")),
    ) -> None:
        super().__init__()
        self.text_weight = float(text_weight)
        self.logit_weight, self.interactive_weight = float(logit_weight), float(interactive_weight)
        relational = self.logit_weight > 0 or self.interactive_weight > 0
        self.pairs = tuple(pairs) if relational else ()
        self.mimic_captions = tuple(captions) if self.text_weight > 0 else ()
        # every caption kind whose teacher text is needed
        self.captions = tuple(dict.fromkeys(self.mimic_captions + tuple(k for _, k in self.pairs)))
        self.needs = frozenset({"clean"} | {f"text:{kind}" for kind in self.captions})
        if (self.text_weight > 0 or relational) and teacher.text is None:
            raise ValueError(
                "distill.text_weight, logit_weight and interactive_weight > 0 need a teacher with a text tower"
            )
        if loss not in LOSSES:
            raise ValueError(f"distill.loss: {loss!r} is not one of {', '.join(LOSSES)}")
        teacher.requires_grad_(False)
        teacher.eval()
        # object.__setattr__ keeps the frozen teacher out of the module tree (see the module docstring).
        object.__setattr__(self, "teacher_model", teacher)
        self.cls_weight, self.patch_weight, self.kind = float(cls_weight), float(patch_weight), loss
        width = teacher.cfg.vision.width
        # Separate maps for CLS and patches: in TIPS the two live in different parts of the feature space
        # (the CLS tokens are trained against text, the patches only through MIM).
        self.proj_cls = nn.Linear(student_width, width) if width != student_width else None
        self.proj_patch = nn.Linear(student_width, width) if width != student_width else None
        # Student text -> teacher space: for text mimicry and for the teacher-image vs student-text loss.
        needs_text_map = self.text_weight > 0 or self.interactive_weight > 0
        self.proj_text = (
            nn.Linear(student_width, width) if width != student_width and needs_text_map else None
        )
        # The teacher's own temperature, fixed: the scale its similarity distributions were trained at.
        self.teacher_temperature = float(teacher.temperature.detach().reshape(()))

    def train(self, mode: bool = True) -> FeatureDistillTerm:
        super().train(mode)
        self.teacher_model.eval()  # frozen: never drop paths, whatever the student does
        return self

    @torch.no_grad()
    def teacher_features(self, pixels: torch.Tensor, grid: tuple[int, int]) -> ImageEmbeddings:
        """The teacher's embeddings of ``pixels``, its patch grid resized (bilinear) to the student's
        ``grid`` when the two differ (another patch size)."""
        teacher = self.teacher_model
        if teacher.device != pixels.device:
            teacher.to(pixels.device)
        patch = teacher.cfg.vision.patch_size
        height, width = pixels.shape[-2:]
        if height % patch or width % patch:  # the student's crop, at the nearest size the teacher accepts
            size = (max(patch, round(height / patch) * patch), max(patch, round(width / patch) * patch))
            pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
            pixels = pixels.clamp(0.0, 1.0)
        out = teacher.vision.encode(pixels)
        patches = out.patch_tokens
        if tuple(patches.shape[1:3]) != tuple(grid):
            patches = F.interpolate(
                patches.permute(0, 3, 1, 2).float(), size=grid, mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        return ImageEmbeddings(out.cls_web, out.cls_synthetic, patches)

    def forward(self, views: StepViews, **_: object) -> dict[str, torch.Tensor]:
        student = views.clean
        grid = tuple(student.patch_tokens.shape[1:3])
        target = self.teacher_features(views.global_crops, grid)
        project_cls = self.proj_cls or nn.Identity()
        project_patch = self.proj_patch or nn.Identity()
        cls_loss = torch.stack(
            [
                feature_loss(project_cls(getattr(student, name)), getattr(target, name), self.kind)
                for name in CLS_FIELDS
            ]
        ).mean()
        patch_loss = feature_loss(project_patch(student.patch_tokens), target.patch_tokens, self.kind)
        loss = self.cls_weight * cls_loss + self.patch_weight * patch_loss
        out = {"fdistill_cls": cls_loss.detach(), "fdistill_patch": patch_loss.detach()}
        if not self.captions:
            return {"loss": loss, **out}
        project_text = self.proj_text or nn.Identity()
        with torch.no_grad():
            teacher_text = {
                kind: self.teacher_model.text(views.text_ids[kind], views.text_padding[kind])
                for kind in self.captions
            }
        if self.mimic_captions:
            text_loss = torch.stack(
                [
                    feature_loss(project_text(views.text[kind]), teacher_text[kind], self.kind)
                    for kind in self.mimic_captions
                ]
            ).mean()
            loss = loss + self.text_weight * text_loss
            out["fdistill_text"] = text_loss.detach()
        if self.logit_weight > 0:
            logit_loss = torch.stack(
                [
                    logit_distill_loss(
                        getattr(student, name),
                        views.text[kind],
                        getattr(target, name),
                        teacher_text[kind],
                        self.teacher_temperature,
                    )
                    for name, kind in self.pairs
                ]
            ).mean()
            loss = loss + self.logit_weight * logit_loss
            out["fdistill_logit"] = logit_loss.detach()
        if self.interactive_weight > 0:
            # CLIP-KD's ICL: each student tower contrasted against the other tower's teacher embeddings.
            values = []
            for name, kind in self.pairs:
                values.append(
                    clip_loss(
                        project_cls(getattr(student, name)),
                        teacher_text[kind],
                        self.teacher_temperature,
                        gather=False,
                    )
                )
                values.append(
                    clip_loss(
                        getattr(target, name),
                        project_text(views.text[kind]),
                        self.teacher_temperature,
                        gather=False,
                    )
                )
            interactive = torch.stack(values).mean()
            loss = loss + self.interactive_weight * interactive
            out["fdistill_interactive"] = interactive.detach()
        return {"loss": loss, **out}


_PROBE_TEXTS = ("a photo of a red circle.", "Two small BLUE squares next to a large green triangle!")


def load_teacher(section: DistillSection, tokenizer=None) -> TIPSModel:
    """The frozen teacher named by ``distill.teacher``; load errors name the key. With
    ``distill.text_weight``, ``logit_weight`` or ``interactive_weight`` > 0 the teacher's text tower is loaded
    and must read the student's token ids: its tokenizer (when it has one) must encode like ``tokenizer``."""
    with_text = section.reads_teacher_text
    try:
        teacher = load_pretrained(section.teacher, vision_only=not with_text)
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        raise type(err)(f"distill.teacher={section.teacher}: {err}") from err
    if with_text:
        if teacher.text is None:
            raise ValueError(
                f"distill.text_weight / logit_weight / interactive_weight > 0: "
                f"distill.teacher={section.teacher} has no text tower"
            )
        theirs = getattr(teacher, "tokenizer", None)
        if tokenizer is not None and theirs is not None:
            if theirs.encode(list(_PROBE_TEXTS)) != tokenizer.encode(list(_PROBE_TEXTS)):
                raise ValueError(
                    f"distill.text_weight / logit_weight / interactive_weight > 0: "
                    f"distill.teacher={section.teacher} tokenizes text differently "
                    "from this run (set data.tokenizer to the teacher's tokenizer.model)"
                )
        if tokenizer is not None and teacher.cfg.text.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"distill.teacher={section.teacher}: {teacher.cfg.text.vocab_size} token embeddings, "
                f"the run's tokenizer has {tokenizer.vocab_size} pieces"
            )
    return teacher


def with_feature_distill(cfg: TrainConfig, model: TIPSModel, terms: list[tuple[str, float, Term]]) -> list:
    """``terms`` plus the feature-distillation term when ``distill.teacher`` is set. Without
    ``distill.combine_with_tips`` the TIPS terms are dropped, except the image-text contrastive one when
    ``distill.contrastive`` (the text tower learns only from it)."""
    section = cfg.distill
    if not section.teacher:
        return terms
    if not section.combine_with_tips:
        terms = [t for t in terms if t[0] == "contrastive" and section.contrastive]
        # Unused without MIM; frozen so that the optimiser's saved state covers every trainable parameter
        # (a parameter without a gradient has no AdamW state, and --resume loads that state strictly).
        model.vision.mask_token.requires_grad_(False)
        if not terms:
            # Nothing uses them now either: frozen for the same reason.
            model.log_temperature.requires_grad_(False)
            if not section.reads_teacher_text and model.text is not None:
                model.text.requires_grad_(False)
    # The image-text pairs of the relational terms are the contrastive loss's; text mimicry uses their captions.
    pairs = CONTRASTIVE_PAIRS[cfg.loss.pairs]
    captions = tuple(dict.fromkeys(kind for _, kind in pairs))
    term = FeatureDistillTerm(
        load_teacher(section, getattr(model, "tokenizer", None)),
        model.cfg.vision.width,
        cls_weight=section.cls_weight,
        patch_weight=section.patch_weight,
        loss=section.loss,
        text_weight=section.text_weight,
        captions=captions,
        logit_weight=section.logit_weight,
        interactive_weight=section.interactive_weight,
        pairs=pairs,
    )
    return [*terms, ("feature_distill", 1.0, term)]
