"""Non-finite steps are skipped on the device (fused AdamW's found_inf, teacher momentum 1): parameters,
optimiser moments and the EMA teacher stay bit-identical, and the host only learns of it on check steps."""

import pytest
import torch

from open_tips.train.config import load_config
from open_tips.train.loop import NonFiniteLossError, train
from open_tips.train.metrics import read_metrics
from open_tips.train.objective import TIPSObjective


def _patch_nan_from(monkeypatch, first_bad_call: int) -> None:
    original = TIPSObjective.forward
    calls = {"n": 0}

    def flaky(self, batch, teacher_temp, weight_scales=None):
        out = original(self, batch, teacher_temp, weight_scales)
        calls["n"] += 1
        if calls["n"] >= first_bad_call:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(TIPSObjective, "forward", flaky)


def _cfg(tmp_path, *extra):
    return load_config(
        "tiny",
        overrides=[
            "data.num_samples=32",
            "data.batch_size=8",
            "loss.head_out_dim=128",
            "train.evaluate_at_end=false",
            "train.threads=1",
            f"train.output_dir={tmp_path}",
            *extra,
        ],
    )


def test_skipped_steps_leave_the_whole_state_unchanged(tmp_path, monkeypatch):
    _patch_nan_from(monkeypatch, 4)  # steps 0-2 train, steps 3-5 are non-finite
    cfg = _cfg(
        tmp_path, "train.steps=6", "train.save_every=3", "train.log_every=100", "train.max_nonfinite_steps=50"
    )
    summary = train(cfg)
    assert summary["nonfinite_steps"] == 3
    good = torch.load(tmp_path / "checkpoints" / "step_00000003.pt", weights_only=True)
    after = torch.load(tmp_path / "checkpoints" / "step_00000006.pt", weights_only=True)
    for key, value in good["objective"].items():
        if key.startswith(("model.", "teacher.")) or "head" in key:
            assert torch.equal(value, after["objective"][key]), key
    moments = good["optimizer"]["state"]
    assert moments, "the optimiser has state to compare"
    for name, state in moments.items():
        for field, value in state.items():
            assert torch.equal(value, after["optimizer"]["state"][name][field]), (name, field)
    # the first-step log is the only one (log_every=100 on a 6-step run logs steps 0 and 5; 5 was bad)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0]


@pytest.mark.parametrize("limit", [2, 4])
def test_persistent_nonfinite_stops_within_the_limit_plus_check_interval(tmp_path, monkeypatch, limit):
    _patch_nan_from(monkeypatch, 3)  # from step 2 on every step is non-finite
    cfg = _cfg(
        tmp_path,
        "train.steps=40",
        "train.log_every=50",
        "train.save_every=100",
        f"train.max_nonfinite_steps={limit}",
    )
    with pytest.raises(NonFiniteLossError, match="consecutive non-finite") as err:
        train(cfg)
    # checks run every min(log_every, max_nonfinite_steps) steps, so at most that many bad steps more
    reported = int(str(err.value).split()[0])
    assert limit <= reported < 2 * limit, str(err.value)
