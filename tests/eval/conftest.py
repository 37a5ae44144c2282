"""Fixtures for the evaluation tests: a random ``tiny`` checkpoint with a tokenizer beside it, the loaded
model, toy features whose answers are known, and a stand-in text model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import open_tips
from open_tips.eval.features import FeatureSet
from tests import COCO_MINI
from tests.helpers import make_tiny_checkpoint

COCO = COCO_MINI


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """``tips_test_vision.npz`` + ``_text.npz`` + ``tokenizer.model`` in one folder (load with config tiny)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("eval_ckpt"))


@pytest.fixture(scope="session")
def model(checkpoint):
    return open_tips.load_pretrained(checkpoint, config="tiny", device="cpu")


def block_masks(n: int, grid: int, scale: int, classes: int, seed: int = 0) -> torch.Tensor:
    """[n, grid*scale, grid*scale] label maps constant over each patch (scale x scale pixels)."""
    blocks = torch.randint(0, classes, (n, grid, grid), generator=torch.Generator().manual_seed(seed))
    return blocks.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def oracle_features(
    masks: torch.Tensor, grid: int, dim: int = 8, noise: float = 0.0, seed: int = 0
) -> FeatureSet:
    """Patch features = one-hot of each patch's class (+ noise): perfect features for a linear probe."""
    scale = masks.shape[1] // grid
    patch_labels = masks[:, scale // 2 :: scale, scale // 2 :: scale][:, :grid, :grid]
    gen = torch.Generator().manual_seed(seed)
    patches = F.one_hot(patch_labels.clamp(max=dim - 1), dim).float()
    patches = patches + noise * torch.randn(patches.shape, generator=gen)
    cls = patches.mean(dim=(1, 2))
    return FeatureSet(cls, cls.clone(), patches, patches.clone())


class OneHotTextModel:
    """encode_text(prompts) -> the one-hot vector of the class name the prompt mentions (exactly one of
    ``names`` as a whole word), so that zero-shot heads built on it are perfect on one-hot image features."""

    def __init__(self, names: list[str], dim: int) -> None:
        self.names, self.dim = names, dim

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.dim)
        for i, prompt in enumerate(prompts):
            words = prompt.replace(".", " ").split()
            hits = [j for j, name in enumerate(self.names) if name in words or f"{name}s" in words]
            assert len(hits) == 1, prompt
            out[i, hits[0]] = 1.0
        return out
