"""Periodic in-training evaluation (train.eval_every / eval_source) and W&B logging."""

from __future__ import annotations

import sys

import pytest
import torch

from open_tips.train.config import load_config
from open_tips.train.loop import train
from open_tips.train.metrics import MetricsLogger, WandbMissingError, read_metrics
from open_tips.train.periodic_eval import PeriodicEval, looks_like_shards

FAST = [
    "data.num_samples=128",
    "data.batch_size=16",
    "train.log_every=4",
    "train.evaluate_at_end=false",
    "train.threads=1",
    "optim.warmup_steps=4",
    "optim.lr=3e-3",
    "loss.distill=false",
    "loss.mim=false",
    "train.steps=24",
    "train.save_every=100",
]


def _eval_records(run) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if any(k.startswith("eval_") for k in r)]


def test_eval_keys_at_the_right_steps_change_and_leave_training_alone(tmp_path):
    every = ["train.eval_every=8", "train.eval_max_images=64"]
    summary = train(load_config("tiny", overrides=[*FAST, f"train.output_dir={tmp_path / 'a'}", *every]))
    evals = _eval_records(tmp_path / "a")
    assert [r["step"] for r in evals] == [7, 15, 23]
    for key in (
        "eval_retrieval_web_i2t_R1",
        "eval_retrieval_web_t2i_R1",
        "eval_retrieval_synthetic_i2t_R1",
        "eval_knn_top1",
        "eval_zeroshot_web_top1",
    ):
        assert all(key in r and 0.0 <= r[key] <= 1.0 for r in evals), key
    values = [tuple(v for k, v in sorted(r.items()) if k.startswith("eval_")) for r in evals]
    assert len(set(values)) == 3  # the metrics follow the weights
    assert summary["last_periodic_eval"] == {k: v for k, v in evals[-1].items() if k != "step"}

    # the eval keys reach TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval_knn_top1")] == [7, 15, 23]

    # evaluation draws no random numbers from the training generators: same losses as without it
    train(load_config("tiny", overrides=[*FAST, f"train.output_dir={tmp_path / 'b'}"]))
    with_eval = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    without = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert with_eval == without
    assert not _eval_records(tmp_path / "b")


def _write_val_shards(tmp_path, labels: bool) -> str:
    from open_tips.data.builtin import BuiltinShapes
    from open_tips.data.shards import write_shards

    data = BuiltinShapes(24, 56, seed=123)
    samples = []
    for i in range(len(data)):
        s = data[i]
        sample = {
            "__key__": f"{i:04d}",
            "image": s["image"],
            "web_caption": s["web_caption"],
            "synthetic_captions": s["synthetic_captions"],
        }
        if labels:
            sample["label"] = ["circle", "square", "triangle"][i % 3]
        samples.append(sample)
    folder = tmp_path / ("labelled" if labels else "plain")
    folder.mkdir()
    write_shards(samples, str(folder / "val-%06d.tar"), max_per_shard=10)
    return str(folder / "val-{000000..000002}.tar")


def test_shard_source_with_and_without_labels(tmp_path):
    from open_tips.data.tokenizer import Tokenizer
    from open_tips.models.tips import create_model

    tokenizer = Tokenizer.train(
        ["a red circle", "two blue squares", "a green triangle"] * 20, tmp_path / "t", 60
    )
    torch.manual_seed(0)
    model = create_model("tiny", tokenizer=tokenizer)
    model.train()

    labelled = _write_val_shards(tmp_path, labels=True)
    assert looks_like_shards(labelled)
    evaluator = PeriodicEval(labelled, ["retrieval", "knn", "zeroshot"], image_size=56, max_images=20)
    assert len(evaluator.data.test) == 10 and len(evaluator.data.train) == 10  # alternate split
    assert evaluator.data.class_names == ["circle", "square", "triangle"]
    values = evaluator(model)
    assert {"eval_knn_top1", "eval_zeroshot_web_top1", "eval_retrieval_web_i2t_R1"} <= set(values)
    assert model.training  # back in training mode
    assert values == evaluator(model)  # deterministic

    plain = PeriodicEval(_write_val_shards(tmp_path, labels=False), ["retrieval", "knn"], image_size=56)
    values = plain(model)
    assert len(plain.data.test) == 24 and plain.data.train is None
    assert "eval_retrieval_synthetic_t2i_R1" in values
    assert not any(k.startswith("eval_knn") for k in values)  # no labels: kNN left out

    with pytest.raises(ValueError, match="train.eval_source="):
        PeriodicEval(str(tmp_path / "missing-{0..1}.tar"), ["retrieval"], image_size=56)
    with pytest.raises(ValueError, match="train.eval_tasks"):
        PeriodicEval("builtin", ["retreival"], image_size=56)


def test_wandb_offline_writes_a_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    logger = MetricsLogger(tmp_path / "run", tensorboard=False, wandb=True, config={"optim": {"lr": 1e-3}})
    logger.log(0, {"loss": 2.0, "eval_knn_top1": 0.25})
    logger.log(1, {"loss": 1.5})
    logger.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)
    assert list(runs[0].glob("*.wandb"))  # the run's records, for `wandb sync`
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(WandbMissingError, match=r"pip install 'open_tips\[wandb\]'"):
        MetricsLogger(tmp_path, tensorboard=False, wandb=True)
