"""Image-text retrieval: R@1/5/10 in both directions with several captions per image, and readers for
the COCO captions JSON and the Karpathy split JSON.

Image -> text: a hit when any of the image's captions is among the k most similar captions. Text ->
image: a hit when the caption's image is among the k most similar images. Captions whose text is
identical are interchangeable: an image counts as correct for every caption equal to one of its own
(``positives_from_captions``), so that repeated short captions (common in the built-in data) do not make
the score depend on the order of tied candidates.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from open_tips.eval.metrics import recall_at_k


def positives_from_owners(text_to_image: torch.Tensor, num_images: int) -> torch.Tensor:
    """bool [N_images, M_texts]: text j belongs to image ``text_to_image[j]``."""
    positives = torch.zeros(num_images, text_to_image.shape[0], dtype=torch.bool)
    positives[text_to_image.long(), torch.arange(text_to_image.shape[0])] = True
    return positives


def positives_from_captions(captions: list[list[str]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(flat captions, owner index per caption, positives [N, M]) where an image is positive for every
    caption whose normalised text (lower case, collapsed whitespace) equals one of its own."""
    texts = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)

    def norm(text: str) -> str:
        return " ".join(text.lower().split()).rstrip(".")

    images_of: dict[str, set[int]] = defaultdict(set)
    for text, image in zip(texts, owner.tolist()):
        images_of[norm(text)].add(image)
    positives = torch.zeros(len(captions), len(texts), dtype=torch.bool)
    for j, text in enumerate(texts):
        positives[sorted(images_of[norm(text)]), j] = True
    return texts, owner, positives


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor | None = None,
    positives: torch.Tensor | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """``i2t_R@k`` and ``t2i_R@k`` for image_emb [N, D], text_emb [M, D] (cosine similarity). Give either
    ``text_to_image`` [M] (the image index of each caption) or ``positives`` bool [N, M]."""
    if positives is None:
        if text_to_image is None:
            raise ValueError("give text_to_image or positives")
        positives = positives_from_owners(text_to_image, image_emb.shape[0])
    image = F.normalize(image_emb.float(), dim=-1)
    text = F.normalize(text_emb.float(), dim=-1)
    similarity = image @ text.T  # [N, M]
    i2t = {f"i2t_{k}": v for k, v in recall_at_k(similarity, positives, ks).items()}
    t2i = {f"t2i_{k}": v for k, v in recall_at_k(similarity.T, positives.T, ks).items()}
    return {**i2t, **t2i}


def read_coco_captions(annotation_file: str | Path) -> list[tuple[str, list[str]]]:
    """COCO captions JSON (``images`` with ``id`` / ``file_name``, ``annotations`` with ``image_id`` /
    ``caption``) -> [(file_name, captions)] in the file's image order, images without captions left out."""
    data = json.loads(Path(annotation_file).read_text())
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data["annotations"]:
        captions[ann["image_id"]].append(" ".join(ann["caption"].split()))
    return [(im["file_name"], captions[im["id"]]) for im in data["images"] if captions.get(im["id"])]


def read_karpathy(annotation_file: str | Path, split: str = "test") -> list[tuple[str, list[str]]]:
    """Karpathy split JSON (``dataset_coco.json`` / ``dataset_flickr30k.json``: ``images`` with ``filepath``
    (optional), ``filename``, ``split`` and ``sentences`` [{"raw"}]) -> [(relative path, captions)] of
    ``split`` ("train", "restval", "val" or "test")."""
    data = json.loads(Path(annotation_file).read_text())
    out = []
    for image in data["images"]:
        if image.get("split") != split:
            continue
        name = str(Path(image.get("filepath", "")) / image["filename"])
        out.append((name, [" ".join(s["raw"].split()) for s in image["sentences"]]))
    return out


def is_karpathy(annotation_file: str | Path) -> bool:
    """Whether a JSON file looks like a Karpathy split file (reads only the start of the file)."""
    with open(annotation_file, encoding="utf-8", errors="replace") as handle:
        head = handle.read(1 << 16)
    return '"sentences"' in head and '"split"' in head
