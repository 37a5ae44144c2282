"""LoRA under torchrun with 2 CPU processes (gloo): DDP and FSDP2 give the losses and adapter weights of one
process with the same global batch, and the base weights of both towers stay exactly those of the init model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import open_tips
from open_tips.train.config import load_config
from open_tips.train.loop import train
from tests.train.test_distributed import _final_model, run_and_compare_losses

LORA = [
    "model.trainable.vision=lora",
    "model.trainable.text=lora",
    "model.lora.rank=4",
    "model.lora.alpha=8",
    "optim.lr=3e-3",  # the adapters must move within 3 steps for the comparison to mean something
    "train.steps=3",
    # Heads without batch norm, as in test_distributed.py: its exact-zero gradients turn float32 reduction
    # order into lr-sized AdamW steps.
    "loss.head_norm=none",
]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    """A 1-step run's ``final/`` export (tiny, HF layout): the model the LoRA runs start from."""
    run = tmp_path_factory.mktemp("lora_init") / "run"
    overrides = [
        "data.num_samples=64",
        "data.batch_size=8",
        "train.steps=1",
        "train.evaluate_at_end=false",
        "train.threads=1",
        "loss.head_out_dim=128",
        f"train.output_dir={run}",
    ]
    train(load_config("tiny", overrides=overrides))
    return run / "final"


def _is_adapter(key: str) -> bool:
    return key.endswith((".lora_A", ".lora_B"))


def _base_name(key: str) -> str:
    """``vision.blocks.0.attn.qkv.parametrizations.weight.original`` -> ``vision.blocks.0.attn.qkv.weight``."""
    prefix, _, rest = key.partition(".parametrizations.")
    return f"{prefix}.{rest.removesuffix('.original')}" if rest else key


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_lora_two_processes_match_one_and_keep_the_base(tmp_path, init_dir, strategy):
    steps = run_and_compare_losses(tmp_path, LORA + [f"model.init_from={init_dir}"], strategy)
    assert steps == [0, 1, 2]

    reference, other = _final_model(tmp_path / "single"), _final_model(tmp_path / strategy)
    assert reference.keys() == other.keys()
    adapters = [k for k in reference if _is_adapter(k)]
    assert len(adapters) == 32  # 2 towers x 2 blocks x 4 projections x (A, B)
    for key in adapters:
        assert torch.allclose(reference[key], other[key], rtol=1e-3, atol=2e-5), key
    moved = [k for k in adapters if k.endswith(".lora_B") and reference[k].abs().max() > 1e-4]
    assert len(moved) == 16, "every LoRA B left zero"

    # every tower weight that is not an adapter (the frozen originals included) is the init model's, bit for bit
    base = open_tips.load_pretrained(init_dir).state_dict()
    for state in (reference, other):
        tower_keys = [k for k in state if k.startswith(("vision.", "text.")) and not _is_adapter(k)]
        tower_keys = [k for k in tower_keys if not k.endswith(".scale")]
        assert {_base_name(k) for k in tower_keys} == {k for k in base if k.startswith(("vision.", "text."))}
        for key in tower_keys:
            assert torch.equal(state[key], base[_base_name(key)]), key
