"""Caption fields: normalisation of the stored forms and the choice of CLS2's caption per sample.

TIPSv2's multi-granularity captions: a sample may carry several synthetic captions (e.g. ``short`` and
``detailed``, possibly from several captioning models); CLS2 is trained on one of them, drawn per sample with
configurable probabilities by template.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import torch


def normalise_synthetic(raw: object) -> list[dict]:
    """``synthetic_captions`` as stored -> list of {"text", "template", "model"}.

    Accepts a list (or a single item) of plain strings (read as template "default", model "unknown") and dicts
    with a "text" field; entries without usable text are dropped, surrounding whitespace is stripped."""
    if raw is None:
        return []
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        return []
    out = []
    for item in raw:
        if isinstance(item, str):
            entry = {"text": item, "template": "default", "model": "unknown"}
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            entry = {
                "text": item["text"],
                "template": str(item.get("template") or "default"),
                "model": str(item.get("model") or "unknown"),
            }
        else:
            continue
        entry["text"] = entry["text"].strip()
        if entry["text"]:
            out.append(entry)
    return out


class CaptionPolicy:
    """Chooses the synthetic caption for CLS2, one per sample.

    ``template_weights`` maps template names to relative probabilities, renormalised over the templates the
    sample actually has; a template missing from the mapping has weight 0. When none of the sample's templates
    has weight (or ``template_weights`` is None) the choice is uniform among the sample's synthetic captions.
    A sample with no synthetic caption at all falls back to its web caption; those fall-backs are counted in
    ``fallbacks`` (per process: with DataLoader workers, read the batch's ``caption_fallbacks`` instead)."""

    FALLBACK = "web_caption_fallback"

    def __init__(self, template_weights: Mapping[str, float] | None = None) -> None:
        if template_weights is not None:
            template_weights = {str(k): float(v) for k, v in template_weights.items()}
            bad = {k: v for k, v in template_weights.items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise ValueError(f"caption template weights must be finite and >= 0, got {bad}")
            if template_weights and not any(template_weights.values()):
                raise ValueError("caption template weights are all zero")
        self.template_weights = template_weights or None
        self.fallbacks: Counter[str] = Counter()

    def choose_with_template(
        self, sample: Mapping, generator: torch.Generator | None = None
    ) -> tuple[str, str]:
        """(caption text, its template); the template is ``FALLBACK`` when the web caption stands in."""
        captions = normalise_synthetic(sample.get("synthetic_captions"))
        if not captions:
            self.fallbacks["no_synthetic_caption"] += 1
            return sample["web_caption"], self.FALLBACK
        weights = [1.0] * len(captions)
        if self.template_weights is not None:
            weighted = [self.template_weights.get(c["template"], 0.0) for c in captions]
            if sum(weighted) > 0:
                weights = weighted
        index = int(torch.multinomial(torch.tensor(weights, dtype=torch.float), 1, generator=generator))
        return captions[index]["text"], captions[index]["template"]

    def choose(self, sample: Mapping, generator: torch.Generator | None = None) -> str:
        return self.choose_with_template(sample, generator)[0]

    def __repr__(self) -> str:
        return f"CaptionPolicy(template_weights={self.template_weights})"


__all__ = ["CaptionPolicy", "normalise_synthetic"]
