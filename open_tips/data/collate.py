"""Samples -> the batch dict the trainer consumes (docs/architecture.md, "Batches fed to the trainer").

```
global_crops   float [B, 3, G, G] in [0, 1]
local_crops    float [B*M, 3, S, S] crop-major (all samples' local crop 0, then crop 1, ...), or None if M = 0
masks          bool  [B, (G/p)**2], True = masked (MIM), on the global crop's patch grid
web_ids, web_padding             long / bool [B, L]
synthetic_ids, synthetic_padding long / bool [B, L]   (one caption per sample, chosen by the caption policy)
keys           list[str]
synthetic_templates list[str]   template of each chosen caption ("web_caption_fallback" when none existed)
caption_fallbacks   int         samples in this batch without any synthetic caption (web caption used)
skip_counts    dict[reader id, dict[reason, count]]   running skip totals of the readers (see shards.py)
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from open_tips.data.captions import CaptionPolicy
from open_tips.data.crops import MultiCropTransform
from open_tips.data.masking import MaskGenerator

TokenizerFn = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


class TIPSBatchBuilder:
    """A DataLoader ``collate_fn``: ``builder(samples, seeds=None) -> batch dict``.

    tokenizer: ``list[str] -> (ids LongTensor[B, L], padding BoolTensor[B, L])`` such as
    open_tips.data.tokenizer.Tokenizer. ``seeds`` (one per sample) make each sample's crops, mask and caption
    choice a function of its seed alone, so a sample is augmented identically whatever the batch split across
    ranks; without them torch's global generator is used (DataLoader seeds it per worker)."""

    def __init__(
        self,
        tokenizer: TokenizerFn,
        crops: MultiCropTransform,
        mask_generator: MaskGenerator,
        caption_policy: CaptionPolicy | None = None,
        patch_size: int = 14,
    ) -> None:
        self.tokenizer = tokenizer
        self.crops = crops
        self.mask_generator = mask_generator
        self.caption_policy = caption_policy or CaptionPolicy()
        self.patch_size = patch_size

    def _one(self, sample: dict) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, str, str]:
        global_crop, local_crops = self.crops(sample["image"])
        height, width = global_crop.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"global crop {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        mask = self.mask_generator((height // self.patch_size, width // self.patch_size))
        text, template = self.caption_policy.choose_with_template(sample)
        return global_crop, local_crops, mask, text, template

    def __call__(self, samples: Sequence[dict], seeds: Sequence[int] | None = None) -> dict:
        if not samples:
            raise ValueError("cannot build a batch from no samples")
        if seeds is not None and len(seeds) != len(samples):
            raise ValueError(f"{len(seeds)} seeds for {len(samples)} samples")
        parts = []
        for index, sample in enumerate(samples):
            if seeds is None:
                parts.append(self._one(sample))
            else:
                with torch.random.fork_rng(devices=[]):
                    # the CPU generator alone (all the crops and masks draw from): torch.manual_seed would
                    # also queue lazy CUDA/XPU/MTIA seeding, each recording a stack trace (~2 ms a sample)
                    torch.default_generator.manual_seed(seeds[index])
                    parts.append(self._one(sample))
        batch_size = len(samples)
        num_local = len(parts[0][1])
        # Crop-major: all samples' local crop 0, then crop 1, ... (so local_crops.chunk(M) gives one crop each).
        local_crops = (
            torch.stack([parts[b][1][m] for m in range(num_local) for b in range(batch_size)])
            if num_local
            else None
        )
        web_ids, web_padding = self.tokenizer([s["web_caption"] for s in samples])
        synthetic_ids, synthetic_padding = self.tokenizer([p[3] for p in parts])
        skip_counts: dict[str, dict[str, int]] = {}
        for sample in samples:  # the latest running totals per reader (samples arrive in reading order)
            skip_counts.update(sample.get("__skip_counts__") or {})
        templates = [p[4] for p in parts]
        return {
            "global_crops": torch.stack([p[0] for p in parts]),
            "local_crops": local_crops,
            "masks": torch.stack([p[2] for p in parts]),
            "web_ids": web_ids,
            "web_padding": web_padding,
            "synthetic_ids": synthetic_ids,
            "synthetic_padding": synthetic_padding,
            "keys": [str(s.get("__key__", "")) for s in samples],
            "synthetic_templates": templates,
            "caption_fallbacks": templates.count(CaptionPolicy.FALLBACK),
            "skip_counts": skip_counts,
        }


__all__ = ["TIPSBatchBuilder", "TokenizerFn"]
