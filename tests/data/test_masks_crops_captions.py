"""Patch masks, multi-crop augmentation and the caption policy."""

import numpy as np
import pytest
import torch

from open_tips.data.builtin import BuiltinShapes
from open_tips.data.captions import CaptionPolicy, normalise_synthetic
from open_tips.data.crops import MultiCropTransform
from open_tips.data.masking import MaskGenerator, block_mask, random_mask


def test_masks_have_the_exact_ratio():
    gen = torch.Generator().manual_seed(0)
    for grid in ((8, 8), (16, 16), (7, 12)):
        total = grid[0] * grid[1]
        for ratio in (0.0, 0.1, 0.3, 0.5, 0.75, 0.9):
            for make in (random_mask, block_mask):
                mask = make(grid, ratio, gen)
                assert mask.dtype == torch.bool and mask.shape == (total,)
                assert int(mask.sum()) == round(ratio * total)
    assert random_mask(4, 0.5).shape == (16,)  # an int is a square grid
    with pytest.raises(ValueError):
        random_mask((4, 4), 1.5)


def _blockiness(mask: torch.Tensor, side: int) -> float:
    """Fraction of masked patches whose right or lower neighbour is masked too."""
    grid = mask.reshape(side, side).float()
    pairs = float((grid[:, 1:] * grid[:, :-1]).sum() + (grid[1:] * grid[:-1]).sum())
    return pairs / max(float(grid.sum()), 1.0)


def test_block_masks_are_rectangles_not_salt_and_pepper():
    gen = torch.Generator().manual_seed(1)
    blocks = [block_mask((16, 16), 0.4, gen) for _ in range(30)]
    randoms = [random_mask((16, 16), 0.4, gen) for _ in range(30)]
    assert np.mean([_blockiness(m, 16) for m in blocks]) > 1.5 * np.mean(
        [_blockiness(m, 16) for m in randoms]
    )
    # a single small block: min_block_patches 4 and a target of 6 patches -> mostly one compact region
    mask = block_mask((14, 14), 6 / 196, torch.Generator().manual_seed(2))
    rows, cols = mask.reshape(14, 14).nonzero().T
    assert int(mask.sum()) == 6 and (rows.max() - rows.min()) * (cols.max() - cols.min()) <= 36
    # reproducible from the generator
    assert torch.equal(
        block_mask((16, 16), 0.5, torch.Generator().manual_seed(3)),
        block_mask((16, 16), 0.5, torch.Generator().manual_seed(3)),
    )


def test_mask_generator_policies():
    gen = torch.Generator().manual_seed(0)
    tips = MaskGenerator()  # TIPS default: every image, exactly 0.75
    assert all(int(tips((16, 16), gen).sum()) == 192 for _ in range(20))
    ibot = MaskGenerator("block", ratio=(0.1, 0.5), probability=0.5)
    counts = [int(ibot((16, 16), gen).sum()) for _ in range(400)]
    masked = [c for c in counts if c > 0]
    assert 160 < len(masked) < 240  # about half the images are masked
    assert min(masked) >= round(0.1 * 256) and max(masked) <= round(0.5 * 256)
    assert np.std(masked) > 15  # the ratio varies per image
    for bad in (dict(kind="spiral"), dict(ratio=1.0), dict(ratio=(0.6, 0.2)), dict(probability=2.0)):
        with pytest.raises(ValueError):
            MaskGenerator(**bad)


def test_crops_shapes_and_range():
    image = BuiltinShapes(1, 112)[0]["image"]
    torch.manual_seed(0)
    global_crop, local_crops = MultiCropTransform(56, 28, 3)(image)
    assert global_crop.shape == (3, 56, 56) and global_crop.dtype == torch.float32
    assert len(local_crops) == 3 and all(
        c.shape == (3, 28, 28) and c.dtype == torch.float32 for c in local_crops
    )
    for crop in [global_crop, *local_crops]:
        assert 0.0 <= float(crop.min()) and float(crop.max()) <= 1.0
    assert float(global_crop.max()) > 0.5  # values in [0, 1], not normalised by mean/std
    assert MultiCropTransform(56, 28, 0)(image)[1] == []
    assert MultiCropTransform(28, 14, 1)(image.convert("L"))[0].shape == (3, 28, 28)
    # the whole image at scale 1: a flip at most, no colour change
    full, _ = MultiCropTransform(112, 28, 0, global_scale=(1.0, 1.0))(image)
    reference = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.allclose(full, reference, atol=0.02) or torch.allclose(full, reference.flip(-1), atol=0.02)
    with pytest.raises(ValueError):
        MultiCropTransform(56, 28, 2, local_scale=(0.5, 0.1))


SAMPLE = {
    "web_caption": "web",
    "synthetic_captions": [
        {"text": "short one", "template": "short", "model": "m"},
        {"text": "long one", "template": "detailed"},
        "plain",
    ],
}


def test_caption_policy_probabilities():
    gen = torch.Generator().manual_seed(0)
    policy = CaptionPolicy({"short": 0.8, "detailed": 0.2})
    picks = [policy.choose(SAMPLE, gen) for _ in range(4000)]
    assert abs(picks.count("short one") / 4000 - 0.8) < 0.03
    assert "plain" not in picks  # template "default" is not weighted here
    # weights renormalised over the templates a sample has
    only_long = {
        "web_caption": "w",
        "synthetic_captions": [{"text": "long", "template": "detailed"}, "plain"],
    }
    assert {policy.choose(only_long, gen) for _ in range(50)} == {"long"}
    # none of the weighted templates present: uniform among what is there
    others = {"web_caption": "w", "synthetic_captions": ["a", "b"]}
    picks = [policy.choose(others, gen) for _ in range(2000)]
    assert abs(picks.count("a") / 2000 - 0.5) < 0.04
    uniform = [CaptionPolicy().choose(SAMPLE, gen) for _ in range(3000)]
    assert all(abs(uniform.count(t) / 3000 - 1 / 3) < 0.04 for t in ("short one", "long one", "plain"))
    for bad in ({"short": -1.0}, {"short": float("nan")}, {"short": 0.0}):
        with pytest.raises(ValueError):
            CaptionPolicy(bad)


def test_caption_policy_fallback_and_normalisation():
    policy = CaptionPolicy({"short": 1.0})
    assert policy.choose_with_template({"web_caption": "only web", "synthetic_captions": []}) == (
        "only web",
        CaptionPolicy.FALLBACK,
    )
    assert policy.choose({"web_caption": "no field"}) == "no field"
    assert policy.fallbacks["no_synthetic_caption"] == 2
    assert policy.choose_with_template(SAMPLE, torch.Generator().manual_seed(0)) == ("short one", "short")
    assert normalise_synthetic(
        ["a ", {"text": ""}, {"nope": 1}, {"text": "b", "template": "t"}, 7, "  "]
    ) == [
        {"text": "a", "template": "default", "model": "unknown"},
        {"text": "b", "template": "t", "model": "unknown"},
    ]
    assert normalise_synthetic("single") == [{"text": "single", "template": "default", "model": "unknown"}]
    assert normalise_synthetic(None) == [] and normalise_synthetic(42) == []
