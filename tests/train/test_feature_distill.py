"""Feature distillation from a frozen teacher (distill.*): the term's wiring, what it saves, exact resume,
and (slow) a distilled tiny student against the same student trained from scratch."""

from __future__ import annotations

import math

import pytest
import torch

from open_tips.models.configs import get_config
from open_tips.models.tips import TIPSModel
from open_tips.train.config import load_config
from open_tips.train.loop import train
from open_tips.train.metrics import read_metrics
from open_tips.train.objective import build_objective
from open_tips.train.optim import build_optimizer
from open_tips.train.terms_distill import FeatureDistillTerm, feature_loss

FAST = [
    "data.num_samples=128",
    "data.batch_size=16",
    "train.log_every=1",
    "train.evaluate_at_end=false",
    "train.threads=1",
    "optim.warmup_steps=5",
    # contrastive-only runs: the SSL terms are not what these tests are about, and they cost time
    "loss.distill=false",
    "loss.mim=false",
]


def _teacher_dir(tmp_path, width: int, seed: int = 0):
    """A random-weight tiny-shaped model of ``width`` written as an HF directory (what save_pretrained
    writes, and what load_pretrained reads)."""
    cfg = get_config("tiny")
    cfg.vision.width = cfg.text.width = width
    cfg.name = f"tiny-w{width}"
    torch.manual_seed(seed)
    path = tmp_path / f"teacher_w{width}"
    TIPSModel(cfg).save_pretrained(path)
    return path


def _cfg(tmp_path, name: str, *extra: str):
    return load_config("tiny", overrides=[*FAST, f"train.output_dir={tmp_path / name}", *extra])


def test_projection_only_when_widths_differ_and_teacher_is_frozen(tmp_path):
    from open_tips.data.tokenizer import Tokenizer
    from open_tips.train.loop import build_model

    tokenizer = Tokenizer.train(
        ["a red circle", "two blue squares", "a green triangle"] * 20, tmp_path / "tok", 60
    )
    wide = _teacher_dir(tmp_path, 96)
    cfg = _cfg(tmp_path, "wide", f"distill.teacher={wide}", "distill.combine_with_tips=false")
    model = build_model(cfg, tokenizer)
    objective = build_objective(cfg, model)
    state = objective.state_dict()
    assert state["terms.feature_distill.proj_cls.weight"].shape == (96, 64)
    assert state["terms.feature_distill.proj_patch.weight"].shape == (96, 64)
    assert not any("teacher_model" in k for k in state)  # the frozen teacher is not checkpointed
    assert set(objective.terms) == {"contrastive", "feature_distill"}  # combine_with_tips=false
    term = objective.terms["feature_distill"]
    teacher_params = {id(p) for p in term.teacher_model.parameters()}
    optimizer = build_optimizer(objective, cfg.optim)
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not teacher_params & optimised
    assert {id(p) for p in term.proj_cls.parameters()} <= optimised

    before = {k: v.clone() for k, v in term.teacher_model.state_dict().items()}
    objective.train()
    assert not term.teacher_model.training
    batch = {
        "global_crops": torch.rand(4, 3, 56, 56),
        "masks": torch.zeros(4, 16, dtype=torch.bool),
        "local_crops": None,
        **{f"{k}_ids": torch.randint(1, 50, (4, 8)) for k in ("web", "synthetic")},
        **{f"{k}_padding": torch.zeros(4, 8, dtype=torch.bool) for k in ("web", "synthetic")},
    }
    out = objective(batch, teacher_temp=0.04)
    out["loss"].backward()
    optimizer.step()
    assert all(p.grad is None for p in term.teacher_model.parameters())
    for key, value in term.teacher_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert {"fdistill_cls", "fdistill_patch", "loss_feature_distill"} <= set(out)

    same = _teacher_dir(tmp_path, 64)
    cfg = _cfg(tmp_path, "same", f"distill.teacher={same}")
    objective = build_objective(cfg, build_model(cfg, tokenizer))
    assert not any(".proj_" in k for k in objective.state_dict())
    assert (
        {"contrastive", "distill", "mask", "feature_distill"}
        >= set(objective.terms)
        >= {
            "contrastive",
            "feature_distill",
        }
    )


def test_feature_losses():
    x = torch.randn(3, 5, 8)
    assert feature_loss(x, 2.5 * x, "cosine") == pytest.approx(0.0, abs=1e-6)  # directions only
    assert feature_loss(x, -x, "cosine") == pytest.approx(2.0, abs=1e-6)
    assert feature_loss(x, x, "smooth_l1") == 0.0
    assert feature_loss(x, x + 10.0, "smooth_l1") == pytest.approx(9.5)
    with pytest.raises(ValueError, match="distill.loss"):
        feature_loss(x, x, "l2")


