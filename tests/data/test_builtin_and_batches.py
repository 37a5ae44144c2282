import numpy as np
import pytest
import torch

from open_tips.data.builtin import SHAPE_CLASSES, BuiltinShapes
from open_tips.data.captions import CaptionPolicy, normalise_synthetic
from open_tips.data.collate import TIPSBatchBuilder
from open_tips.data.crops import MultiCropTransform
from open_tips.data.masking import MaskGenerator, block_mask, random_mask


def test_builtin_is_deterministic_and_seed_dependent():
    a, b, c = BuiltinShapes(8, 64, seed=1), BuiltinShapes(8, 64, seed=1), BuiltinShapes(8, 64, seed=2)
    for i in range(8):
        sa, sb = a[i], b[i]
        assert np.array_equal(np.asarray(sa["image"]), np.asarray(sb["image"]))
        assert sa["web_caption"] == sb["web_caption"] and sa["synthetic_captions"] == sb["synthetic_captions"]
    assert any(not np.array_equal(np.asarray(a[i]["image"]), np.asarray(c[i]["image"])) for i in range(8))
    with pytest.raises(IndexError):
        a[8]


def test_builtin_ground_truth_is_consistent():
    data = BuiltinShapes(40, 96, seed=3)
    for i in range(40):
        s = data[i]
        seg, depth = s["segmentation"], s["depth"]
        image = np.asarray(s["image"])
        assert seg.shape == depth.shape == image.shape[:2]
        present = sorted(set(np.unique(seg).tolist()) - {0})
        # every visible labelled class is in the mask; the mask has no class outside the labels
        assert present == s["labels"]
        assert s["main_label"] in s["labels"]
        assert depth[seg > 0].max() < depth[seg == 0].min()  # shapes are nearer than the background
        for obj in s["objects"]:
            assert obj["class"] in s["synthetic_captions"][0]["text"]
            assert obj["colour"] in s["synthetic_captions"][1]["text"]
        # occlusion: a later-drawn object is nearer
        depths = [o["depth"] for o in sorted(s["objects"], key=lambda o: o["order"])]
        assert depths == sorted(depths, reverse=True)
        assert {c["template"] for c in s["synthetic_captions"]} == {"short", "detailed"}
    assert len(SHAPE_CLASSES) == 8


def test_masks_exact_ratio_and_blocks():
    torch.manual_seed(0)
    for ratio in (0.0, 0.3, 0.75):
        assert int(random_mask(8, 8, ratio).sum()) == round(ratio * 64)
        assert int(block_mask(8, 8, ratio).sum()) == round(ratio * 64)
    # block masks are spatially clustered: more masked neighbours than random masks on average
    def neighbours(mask):
        grid = mask.reshape(16, 16).float()
        return float((grid[:, 1:] * grid[:, :-1]).sum() + (grid[1:] * grid[:-1]).sum())
    assert np.mean([neighbours(block_mask(16, 16, 0.4)) for _ in range(20)]) > \
        np.mean([neighbours(random_mask(16, 16, 0.4)) for _ in range(20)])
    gen = MaskGenerator("random", 0.5, probability=0.5)
    masked_images = sum(bool(gen(4, 4).any()) for _ in range(200))
    assert 60 < masked_images < 140
    with pytest.raises(ValueError):
        MaskGenerator("spiral")


def test_crops_shapes_and_range():
    image = BuiltinShapes(1, 112)[0]["image"]
    global_crop, local_crops = MultiCropTransform(56, 28, 3)(image)
    assert global_crop.shape == (3, 56, 56) and global_crop.dtype == torch.float32
    assert len(local_crops) == 3 and all(c.shape == (3, 28, 28) for c in local_crops)
    assert 0.0 <= float(global_crop.min()) and float(global_crop.max()) <= 1.0
    assert MultiCropTransform(56, 28, 0)(image)[1] == []


def test_caption_policy_probabilities_and_fallback():
    sample = {"web_caption": "web", "synthetic_captions": [
        {"text": "short one", "template": "short"}, {"text": "long one", "template": "detailed"}, "plain"]}
    policy = CaptionPolicy({"short": 0.8, "detailed": 0.2})
    gen = torch.Generator().manual_seed(0)
    picks = [policy.choose(sample, gen) for _ in range(2000)]
    assert abs(picks.count("short one") / 2000 - 0.8) < 0.04
    assert "plain" not in picks  # template "default" has weight 0 here
    uniform = [CaptionPolicy().choose(sample, gen) for _ in range(3000)]
    assert all(abs(uniform.count(t) / 3000 - 1 / 3) < 0.04 for t in ("short one", "long one", "plain"))
    assert policy.choose({"web_caption": "only web", "synthetic_captions": []}) == "only web"
    assert policy.fallbacks["no_synthetic_caption"] == 1
    assert normalise_synthetic(["a", {"text": ""}, {"nope": 1}, {"text": "b", "template": "t"}]) == [
        {"text": "a", "template": "default", "model": "unknown"}, {"text": "b", "template": "t", "model": "unknown"}]


def _toy_tokenizer(texts):
    ids = torch.zeros(len(texts), 12, dtype=torch.long)
    for row, text in enumerate(texts):
        words = text.split()[:12]
        ids[row, : len(words)] = torch.tensor([hash(w) % 100 + 1 for w in words])
    return ids, ids == 0


def test_batch_builder_layout():
    data = BuiltinShapes(4, 112)
    builder = TIPSBatchBuilder(_toy_tokenizer, MultiCropTransform(56, 28, 2), MaskGenerator("random", 0.75))
    batch = builder([data[i] for i in range(4)])
    assert batch["global_crops"].shape == (4, 3, 56, 56)
    assert batch["local_crops"].shape == (8, 3, 28, 28)
    assert batch["masks"].shape == (4, 16) and batch["masks"].dtype == torch.bool
    assert (batch["masks"].sum(1) == 12).all()
    assert batch["web_ids"].shape == batch["synthetic_ids"].shape == (4, 12)
    assert not torch.equal(batch["web_ids"], batch["synthetic_ids"])
    assert batch["keys"] == [data[i]["__key__"] for i in range(4)]
