"""TIPSv2's head-only EMA teacher: a short `tiny-tipsv2` run keeps learning (contrastive loss well below
chance, image and text embeddings of different samples stay apart), where without the SSL weight ramp the
same run sits at chance (docs/training.md, "Head-only EMA")."""

import math

import torch

from open_tips.data.builtin import make_sample
from open_tips.inference.images import to_pixels
from open_tips.train.config import load_config
from open_tips.train.loop import train
from open_tips.train.metrics import read_metrics

FAST = [
    "data.num_samples=512",
    "train.log_every=1",
    "train.evaluate_at_end=false",
    "train.threads=1",
    "train.steps=300",  # the schedule of the measured runs; the test stops at step 200
    "train.save_every=200",
]


def _mean_offdiagonal_cosine(features: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(features, dim=-1)
    cosine = unit @ unit.T
    n = cosine.shape[0]
    return float((cosine.sum() - cosine.diagonal().sum()) / (n * (n - 1)))


def test_tiny_tipsv2_keeps_learning_and_embeddings_diverse(tmp_path):
    cfg = load_config("tiny-tipsv2", overrides=FAST + [f"train.output_dir={tmp_path / 'run'}"])
    assert cfg.teacher.kind == "head_ema" and cfg.loss.ibot_all_tokens
    assert cfg.loss.ssl_weight_warmup == 0.3
    train(cfg, max_steps_this_run=200)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    chance = math.log(cfg.data.batch_size)
    # Steps 100-199 are where head-only EMA without the ramp sits at chance (measured mean ~3.40 of 3.47;
    # with the ramp ~3.0, as with a full EMA teacher: docs/training.md).
    window = [r["loss_contrastive"] for r in records if 100 <= r["step"] < 200]
    assert len(window) == 100
    assert sum(window) / len(window) < 0.93 * chance, sum(window) / len(window)
    assert all(r["grad_norm"] > 0.1 for r in records[-10:])  # collapsed runs fell to 0.02-0.4

    import open_tips

    model = open_tips.load_pretrained(tmp_path / "run" / "checkpoints" / "step_00000200.pt").eval()
    samples = [make_sample(i, seed=123, image_size=112) for i in range(16)]
    pixels = torch.stack([to_pixels(s["image"], 56, 56) for s in samples])
    with torch.no_grad():
        image = model.encode_image(pixels)
        text = model.encode_text([s["synthetic_captions"][1]["text"] for s in samples])
    # collapsed: every image (and caption) gives the same embedding, mean pairwise cosine ~1. cls_web is
    # not checked: it sits in a narrow cone (~0.95) in healthy runs too, being trained on noisy alt-text.
    assert _mean_offdiagonal_cosine(image.cls_synthetic) < 0.6
    assert _mean_offdiagonal_cosine(text) < 0.97
