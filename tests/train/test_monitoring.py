"""Collapse monitors, the collapse warning, and the teacher-side fixes (eval mode, one centre per CLS,
Sinkhorn-Knopp reachable, centre warm start)."""

import math

import pytest
import torch

from open_tips.losses.monitor import distribution_stats
from open_tips.models import create_model
from open_tips.train.config import load_config
from open_tips.train.loop import train
from open_tips.train.monitor import CollapseWatch
from open_tips.train.objective import build_objective
from tests.train.test_objective_variants import _batch

K = 16


def test_stats_tell_uniform_from_collapsed():
    uniform = distribution_stats(torch.full((8, K), 1.0 / K), torch.zeros(8, K), 0.1)
    assert uniform["teacher_entropy"].item() == pytest.approx(math.log(K), abs=1e-5)
    assert uniform["teacher_kl_uniform"].item() == pytest.approx(0.0, abs=1e-5)
    assert uniform["student_entropy"].item() == pytest.approx(math.log(K), abs=1e-5)
    one_prototype = torch.zeros(8, K)
    one_prototype[:, 3] = 1.0
    collapsed = distribution_stats(one_prototype, None, 0.1)
    assert collapsed["teacher_entropy"].item() == pytest.approx(0.0, abs=1e-5)
    assert collapsed["teacher_kl_uniform"].item() == pytest.approx(math.log(K), abs=1e-5)
    assert collapsed["prototypes_used"].item() == 1 and "student_entropy" not in collapsed
    diverse = torch.eye(K)[:8]  # eight rows on eight different prototypes: sharp and spread
    stats = distribution_stats(diverse, None, 0.1)
    assert stats["prototypes_used"].item() == 8
    assert stats["teacher_kl_uniform"].item() == pytest.approx(math.log(K) - math.log(8), abs=1e-5)


def test_watch_warns_once_after_patience_and_names_the_head():
    watch = CollapseWatch(K, patience=3)
    uniform = {"distill_teacher_entropy": math.log(K) * 0.99, "distill_teacher_kl_uniform": 0.0}
    healthy = {"mask_teacher_entropy": 1.0, "mask_teacher_kl_uniform": 0.5}
    assert watch.update(0, {**uniform, **healthy}) == [] and watch.update(1, uniform) == []
    messages = watch.update(2, uniform)
    assert len(messages) == 1 and "distill teacher has been uniform" in messages[0]
    assert watch.update(3, uniform) == []  # once
    collapsed = {"mask_teacher_entropy": 0.01, "mask_teacher_kl_uniform": math.log(K) * 0.9}
    for step in range(2):
        assert watch.update(10 + step, collapsed) == []
    assert "mask teacher has been collapsed" in watch.update(12, collapsed)[0]
    one_choice = {
        "distill_teacher_entropy": 3.9,
        "distill_teacher_kl_uniform": 2.9,
        "distill_prototypes_used": 1,
    }
    assert CollapseWatch(1024, patience=1).state(3.9, 2.9, 1) == "collapsed"
    assert CollapseWatch(1024, patience=1).state(2.0, 0.3, 6) is None
    assert "distill teacher has been collapsed" in CollapseWatch(1024, patience=1).update(0, one_choice)[0]


def test_a_streak_must_be_consecutive():
    watch = CollapseWatch(K, patience=2)
    uniform = {"distill_teacher_entropy": math.log(K), "distill_teacher_kl_uniform": 0.0}
    fine = {"distill_teacher_entropy": 1.0, "distill_teacher_kl_uniform": 1.0}
    for step, metrics in enumerate([uniform, fine, uniform, fine]):
        assert watch.update(step, metrics) == []


def _objective(overrides):
    cfg = load_config("tiny", overrides=overrides + ["data.batch_size=8"])
    torch.manual_seed(0)
    return cfg, build_objective(cfg, create_model("tiny"))


def test_teacher_stays_in_eval_mode_and_monitors_are_reported():
    cfg, objective = _objective(["model.drop_path_rate=0.1"])
    objective.train()
    assert objective.model.training and not objective.teacher.training
    assert not any(module.training for module in objective.teacher.modules())
    out = objective(_batch(cfg), teacher_temp=0.04)
    for head in ("distill", "mask"):
        for stat in ("teacher_entropy", "teacher_kl_uniform", "prototypes_used", "student_entropy"):
            assert 0 <= out[f"{head}_{stat}"].item() <= max(math.log(cfg.loss.head_out_dim), 1024)


def test_both_cls_tokens_have_their_own_centre():
    cfg, objective = _objective(["loss.distill_cls=both"])
    batch = _batch(cfg)
    objective(batch, teacher_temp=0.04)
    targets = objective.terms["distill"].targets
    web, synthetic = targets["cls_web"].loss.center, targets["cls_synthetic"].loss.center
    with torch.no_grad():
        teacher = objective.teacher.vision.encode(batch["global_crops"])
        expected_web = objective.teacher.dino_head(teacher.cls_web).mean(0, keepdim=True)
    torch.testing.assert_close(web, expected_web, atol=1e-5, rtol=1e-5)  # warm start: first batch's mean
    assert (web - synthetic).abs().max() > 1e-4


def test_centre_warm_start_versus_dino_zero_start():
    cfg, warm = _objective([])
    cfg_zero, zero = _objective(["loss.center_warm_start=false"])
    batch = _batch(cfg)
    warm(batch, teacher_temp=0.04)
    zero(batch, teacher_temp=0.04)
    warm_centre = warm.terms["distill"].targets["cls_web"].loss.center
    zero_centre = zero.terms["distill"].targets["cls_web"].loss.center
    torch.testing.assert_close(zero_centre, 0.1 * warm_centre, atol=1e-6, rtol=1e-5)  # (1 - 0.9) * mean


def test_sinkhorn_centering_is_reachable_and_balances_prototypes():
    cfg, objective = _objective(["loss.centering=sinkhorn", "loss.mim=false"])
    term = objective.terms["distill"]
    captured = {}
    original = term.targets["cls_web"].probs

    def probs(logits, temp):
        captured["probs"] = original(logits, temp)
        return captured["probs"]

    term.targets["cls_web"].probs = probs
    objective(_batch(cfg), teacher_temp=0.04)
    assert term.targets["cls_web"].loss.center.abs().max() == 0  # no EMA centre in Sinkhorn mode
    columns = captured["probs"].sum(0)
    torch.testing.assert_close(
        columns, torch.full_like(columns, 8 / cfg.loss.head_out_dim), rtol=0.05, atol=0
    )
    with pytest.raises(ValueError, match="loss.centering"):
        load_config("tiny", overrides=["loss.centering=median"])


def test_without_centring_the_collapse_warning_fires(tmp_path):
    # DINO's classic collapse: no centring and no batch norm in the head (batch norm alone holds it off
    # for these 30 steps, so the demonstration switches both off).
    cfg = load_config(
        "tiny",
        overrides=[
            "loss.centering=none",
            "loss.head_norm=none",
            "loss.mim=false",
            "data.num_samples=128",
            "data.batch_size=16",
            "train.steps=30",
            "train.log_every=2",
            "train.collapse_patience=3",
            "train.evaluate_at_end=false",
            "train.save_every=1000",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    summary = train(cfg)
    assert any("distill teacher has been collapsed" in m for m in summary["collapse_warnings"])
