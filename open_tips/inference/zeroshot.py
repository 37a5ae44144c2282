"""Zero-shot heads: class embeddings from prompt templates, image embeddings from either CLS token."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

# The official zero-shot segmentation notebook's nine templates (the TCL paper's subset of the ImageNet ones).
TIPS_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of many {}.",
    "a photo of {}s.",
]
TEMPLATE_SETS = {
    "default": TIPS_TEMPLATES,
    "tips": TIPS_TEMPLATES,
    "simple": ["a photo of a {}."],
    "none": ["{}"],
}


def load_templates(spec: str) -> list[str]:
    """A named set (default/tips, simple, none) or a file with one template per line containing ``{}``."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"unknown template set {spec!r} (named: {', '.join(TEMPLATE_SETS)}; or a file)")
    templates = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(f"{path}: every template needs a '{{}}' placeholder (bad: {bad[:3]})")
    return templates


def load_class_names(classes: str | None, classes_file: str | None) -> list[str]:
    """Class names from a comma-separated string or a file with one name per line (blank lines skipped)."""
    if classes_file:
        names = [line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip()]
    elif classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        raise ValueError("give --classes or --classes-file")
    if not names:
        raise ValueError("no class names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate class names: {', '.join(duplicates)}")
    return names


@torch.no_grad()
def class_embeddings(
    model, class_names: list[str], templates: list[str], batch_size: int = 256
) -> torch.Tensor:
    """[C, D] unit vectors: per class, the mean of the L2-normalised prompt embeddings, renormalised."""
    prompts = [template.format(name) for name in class_names for template in templates]
    chunks = [
        F.normalize(model.encode_text(prompts[i : i + batch_size]), dim=-1)
        for i in range(0, len(prompts), batch_size)
    ]
    per_prompt = torch.cat(chunks).reshape(len(class_names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def image_embedding(cls_web: torch.Tensor, cls_synthetic: torch.Tensor, which: str) -> torch.Tensor:
    """Unit image vectors from ``cls_web``, ``cls_synthetic`` or the mean of both (each normalised first)."""
    web = F.normalize(cls_web, dim=-1)
    synthetic = F.normalize(cls_synthetic, dim=-1)
    if which == "web":
        return web
    if which == "synthetic":
        return synthetic
    if which == "mean":
        return F.normalize(web + synthetic, dim=-1)
    raise ValueError(f"cls must be web, synthetic or mean, got {which!r}")


def class_probabilities(image_emb: torch.Tensor, class_emb: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, C] softmax over classes of cosine / temperature (both inputs unit vectors)."""
    return (image_emb.float() @ class_emb.float().T / temperature).softmax(dim=-1)
