"""The architectural FLOP count of a training step agrees with torch's FlopCounterMode on tiny models."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from open_tips.data.builtin import BuiltinShapes
from open_tips.models import create_model
from open_tips.models.configs import get_config
from open_tips.train.config import load_config
from open_tips.train.data import _batch_builder
from open_tips.train.flops import FlopsMeter, peak_tflops, training_step_flops, vision_forward_flops
from open_tips.train.objective import build_objective


class _Tok:
    vocab_size, max_len = 512, 16

    def __call__(self, texts):
        ids = torch.zeros(len(texts), 16, dtype=torch.long)
        for row, text in enumerate(texts):
            words = text.lower().split()[:16]
            ids[row, : len(words)] = torch.tensor([hash(w) % 500 + 1 for w in words])
        return ids, ids == 0


def _batch(cfg, n=4):
    torch.manual_seed(0)
    data = BuiltinShapes(n, 112, seed=1)
    return _batch_builder(cfg, _Tok())([data[i] for i in range(n)])


def _measured(objective, batch) -> int:
    # The math backend runs attention as batched matmuls, which FlopCounterMode counts on CPU too.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = objective(batch, teacher_temp=0.04)
        out["loss"].backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # TIPS v1: full EMA teacher, distill + MIM
        ["teacher.kind=head_ema", "loss.ibot_all_tokens=true"],  # TIPSv2: no teacher backbone pass
        ["loss.distill=false", "loss.mim=false", "loss.pairs=web"],  # CLIP only
        ["loss.sparc_weight=1.0", "loss.distill_cls=both", "model.name=tiny-swiglu"],
        ["loss.contrastive_view=masked", "teacher.kind=head_ema"],  # clean pass forward only
    ],
)
def test_counted_step_flops_match_flop_counter(overrides):
    cfg = load_config("tiny", overrides=["loss.head_out_dim=256", *overrides])
    torch.manual_seed(0)
    model = create_model(cfg.model.name)
    objective = build_objective(cfg, model)
    batch = _batch(cfg)
    counted = training_step_flops(objective, batch)
    measured = _measured(objective, batch)
    assert counted["total"] == pytest.approx(measured, rel=0.03), (counted, measured)
    assert ("teacher_vision" in counted) == (cfg.teacher.kind == "full_ema" and cfg.loss.distill)


def test_vision_forward_matches_b14_yardstick_and_counter():
    # design.md: B/14 is about 23 G MACs per image at 224 px and 107 G at 448 px
    cfg = get_config("tipsv2-b14").vision
    assert vision_forward_flops(cfg, 1, 224, 224) / 2 == pytest.approx(23e9, rel=0.05)
    assert vision_forward_flops(cfg, 1, 448, 448) / 2 == pytest.approx(107e9, rel=0.05)
    model = create_model("tiny").vision.eval()
    pixels = torch.rand(2, 3, 42, 70)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode(pixels)
    assert vision_forward_flops(model.cfg, 2, 42, 70) == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_meter_and_peak():
    cfg = load_config("tiny", overrides=["loss.head_out_dim=256"])
    objective = build_objective(cfg, create_model("tiny"))
    batch = _batch(cfg)
    meter = FlopsMeter(objective)
    meter.add(batch)
    meter.add(batch)
    per_step = training_step_flops(objective, batch)["total"]
    out = meter.read(2.0, peak=None)
    assert out == {"tflops": pytest.approx(per_step / 1e12)}  # 2 steps in 2 s, no mfu without a peak
    meter.add(batch)
    assert meter.read(1.0, peak=per_step / 1e12 * 2)["mfu"] == pytest.approx(0.5)
    assert peak_tflops("cpu", "bf16") is None
    assert peak_tflops("cpu", "bf16", override=123.0) == 123.0


@pytest.mark.parametrize("peak", [0.0, 1e-3])
def test_training_logs_tflops_and_mfu_with_a_peak(tmp_path, peak):
    from open_tips.train.loop import train
    from open_tips.train.metrics import read_metrics

    cfg = load_config(
        "tiny",
        overrides=[
            "data.num_samples=32",
            "data.batch_size=8",
            "loss.head_out_dim=128",
            "train.steps=3",
            "train.log_every=1",
            "train.evaluate_at_end=false",
            "train.threads=1",
            f"train.peak_tflops={peak}",
            f"train.output_dir={tmp_path}",
        ],
    )
    train(cfg)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 3
    for record in records:
        # achieved = counted FLOPs / wall time: positive, and far below any CPU's peak
        assert 0 < record["tflops"] < 5
        if peak:
            assert record["mfu"] == pytest.approx(record["tflops"] / peak)
        else:
            assert "mfu" not in record
