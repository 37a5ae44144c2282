"""Zero-shot segmentation (MaskCLIP value trick on the last block, prompt-averaged class text), mIoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from open_tips.eval.metrics import confusion_matrix, mean_iou, pixel_accuracy
from open_tips.inference.zeroshot import class_embeddings


def zeroshot_segmentation(model, value_tokens: torch.Tensor, masks: torch.Tensor, class_names: list[str],
                          templates: list[str], ignore_index: int = 255) -> dict[str, float]:
    """value_tokens [N, h, w, D] from ``forward_value_trick``; masks [N, H, W] indexing ``class_names``
    (include a "background" name when the masks have a background class)."""
    classes = class_embeddings(model, class_names, templates).float().cpu()
    cosine = torch.einsum("nhwd,cd->nchw", F.normalize(value_tokens.float(), dim=-1), classes)
    logits = F.interpolate(cosine, size=tuple(masks.shape[1:]), mode="bilinear", align_corners=False)
    confusion = confusion_matrix(logits.argmax(dim=1), masks, len(class_names), ignore_index)
    return {"miou": mean_iou(confusion), "pixel_accuracy": pixel_accuracy(confusion)}
