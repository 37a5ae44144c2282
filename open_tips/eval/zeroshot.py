"""Zero-shot classification: image CLS (web, synthetic or their mean) against prompt-averaged class text."""

from __future__ import annotations

import torch

from open_tips.eval.metrics import topk_accuracy
from open_tips.inference.zeroshot import class_embeddings, image_embedding


def zeroshot_accuracy(model, features: dict[str, torch.Tensor], labels: torch.Tensor, class_names: list[str],
                      templates: list[str], which: str = "mean") -> dict[str, float]:
    """``labels`` index ``class_names``."""
    classes = class_embeddings(model, class_names, templates).float().cpu()
    image = image_embedding(features["cls_web"], features["cls_synthetic"], which)
    return topk_accuracy(image @ classes.T, labels.long())
