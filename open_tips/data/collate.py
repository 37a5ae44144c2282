"""Samples -> the batch dict the trainer consumes (see docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from open_tips.data.captions import CaptionPolicy
from open_tips.data.crops import MultiCropTransform
from open_tips.data.masking import MaskGenerator

TokenizerFn = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


class TIPSBatchBuilder:
    def __init__(self, tokenizer: TokenizerFn, crops: MultiCropTransform, mask_generator: MaskGenerator,
                 caption_policy: CaptionPolicy | None = None, patch_size: int = 14) -> None:
        self.tokenizer = tokenizer
        self.crops = crops
        self.mask_generator = mask_generator
        self.caption_policy = caption_policy or CaptionPolicy()
        self.patch_size = patch_size

    def _one(self, sample: dict) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, str]:
        global_crop, local_crops = self.crops(sample["image"])
        grid_h, grid_w = (s // self.patch_size for s in global_crop.shape[-2:])
        return global_crop, local_crops, self.mask_generator(grid_h, grid_w), self.caption_policy.choose(sample)

    def __call__(self, samples: list[dict], seeds: list[int] | None = None) -> dict:
        """``seeds`` (one per sample) make each sample's crops, mask and caption choice a function of its
        seed alone, so the same sample is augmented identically whatever the batch split across ranks."""
        if not samples:
            raise ValueError("cannot build a batch from no samples")
        parts = []
        for index, sample in enumerate(samples):
            if seeds is None:
                parts.append(self._one(sample))
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seeds[index])
                    parts.append(self._one(sample))
        globals_ = [p[0] for p in parts]
        locals_ = [p[1] for p in parts]
        global_crops = torch.stack(globals_)
        masks = torch.stack([p[2] for p in parts])
        num_local = len(locals_[0])
        # Crop-major: all samples' local crop 0, then crop 1, ... (so chunk(M) gives one crop per chunk).
        local_crops = (torch.stack([locals_[b][m] for m in range(num_local) for b in range(len(samples))])
                       if num_local else None)
        web_ids, web_padding = self.tokenizer([s["web_caption"] for s in samples])
        synthetic_ids, synthetic_padding = self.tokenizer([p[3] for p in parts])
        return {
            "global_crops": global_crops,
            "local_crops": local_crops,
            "masks": masks,
            "web_ids": web_ids, "web_padding": web_padding,
            "synthetic_ids": synthetic_ids, "synthetic_padding": synthetic_padding,
            "keys": [s.get("__key__", "") for s in samples],
            # running skip totals per reader worker (shard streams), latest value wins
            "skip_counts": dict(s["__skip_counts__"] for s in samples if "__skip_counts__" in s),
        }
