"""The TIPS training objective: dual contrastive + self-distillation + MIM (+ SPARC, KoLeo), one module.

Views (choices documented in docs/training.md):
- the student encodes the clean global crop for the contrastive loss (``loss.contrastive_view=clean``) and
  the masked global crop for MIM; the local crops feed self-distillation;
- the teacher encodes the clean global crop: a full EMA copy, or (``head_ema``) the student backbone itself
  without gradient, in which case the student's clean forward is reused, detached.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from open_tips.losses.contrastive import clip_loss, siglip_loss
from open_tips.losses.dino import DINOLoss
from open_tips.losses.ibot import IBOTPatchLoss
from open_tips.losses.koleo import koleo_loss
from open_tips.losses.sparc import sparc_loss
from open_tips.models.heads import DINOHead
from open_tips.models.tips import TIPSModel
from open_tips.train.config import TrainConfig
from open_tips.train.teacher import Teacher

PREFIX = 2  # CLS1 + CLS2 ahead of the patch tokens


def _select_cls(tokens: torch.Tensor, which: str) -> list[torch.Tensor]:
    return {"web": [tokens[:, 0]], "synthetic": [tokens[:, 1]], "both": [tokens[:, 0], tokens[:, 1]]}[which]


class TIPSObjective(nn.Module):
    def __init__(self, cfg: TrainConfig, model: TIPSModel) -> None:
        super().__init__()
        self.cfg = cfg
        loss = cfg.loss
        self.model = model
        width = model.cfg.vision.width
        head_kwargs = dict(
            out_dim=loss.head_out_dim,
            hidden_dim=loss.head_hidden_dim,
            bottleneck_dim=loss.head_bottleneck_dim,
            nlayers=loss.head_layers,
        )
        self.dino_head = DINOHead(width, **head_kwargs) if loss.distill else None
        self.ibot_head = DINOHead(width, **head_kwargs) if loss.mim else None
        self.dino_loss = (
            DINOLoss(loss.head_out_dim, student_temp=loss.student_temp, center_momentum=loss.center_momentum)
            if loss.distill
            else None
        )
        self.ibot_loss = (
            IBOTPatchLoss(
                loss.head_out_dim, student_temp=loss.student_temp, center_momentum=loss.center_momentum
            )
            if loss.mim
            else None
        )
        self.siglip_bias = nn.Parameter(torch.tensor([-10.0])) if loss.contrastive == "sigmoid" else None
        self.teacher = (
            Teacher(cfg.teacher.kind, model.vision, self.dino_head, self.ibot_head)
            if (loss.distill or loss.mim)
            else None
        )

    # -- pieces -------------------------------------------------------------------------------------------
    def _contrastive(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        temperature = self.model.temperature
        gather = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.siglip_bias is not None:
            return siglip_loss(image, text, temperature, self.siglip_bias)
        return clip_loss(image, text, temperature, gather=gather, local_loss=self.cfg.distributed.local_loss)

    def update_teacher(self, momentum: float) -> None:
        if self.teacher is not None:
            self.teacher.update(momentum, self.model.vision, self.dino_head, self.ibot_head)

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, batch: dict, teacher_temp: float) -> dict[str, torch.Tensor]:
        cfg = self.cfg.loss
        vision, text = self.model.vision, self.model.text
        global_crops = batch["global_crops"]
        masks = batch["masks"] if cfg.mim else None
        out: dict[str, torch.Tensor] = {}

        need_clean = (
            cfg.contrastive_view == "clean"
            or not cfg.mim
            or (self.teacher is not None and self.teacher.kind == "head_ema")
        )
        clean = vision.forward_tokens(global_crops) if need_clean else None
        masked = vision.forward_tokens(global_crops, masks) if cfg.mim else None
        contrast = clean if (cfg.contrastive_view == "clean" or masked is None) else masked

        # Text: one tower for both captions; per-token features kept for SPARC.
        need_synthetic = cfg.pairs in ("dual", "synthetic") or (
            cfg.sparc_weight > 0 and cfg.sparc_caption == "synthetic"
        )
        need_web = cfg.pairs in ("dual", "web") or (cfg.sparc_weight > 0 and cfg.sparc_caption == "web")
        text_tokens, text_emb = {}, {}
        for kind, needed in (("web", need_web), ("synthetic", need_synthetic)):
            if needed:
                ids, padding = batch[f"{kind}_ids"], batch[f"{kind}_padding"]
                text_tokens[kind] = text.forward_tokens(ids, padding)
                text_emb[kind] = text.pool(text_tokens[kind], padding)

        if cfg.pairs == "dual":
            out["loss_web"] = self._contrastive(contrast[:, 0], text_emb["web"])
            out["loss_synthetic"] = self._contrastive(contrast[:, 1], text_emb["synthetic"])
            out["loss_contrastive"] = 0.5 * (out["loss_web"] + out["loss_synthetic"])
        else:
            out["loss_contrastive"] = self._contrastive(contrast[:, 0], text_emb[cfg.pairs])
        total = out["loss_contrastive"]

        if self.teacher is not None:
            with torch.no_grad():
                if self.teacher.vision is not None:
                    teacher_tokens = self.teacher.vision(global_crops)  # __call__: FSDP hooks run
                else:
                    teacher_tokens = clean.detach()
            if cfg.distill:
                local_tokens = vision.forward_tokens(batch["local_crops"])
                num_local = self.cfg.data.num_local
                losses = []
                teacher_logits_all = []
                for teacher_cls, student_cls in zip(
                    _select_cls(teacher_tokens, cfg.distill_cls), _select_cls(local_tokens, cfg.distill_cls)
                ):
                    with torch.no_grad():
                        teacher_logits = self.teacher.dino_head(teacher_cls)
                        teacher_probs = self.dino_loss.softmax_center_teacher(teacher_logits, teacher_temp)
                    student_logits = self.dino_head(student_cls).chunk(num_local)
                    losses.append(self.dino_loss(list(student_logits), [teacher_probs]))
                    teacher_logits_all.append(teacher_logits)
                out["loss_distill"] = torch.stack(losses).mean()
                total = total + cfg.distill_weight * out["loss_distill"]
                self.dino_loss.update_center(torch.cat(teacher_logits_all))
            if cfg.mim:
                with torch.no_grad():
                    teacher_patch_logits = self.teacher.ibot_head(teacher_tokens[:, PREFIX:])
                    teacher_patch_probs = self.ibot_loss.softmax_center_teacher(
                        teacher_patch_logits, teacher_temp
                    )
                student_patch_logits = self.ibot_head(masked[:, PREFIX:])
                out["loss_mask"] = self.ibot_loss(
                    student_patch_logits, teacher_patch_probs, masks, all_tokens=cfg.ibot_all_tokens
                )
                total = total + cfg.mask_weight * out["loss_mask"]
                self.ibot_loss.update_center(teacher_patch_logits)

        if cfg.sparc_weight > 0:
            kind = cfg.sparc_caption
            out["loss_sparc"] = sparc_loss(
                contrast[:, PREFIX:], text_tokens[kind], batch[f"{kind}_padding"], self.model.temperature
            )
            total = total + cfg.sparc_weight * out["loss_sparc"]
        if cfg.koleo_weight > 0:
            out["loss_koleo"] = koleo_loss(contrast[:, 0])
            total = total + cfg.koleo_weight * out["loss_koleo"]
        out["loss"] = total
        out["temperature"] = self.model.temperature.detach().reshape(())
        return out
