"""Caption fields: normalisation of the stored forms and the choice of CLS2's caption per sample.

TIPSv2's multi-granularity captions: each sample may carry several synthetic captions (e.g. ``short`` and
``detailed``); CLS2 is trained on one of them, drawn per sample with configurable template probabilities.
"""

from __future__ import annotations

from collections import Counter

import torch


def normalise_synthetic(raw) -> list[dict]:
    """``synthetic_captions`` as stored (strings or dicts) -> list of {"text", "template", "model"};
    entries without text are dropped."""
    if raw is None:
        return []
    if isinstance(raw, (str, dict)):
        raw = [raw]
    out = []
    for item in raw:
        if isinstance(item, str):
            entry = {"text": item, "template": "default", "model": "unknown"}
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            entry = {"text": item["text"], "template": str(item.get("template", "default")),
                     "model": str(item.get("model", "unknown"))}
        else:
            continue
        if entry["text"].strip():
            out.append(entry)
    return out


class CaptionPolicy:
    """Chooses the synthetic caption for CLS2. ``template_weights`` maps template names to probabilities
    (renormalised over the templates a sample has); None = uniform over the sample's captions. A sample with
    no synthetic caption falls back to its web caption and is counted in ``fallbacks``."""

    def __init__(self, template_weights: dict[str, float] | None = None) -> None:
        if template_weights is not None and any(w < 0 for w in template_weights.values()):
            raise ValueError("caption template weights must be >= 0")
        self.template_weights = template_weights
        self.fallbacks = Counter()

    def choose(self, sample: dict, generator: torch.Generator | None = None) -> str:
        captions = normalise_synthetic(sample.get("synthetic_captions"))
        if not captions:
            self.fallbacks["no_synthetic_caption"] += 1
            return sample["web_caption"]
        if self.template_weights is None:
            weights = [1.0] * len(captions)
        else:
            weights = [self.template_weights.get(c["template"], 0.0) for c in captions]
            if sum(weights) <= 0:  # none of the weighted templates present: uniform
                weights = [1.0] * len(captions)
        index = int(torch.multinomial(torch.tensor(weights, dtype=torch.float), 1, generator=generator))
        return captions[index]["text"]
