"""The training stream from shards: exact resume (no random number drawn while skipping), skip counts that
are cumulative over epochs and independent of the worker count, CLS2 caption fall-backs counted and
``data.require_synthetic``, warnings on caption-weight templates the data does not have."""

import logging

import pytest
from torch.utils.data import DataLoader

from open_tips.data.builtin import BuiltinShapes
from open_tips.data.shards import ShardDataset, write_shards
from open_tips.models.tokenizer import Tokenizer
from open_tips.train.config import load_config
from open_tips.train.data import ShardEpochBatches, _batch_builder
from open_tips.train.loop import train
from open_tips.train.metrics import read_metrics

FAST = [
    "data.batch_size=8",
    "data.shuffle_buffer=4",
    "train.log_every=1",
    "train.evaluate_at_end=false",
    "train.threads=1",
    "optim.warmup_steps=2",
    "loss.teacher_temp_warmup_steps=4",
    "train.save_every=100",
]
BROKEN = 3  # corrupt images among the samples
NO_SYNTHETIC = 5  # samples without a synthetic caption


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """43 samples in 3 shards: 40 decodable (5 batches of 8 per epoch), BROKEN corrupt, NO_SYNTHETIC of the
    good ones without synthetic captions."""
    root = tmp_path_factory.mktemp("shards")
    data = BuiltinShapes(40, 48, seed=3)
    samples = []
    for i in range(40):
        sample = data[i]
        record = {k: sample[k] for k in ("__key__", "image", "web_caption", "synthetic_captions")}
        if i < NO_SYNTHETIC:
            record["synthetic_captions"] = []
        samples.append(record)
        if i in (7, 20, 33):  # corrupt images, spread over the shards
            samples.append(
                {"__key__": f"bad{i}", "image": b"not a jpeg", "image_ext": "jpg", "web_caption": "x"}
            )
    write_shards(samples, str(root / "s-%06d.tar"), max_per_shard=15)
    texts = [s["web_caption"] for s in samples] + [
        c["text"] for s in samples for c in s.get("synthetic_captions", [])
    ]
    Tokenizer.train(texts, root / "tok", vocab_size=200)
    return root


def _cfg(shards, run, *extra):
    return load_config(
        "tiny",
        overrides=FAST
        + [
            f"data.source={shards}/s-{{000000..000002}}.tar",
            f"data.tokenizer={shards}/tok.model",
            f"train.output_dir={run}",
            *extra,
        ],
    )


def _losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl")]


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_resume_is_exact_across_an_epoch(shards, tmp_path, workers):
    steps = 8  # 5 batches per epoch: the resume at step 6 lies in the second epoch
    extra = [f"train.steps={steps}", f"data.num_workers={workers}", "model.drop_path_rate=0.1"]
    reference = train(_cfg(shards, tmp_path / "ref", *extra))
    cfg = _cfg(shards, tmp_path / "cut", *extra)
    partial = train(cfg, max_steps_this_run=6)
    assert partial["steps"] == 6 and not partial["finished"]
    resumed = train(cfg, resume=True)
    got, want = _losses(tmp_path / "cut"), _losses(tmp_path / "ref")
    assert [s for s, _ in got] == list(range(steps))
    assert got == want  # bit-identical: the same crops, masks, caption choices and drop-path draws
    assert resumed["skipped_samples"] == reference["skipped_samples"]
    assert resumed["caption_fallbacks"] == reference["caption_fallbacks"]


@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_counts_every_skip_once_whatever_the_workers(shards, workers):
    """Every reader's last counts (its final counts-only item included) add up to one count per bad sample."""
    cfg = _cfg(shards, "unused")
    builder = _batch_builder(cfg, Tokenizer(shards / "tok.model"))
    dataset = ShardDataset(f"{shards}/s-{{000000..000002}}.tar", rank=0, world_size=1, shuffle_buffer=4)
    latest, batches = {}, 0
    loader = DataLoader(ShardEpochBatches(dataset, builder, 8, 0), batch_size=None, num_workers=workers)
    for item in loader:
        latest.update(item.get("__reader_counts__") or item.get("skip_counts"))
        batches += "__reader_counts__" not in item
    totals = {}
    for counts in latest.values():
        for reason, count in counts.items():
            totals[reason] = totals.get(reason, 0) + count
    assert totals == {"corrupt_image": BROKEN}
    assert batches == (5 if workers == 0 else 4)  # 2 workers: 3 shards split 2 + 1, each drops a remainder


def test_skip_counts_never_go_down_across_epochs(shards, tmp_path):
    run = tmp_path / "w2"
    summary = train(_cfg(shards, run, "train.steps=11", "data.num_workers=2"))
    counts = [r.get("skipped_corrupt_image", 0) for r in read_metrics(run / "metrics.jsonl")]
    assert counts == sorted(counts), counts  # cumulative: each epoch's readers add to the total
    assert counts[-1] >= 2 * BROKEN  # two whole epochs read, each corrupt image counted once per epoch
    assert summary["skipped_samples"]["corrupt_image"] == counts[-1]


def test_caption_fallbacks_counted_and_require_synthetic(shards, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="open_tips.train.data"):
        summary = train(
            _cfg(shards, tmp_path / "a", "train.steps=5", "data.caption_weights={short: 1.0, long: 1.0}")
        )
    assert "template(s) long not in the data" in caplog.text  # "short" is in the data: no warning for it
    # one whole epoch: every sample without a synthetic caption trained CLS2 on its web caption, and is counted
    assert summary["caption_fallbacks"] == NO_SYNTHETIC
    last = read_metrics(tmp_path / "a" / "metrics.jsonl")[-1]
    assert last["caption_fallbacks"] == NO_SYNTHETIC

    # 35 samples with synthetic captions: 4 batches per epoch, so step 5 comes after a whole epoch
    strict = train(_cfg(shards, tmp_path / "b", "train.steps=5", "data.require_synthetic=true"))
    assert strict["caption_fallbacks"] == 0
    assert strict["skipped_samples"]["missing_synthetic_caption"] >= NO_SYNTHETIC
