"""Zero-shot classification: the image's CLS embedding (CLS1 = web, CLS2 = synthetic, or the mean of both
unit vectors) against class embeddings averaged over prompt templates; top-1 / top-5."""

from __future__ import annotations

import torch

from open_tips.eval.features import FeatureSet
from open_tips.eval.metrics import topk_accuracy
from open_tips.inference.zeroshot import TIPS_TEMPLATES, class_embeddings, image_embedding

CLS_CHOICES = ("web", "synthetic", "mean")


def zeroshot_scores(features: FeatureSet, classes: torch.Tensor, which: str = "mean") -> torch.Tensor:
    """[N, C] cosines between the chosen image embedding and unit class embeddings ``classes`` [C, D]."""
    image = image_embedding(features.cls_web, features.cls_synthetic, which)
    return image @ classes.float().cpu().T


def zeroshot_accuracy(
    model,
    features: FeatureSet,
    labels: torch.Tensor,
    class_names: list[str],
    templates: list[str] | None = None,
    which: str | tuple[str, ...] = CLS_CHOICES,
    classes: torch.Tensor | None = None,
) -> dict:
    """``labels`` index ``class_names``. One result per CLS choice in ``which``: ``{"web": {"top1", "top5"},
    ...}`` for a tuple, or the flat ``{"top1", "top5"}`` for one name. ``classes`` (unit [C, D]) skips the
    text tower when the class embeddings are already known."""
    if classes is None:
        classes = class_embeddings(model, class_names, templates or TIPS_TEMPLATES)
    if isinstance(which, str):
        return topk_accuracy(zeroshot_scores(features, classes, which), labels.long())
    return {name: topk_accuracy(zeroshot_scores(features, classes, name), labels.long()) for name in which}
