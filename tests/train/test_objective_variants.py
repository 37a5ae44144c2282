"""Every switch of the objective runs, produces its loss terms, and keeps gradients where they belong."""

import math

import pytest
import torch

from open_tips.data.builtin import BuiltinShapes
from open_tips.models import create_model
from open_tips.train.config import load_config
from open_tips.train.data import _batch_builder
from open_tips.train.loop import train
from open_tips.train.objective import TIPSObjective, build_objective


class _Tok:
    vocab_size, max_len = 512, 16

    def __call__(self, texts):
        ids = torch.zeros(len(texts), 16, dtype=torch.long)
        for row, text in enumerate(texts):
            words = text.lower().split()[:16]
            ids[row, : len(words)] = torch.tensor([hash(w) % 500 + 1 for w in words])
        return ids, ids == 0


def _batch(cfg):
    torch.manual_seed(0)
    data = BuiltinShapes(8, 112, seed=1)
    return _batch_builder(cfg, _Tok())([data[i] for i in range(8)])


VARIANTS = {
    "tips": ([], {"loss_contrastive", "loss_web", "loss_synthetic", "loss_distill", "loss_mask"}),
    "tipsv2": (["teacher.kind=head_ema", "loss.ibot_all_tokens=true"], {"loss_distill", "loss_mask"}),
    "sigmoid": (["loss.contrastive=sigmoid"], {"loss_contrastive"}),
    "sparc+koleo": (["loss.sparc_weight=1.0", "loss.koleo_weight=0.1"], {"loss_sparc", "loss_koleo"}),
    "clip-web": (["loss.pairs=web", "loss.distill=false", "loss.mim=false"], {"loss_contrastive"}),
    "clip-synthetic": (
        ["loss.pairs=synthetic", "loss.distill=false", "loss.mim=false"],
        {"loss_contrastive"},
    ),
    "both-cls-masked-view-blocks": (
        ["loss.distill_cls=both", "loss.contrastive_view=masked", "data.mask_kind=block"],
        {"loss_distill", "loss_mask"},
    ),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_losses_and_gradients(name):
    overrides, expected = VARIANTS[name]
    cfg = load_config("tiny", overrides=overrides + ["data.batch_size=8"])
    torch.manual_seed(0)
    model = create_model("tiny")
    objective = build_objective(cfg, model)
    out = objective(_batch(cfg), teacher_temp=0.04)
    assert expected <= set(out)
    assert all(math.isfinite(float(v)) for v in out.values())
    if "loss_web" in out:
        assert out["loss_contrastive"].item() == pytest.approx(
            0.5 * (out["loss_web"] + out["loss_synthetic"]).item()
        )
    out["loss"].backward()
    assert model.vision.patch_embed.proj.weight.grad is not None
    assert model.log_temperature.grad is not None
    if objective.teacher is not None:
        assert all(p.grad is None for p in objective.teacher.parameters())
        assert (
            objective.teacher.vision is None
            if cfg.teacher.kind == "head_ema"
            else objective.teacher.vision is not None
        )
    if cfg.loss.distill:
        assert objective.dino_head.last_layer.parametrizations.weight.original1.grad is not None
    if name == "clip-web":  # CLS2 is not trained against text here, but still receives attention gradients
        assert out.keys() == {"loss_contrastive", "loss", "temperature"}


def test_head_only_ema_holds_no_second_backbone():
    def state_bytes(kind):
        cfg = load_config("tiny", overrides=[f"teacher.kind={kind}"])
        objective = build_objective(cfg, create_model("tiny"))
        return sum(t.numel() * t.element_size() for t in objective.state_dict().values())

    full, head = state_bytes("full_ema"), state_bytes("head_ema")
    vision_bytes = sum(p.numel() * 4 for p in create_model("tiny").vision.parameters())
    assert full - head == vision_bytes


def test_teacher_ema_update_math():
    cfg = load_config("tiny")
    objective = build_objective(cfg, create_model("tiny"))
    teacher_before = objective.teacher.dino_head.mlp[0].weight.clone()
    with torch.no_grad():
        objective.dino_head.mlp[0].weight.add_(1.0)
    objective.update_teacher(0.9)
    student = objective.dino_head.mlp[0].weight
    assert torch.allclose(
        objective.teacher.dino_head.mlp[0].weight, 0.9 * teacher_before + 0.1 * student, atol=1e-6
    )


def test_accumulation_bf16_and_checkpointing_run(tmp_path):
    cfg = load_config(
        "tiny",
        overrides=[
            "data.num_samples=64",
            "data.batch_size=8",
            "train.steps=3",
            "train.accum_steps=2",
            "train.precision=bf16",
            "model.grad_checkpointing=true",
            "train.evaluate_at_end=false",
            f"train.output_dir={tmp_path}",
            "train.log_every=1",
        ],
    )
    summary = train(cfg)
    assert summary["finished"] and math.isfinite(summary["last"]["loss"])


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    cfg = load_config(
        "tiny",
        overrides=[
            "data.num_samples=64",
            "data.batch_size=8",
            "train.steps=20",
            "train.evaluate_at_end=false",
            f"train.output_dir={tmp_path}",
            "train.max_nonfinite_steps=3",
            "train.save_every=2",
        ],
    )
    original = TIPSObjective.forward
    calls = {"n": 0}

    def flaky(self, batch, teacher_temp, weight_scales=None):
        out = original(self, batch, teacher_temp, weight_scales)
        calls["n"] += 1
        if calls["n"] == 2 or calls["n"] >= 5:  # one isolated bad step, then persistent failure
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(TIPSObjective, "forward", flaky)
    from open_tips.train.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="consecutive non-finite"):
        train(cfg)
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.pt"))
    assert checkpoints, "the last good checkpoint must be kept"
    payload = torch.load(checkpoints[-1], weights_only=True)
    assert payload["nonfinite_steps"] >= 1
    assert all(torch.isfinite(v).all() for v in payload["model"].values() if v.is_floating_point())