def test_teacher_patch_grid_resized_to_students(tmp_path):
    cfg = get_config("tiny")
    cfg.vision.patch_size = 8
    teacher = TIPSModel(cfg)
    term = FeatureDistillTerm(teacher, 64)
    out = term.teacher_features(torch.rand(2, 3, 56, 56), (4, 4))  # 56 px: 7x7 teacher grid -> 4x4
    assert out.patch_tokens.shape == (2, 4, 4, 64)
    assert out.cls_web.shape == (2, 64)


def test_distillation_fits_the_teacher_and_resumes_exactly(tmp_path):
    teacher = _teacher_dir(tmp_path, 96)
    extra = [
        f"distill.teacher={teacher}",
        "distill.combine_with_tips=false",
        "distill.contrastive=false",
        "train.steps=30",
        "train.save_every=10",
        "optim.lr=3e-3",
    ]
    summary = train(_cfg(tmp_path, "full", *extra))
    assert summary["finished"]
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert "loss_contrastive" not in records[0]
    for key in ("fdistill_cls", "fdistill_patch"):
        first = sum(r[key] for r in records[:3]) / 3
        last = sum(r[key] for r in records[-3:]) / 3
        assert math.isfinite(first) and last < 0.7 * first, (key, first, last)

    # interrupted at step 10, resumed: the same losses and the same projection weights
    cfg = _cfg(tmp_path, "resumed", *extra)
    train(cfg, max_steps_this_run=10)
    train(cfg, resume=True)
    resumed = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in records]
    for got, want in zip(resumed, records):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), got["step"]

    def projection(run: str) -> torch.Tensor:
        ckpt = sorted((tmp_path / run / "checkpoints").glob("*.pt"))[-1]
        return torch.load(ckpt, weights_only=True)["objective"]["terms.feature_distill.proj_cls.weight"]

    assert torch.equal(projection("full"), projection("resumed"))


def test_bad_teacher_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="distill.teacher="):
        train(_cfg(tmp_path, "bad", f"distill.teacher={tmp_path / 'missing'}", "train.steps=2"))
    with pytest.raises(ValueError, match="distill.loss"):
        _cfg(tmp_path, "bad", "distill.loss=l2")


def _retrieval_sum(run_dir) -> float:
    """R@1 + R@5 + R@10, both directions, CLS1-web and CLS2-synthetic, on the built-in held-out split (200
    images): less noisy than R@1 alone on a model this small."""
    import open_tips
    from open_tips.eval.suite import evaluate_builtin

    model = open_tips.load_pretrained(run_dir / "final")
    results = evaluate_builtin(model, tasks=["retrieval"], image_size=56, progress=False, pictures=False)
    return sum(
        value
        for key in ("retrieval_web", "retrieval_synthetic")
        for name, value in results["tasks"][key].items()
        if "R@" in name
    )


@pytest.mark.slow
def test_distilled_student_approaches_teacher_and_beats_scratch(tmp_path):
    """Teacher: 400 contrastive steps. Students: 100 steps, distilled (CLS + patches + text, with the
    contrastive term) or from scratch (contrastive only). Measured (docs/training.md): teacher 2.60,
    distilled 1.49 (image only 1.24), scratch 0.88; chance 0.16. About 6 minutes on 2 CPU cores."""
    base = [
        "data.num_samples=256",
        "data.batch_size=16",
        "train.log_every=10",
        "train.threads=1",
        "optim.warmup_steps=10",
        "train.evaluate_at_end=false",
        "loss.distill=false",
        "loss.mim=false",
    ]

    def run(name: str, steps: int, *extra: str):
        overrides = [*base, f"train.output_dir={tmp_path / name}", f"train.steps={steps}"]
        train(load_config("tiny", overrides=[*overrides, f"train.save_every={steps}", *extra]))
        return tmp_path / name

    teacher = run("teacher", 400)
    distilled = run(
        "distilled",
        100,
        f"distill.teacher={teacher / 'final'}",  # the HF directory the teacher's run exported
        "distill.combine_with_tips=false",
        "distill.text_weight=1.0",
    )
    scratch = run("scratch", 100)
    r_teacher, r_distilled, r_scratch = map(_retrieval_sum, (teacher, distilled, scratch))
    assert r_teacher > 3 * 0.16  # the teacher learned something to pass on
    assert r_distilled >= 0.45 * r_teacher, (r_teacher, r_distilled, r_scratch)
    assert r_distilled > 1.25 * r_scratch, (r_teacher, r_distilled, r_scratch)
