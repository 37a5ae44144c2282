"""`open-tips merge-lora`: a LoRA run on the built-in data, merged through the command line, loads in
transformers' ``Tipsv2Model`` and reproduces the adapted (unmerged) model; user mistakes are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import open_tips
from open_tips.cli import main
from open_tips.models.tips import TIPSModel
from open_tips.train.config import load_config
from open_tips.train.loop import train
from open_tips.train.trainable import apply_trainable
from tests.cli.test_errors import _cli, _one_error_line

transformers = pytest.importorskip("transformers")

FAST = [
    "data.num_samples=64",
    "data.batch_size=8",
    "train.log_every=1",
    "train.evaluate_at_end=false",
    "train.threads=1",
    "optim.warmup_steps=0",
    "loss.head_out_dim=128",
    "train.save_every=1000",
]
LORA = [
    "model.trainable.vision=lora",
    "model.trainable.text=lora",
    "model.lora.rank=4",
    "model.lora.alpha=8",
    # a high lr so that a few steps move the adapters far enough for a wrong merge to show
    "optim.lr=1e-2",
    "loss.distill=false",
    "loss.mim=false",
    "train.steps=6",
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(LoRA run directory, the ``final/`` export it started from, its overrides). The init model is a 1-step
    run's export, so it carries the built-in data's tokenizer, as a released model carries its own."""
    root = tmp_path_factory.mktemp("merge_lora")
    train(load_config("tiny", overrides=FAST + ["train.steps=1", f"train.output_dir={root / 'init'}"]))
    init_dir = root / "init" / "final"
    overrides = FAST + LORA + [f"model.init_from={init_dir}", f"train.output_dir={root / 'lora'}"]
    assert train(load_config("tiny", overrides=overrides))["finished"]
    return root / "lora", init_dir, overrides


def _adapted(init_dir: Path, overrides: list[str], state: dict) -> TIPSModel:
    """The model as training left it: the init weights, LoRA parametrizations, the checkpoint's values."""
    model = open_tips.load_pretrained(init_dir)
    cfg = load_config("tiny", overrides=overrides)
    apply_trainable(model, cfg.model.trainable, cfg.model.lora)
    model.load_state_dict(state)
    return model.eval()


def _inputs(vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    pixels = torch.rand(3, 3, 56, 56, generator=gen)
    ids = torch.randint(1, vocab, (3, 12), generator=gen)
    ids[1, 6:] = 0
    ids[2, 3:] = 0
    return pixels, ids, ids == 0


def _ours(model: TIPSModel, pixels, ids, padding) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        image = model.encode_image(pixels)
        return {
            "cls_web": image.cls_web,
            "cls_synthetic": image.cls_synthetic,
            "patch_tokens": image.patch_tokens.flatten(1, 2),
            "text": model.encode_text(ids, padding),
        }


def _transformers(hf, pixels, ids, padding) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        tokens = hf.vision_model(pixel_values=pixels).last_hidden_state
        text = hf.text_model(input_ids=ids, attention_mask=(~padding).long()).pooler_output
    return {
        "cls_web": tokens[:, 0],
        "cls_synthetic": tokens[:, 1],
        "patch_tokens": tokens[:, 2:],
        "text": text,
    }


def test_merged_export_loads_in_transformers_and_equals_adapted_model(lora_run, tmp_path, capsys):
    run_dir, init_dir, overrides = lora_run
    out = tmp_path / "merged"
    assert main(["merge-lora", str(run_dir), "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    # tiny: 2 blocks x 4 projections (qkv, proj, fc1, fc2) in each of the two towers
    assert summary["merged_weights"] == 16 and summary["step"] == 6
    assert (out / "tokenizer.model").is_file() and (out / "config.json").is_file()

    checkpoint = sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(checkpoint, weights_only=True)["model"]
    adapted = _adapted(init_dir, overrides, state)
    base = open_tips.load_pretrained(init_dir).eval()
    hf = transformers.Tipsv2Model.from_pretrained(out).eval()
    inputs = _inputs(adapted.cfg.text.vocab_size)
    want = _ours(adapted, *inputs)
    before = _ours(base, *inputs)
    got = _transformers(hf, *inputs)
    for key, value in want.items():
        # the adapters moved the features, so a merge that dropped them (or doubled them) would fail below
        assert (value - before[key]).abs().max() > 1e-3, key
        assert (got[key] - value).abs().max() <= 1e-5, key
    # the same export read back by open_tips, and a checkpoint file given as RUN
    again = tmp_path / "from_file"
    assert main(["merge-lora", str(checkpoint), "--output", str(again)]) == 0
    for name, value in _ours(open_tips.load_pretrained(again), *inputs).items():
        assert (value - want[name]).abs().max() <= 1e-5, name


def test_no_checkpoint_is_one_line_naming_the_path(tmp_path):
    empty_run = tmp_path / "empty_run"
    (empty_run / "checkpoints").mkdir(parents=True)
    out = tmp_path / "out"
    line = _one_error_line(_cli("merge-lora", str(empty_run), "--output", str(out)), "merge-lora")
    assert f"{empty_run}: no complete checkpoint" in line
    missing = tmp_path / "no_such_run"
    line = _one_error_line(_cli("merge-lora", str(missing), "--output", str(out)), "merge-lora")
    assert f"{missing}: no such run directory" in line
    assert not out.exists()


def test_non_empty_output_needs_overwrite(lora_run, tmp_path, capsys):
    run_dir, _, _ = lora_run
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = _one_error_line(_cli("merge-lora", str(run_dir), "--output", str(out)), "merge-lora")
    assert f"--output {out}: directory is not empty (use --overwrite)" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["merge-lora", str(run_dir), "--output", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert (out / "model.safetensors").is_file()
