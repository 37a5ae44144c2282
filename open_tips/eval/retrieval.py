"""Image-text retrieval, R@1/5/10 in both directions, several captions per image."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from open_tips.eval.metrics import recall_at_k


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor) -> dict[str, float]:
    """image_emb [N, D], text_emb [M, D], text_to_image [M] (index of each caption's image)."""
    image = F.normalize(image_emb.float(), dim=-1)
    text = F.normalize(text_emb.float(), dim=-1)
    similarity = image @ text.T  # [N, M]
    positives = torch.zeros_like(similarity, dtype=torch.bool)
    positives[text_to_image.long(), torch.arange(text.shape[0])] = True
    i2t = {f"i2t_{k}": v for k, v in recall_at_k(similarity, positives).items()}
    t2i = {f"t2i_{k}": v for k, v in recall_at_k(similarity.T, positives.T).items()}
    return {**i2t, **t2i}


def read_coco_captions(annotation_file: str | Path) -> list[tuple[str, list[str]]]:
    """COCO captions JSON -> [(file_name, captions)] for images that have captions."""
    data = json.loads(Path(annotation_file).read_text())
    captions = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(ann["caption"].strip())
    return [(im["file_name"], captions[im["id"]]) for im in data["images"] if captions.get(im["id"])]


def read_karpathy(annotation_file: str | Path, split: str = "test") -> list[tuple[str, list[str]]]:
    """Karpathy split JSON ({"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]})."""
    data = json.loads(Path(annotation_file).read_text())
    out = []
    for image in data["images"]:
        if image.get("split") != split:
            continue
        name = str(Path(image.get("filepath", "")) / image["filename"])
        out.append((name, [s["raw"].strip() for s in image["sentences"]]))
    return out
