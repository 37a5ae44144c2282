"""Zero-shot classification: image CLS (web, synthetic or their mean) against prompt-averaged class text."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from open_tips.eval.metrics import topk_accuracy
from open_tips.inference.zeroshot import class_embeddings


def zeroshot_accuracy(model, features: dict[str, torch.Tensor], labels: torch.Tensor, class_names: list[str],
                      templates: list[str], which: str = "mean") -> dict[str, float]:
    """``labels`` index ``class_names``."""
    classes = class_embeddings(model, class_names, templates).float().cpu()
    web = F.normalize(features["cls_web"], dim=-1)
    synthetic = F.normalize(features["cls_synthetic"], dim=-1)
    image = {"web": web, "synthetic": synthetic, "mean": F.normalize(web + synthetic, dim=-1)}[which]
    return topk_accuracy(image @ classes.T, labels.long())
