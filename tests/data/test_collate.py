"""The batch builder: the batch layout of docs/architecture.md."""

import pytest
import torch
from PIL import Image

from open_tips.data.builtin import BuiltinShapes
from open_tips.data.captions import CaptionPolicy
from open_tips.data.collate import TIPSBatchBuilder
from open_tips.data.crops import MultiCropTransform
from open_tips.data.masking import MaskGenerator
from tests.data._toy import toy_tokenizer


def _builder(num_local=2, **kw):
    return TIPSBatchBuilder(
        toy_tokenizer,
        MultiCropTransform(56, 28, num_local),
        MaskGenerator("random", 0.75),
        CaptionPolicy(kw.pop("weights", None)),
        **kw,
    )


def test_batch_layout_and_dtypes():
    data = BuiltinShapes(4, 112)
    samples = [data[i] for i in range(4)]
    batch = _builder()(samples)
    assert batch["global_crops"].shape == (4, 3, 56, 56) and batch["global_crops"].dtype == torch.float32
    assert batch["local_crops"].shape == (8, 3, 28, 28) and batch["local_crops"].dtype == torch.float32
    assert 0 <= float(batch["global_crops"].min()) and float(batch["global_crops"].max()) <= 1
    assert batch["masks"].shape == (4, 16) and batch["masks"].dtype == torch.bool
    assert (batch["masks"].sum(1) == 12).all()
    for kind in ("web", "synthetic"):
        assert batch[f"{kind}_ids"].shape == (4, 12) and batch[f"{kind}_ids"].dtype == torch.long
        assert batch[f"{kind}_padding"].dtype == torch.bool
        assert torch.equal(batch[f"{kind}_padding"], batch[f"{kind}_ids"] == 0)
    assert torch.equal(batch["web_ids"], toy_tokenizer([s["web_caption"] for s in samples])[0])
    assert not torch.equal(batch["web_ids"], batch["synthetic_ids"])
    assert batch["keys"] == [s["__key__"] for s in samples]
    assert set(batch["synthetic_templates"]) <= {"short", "detailed"} and batch["caption_fallbacks"] == 0
    assert batch["skip_counts"] == {}
    assert _builder(num_local=0)(samples)["local_crops"] is None


def test_local_crops_are_crop_major():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    samples = [
        {"__key__": str(i), "image": Image.new("RGB", (60, 60), c), "web_caption": "plain colour"}
        for i, c in enumerate(colours)
    ]
    batch = _builder(num_local=2)(samples)
    assert batch["local_crops"].shape == (6, 3, 28, 28)
    for crop in range(2):
        for b in range(3):
            channel = int(batch["local_crops"][crop * 3 + b].mean((1, 2)).argmax())
            assert channel == b  # crop c of sample b sits at c * B + b
    # no synthetic captions: the web caption stands in, and is counted
    assert batch["caption_fallbacks"] == 3 and torch.equal(batch["synthetic_ids"], batch["web_ids"])


def test_seeds_make_samples_independent_of_the_batch():
    data = BuiltinShapes(4, 112)
    samples = [data[i] for i in range(4)]
    builder = _builder(weights={"short": 0.5, "detailed": 0.5})
    whole = builder(samples, seeds=[10, 11, 12, 13])
    halves = [builder(samples[:2], seeds=[10, 11]), builder(samples[2:], seeds=[12, 13])]
    for key in ("global_crops", "local_crops", "masks", "synthetic_ids"):
        if key == "local_crops":  # crop-major: compare per crop index
            parts = [torch.cat([h[key][m * 2 : (m + 1) * 2] for h in halves]) for m in range(2)]
            assert torch.equal(whole[key], torch.cat(parts))
        else:
            assert torch.equal(whole[key], torch.cat([h[key] for h in halves]))
    with pytest.raises(ValueError):
        builder(samples, seeds=[1])
    with pytest.raises(ValueError):
        builder([])
    with pytest.raises(ValueError, match="patch size"):
        TIPSBatchBuilder(toy_tokenizer, MultiCropTransform(50, 28, 0), MaskGenerator())(samples)


def test_skip_counts_merge_latest_per_reader():
    image = Image.new("RGB", (40, 40))
    samples = [
        {"image": image, "web_caption": "a", "__skip_counts__": {"shards:0:0": {"corrupt_image": 1}}},
        {"image": image, "web_caption": "b", "__skip_counts__": {"shards:0:1": {"missing_caption": 2}}},
        {"image": image, "web_caption": "c", "__skip_counts__": {"shards:0:0": {"corrupt_image": 3}}},
    ]
    batch = TIPSBatchBuilder(toy_tokenizer, MultiCropTransform(28, 14, 0), MaskGenerator())(samples)
    assert batch["skip_counts"] == {"shards:0:0": {"corrupt_image": 3}, "shards:0:1": {"missing_caption": 2}}
