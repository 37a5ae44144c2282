"""The TIPS ablation in miniature, on the built-in procedural dataset.

Same tiny architecture, steps, data and seed for every variant:
  A  CLIP on web captions            (one CLS, noisy alt-text)
  B  CLIP on synthetic captions      (one CLS, spatially rich captions)
  C  dual CLS: web + synthetic       (TIPS' dual embedding)
  D  C + self-distillation
  E  D + MIM                         (TIPS)
  F  E with iBOT++ and head-only EMA (TIPSv2), the SSL weights ramped in over the first 30 % of the run
  F0 F without that ramp (head-only EMA's trivial solution: docs/training.md)
  G  E + SPARC
Each (variant, seed) trains with `open-tips train` and is evaluated on the built-in suite; the table gives
mean +- standard deviation over seeds. Finished runs are reused, so the script can be stopped and rerun.

    .venv/bin/python experiments/ablation.py --seeds 0 1 2 --steps 600 --jobs 2 --out runs/ablation

On a GPU the same ladder runs the larger presets unchanged, e.g.
    python experiments/ablation.py --preset small --device cuda --jobs 1 --threads 8 --steps 5000
The table also gives each variant's SSL losses at the end (mean of the last five log steps) against log K, so a
row whose self-distillation did not learn (a uniform teacher: loss = log K) is visible.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OFF = ["loss.distill=false", "loss.mim=false"]
VARIANTS = {
    "A": ("CLIP, web captions", ["loss.pairs=web", *OFF]),
    "B": ("CLIP, synthetic captions", ["loss.pairs=synthetic", *OFF]),
    "C": ("dual CLS (web + synthetic)", ["loss.pairs=dual", *OFF]),
    "D": ("C + self-distillation", ["loss.pairs=dual", "loss.mim=false"]),
    "E": ("D + MIM (TIPS)", ["loss.pairs=dual"]),
    "F": (
        "E + iBOT++ + head-only EMA (TIPSv2), SSL weights ramped over 30 %",
        [
            "loss.pairs=dual",
            "loss.ibot_all_tokens=true",
            "teacher.kind=head_ema",
            "loss.ssl_weight_warmup=0.3",
        ],
    ),
    "F0": (
        "F without the SSL weight ramp",
        ["loss.pairs=dual", "loss.ibot_all_tokens=true", "teacher.kind=head_ema", "loss.ssl_weight_warmup=0"],
    ),
    "G": ("E + SPARC", ["loss.pairs=dual", "loss.sparc_weight=1.0"]),
}
# (column, task, metric, higher is better)
COLUMNS = [
    ("seg mIoU", "seg", "miou", True),
    ("depth RMSE", "depth", "rmse", False),
    ("zero-shot seg mIoU", "zeroshot_seg", "miou", True),
    ("retrieval R@1 (syn., t2i)", "retrieval_synthetic", "t2i_R@1", True),
    ("retrieval R@1 (web, t2i)", "retrieval_web", "t2i_R@1", True),
    ("zero-shot top-1", "zeroshot_mean", "top1", True),
    ("kNN top-1", "knn", "top1", True),
]


def run_one(variant: str, seed: int, args: argparse.Namespace) -> Path:
    run_dir = Path(args.out) / f"{variant}-seed{seed}"
    results = run_dir / "eval" / "results.json"
    if results.exists():
        return results
    overrides = (
        [f"--preset={args.preset}"]
        + VARIANTS[variant][1]
        + [
            f"train.seed={seed}",
            f"train.steps={args.steps}",
            f"train.output_dir={run_dir}",
            f"train.threads={args.threads}",
            f"train.device={args.device}",
            *([f"data.num_samples={args.num_samples}"] if args.num_samples else []),
            f"data.caption_noise={args.caption_noise}",
            "train.log_every=20",
            f"train.save_every={args.steps}",
        ]
    )
    start = time.time()
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        subprocess.run(
            [sys.executable, "-m", "open_tips.cli", "train", *overrides],
            check=True,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    print(f"{variant} seed {seed}: {time.time() - start:.0f} s", flush=True)
    return results


def _ssl_end(run_dir: Path) -> dict[str, float]:
    """distill / mask loss and teacher entropy at the end (mean of the last 5 log steps), divided by log K."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    config = (run_dir / "config.yaml").read_text()
    head_out_dim = next(int(line.split(":")[1]) for line in config.splitlines() if "head_out_dim:" in line)
    log_k = math.log(head_out_dim)
    out = {}
    for key in ("loss_distill", "loss_mask"):
        values = [r[key] for r in rows if key in r][-5:]
        if values:
            out[key] = statistics.mean(values) / log_k
    return out


def summarise(out: Path, seeds: list[int]) -> str:
    header = [c[0] for c in COLUMNS] + ["distill / log K", "mask / log K"]
    lines = ["| variant | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    table: dict[str, list[tuple[float, float]]] = {}
    for variant, (label, _) in VARIANTS.items():
        cells = []
        for _, task, metric, _ in COLUMNS:
            values = []
            for seed in seeds:
                path = out / f"{variant}-seed{seed}" / "eval" / "results.json"
                if path.exists():
                    value = json.loads(path.read_text())["tasks"].get(task, {}).get(metric)
                    if value is not None:
                        values.append(float(value))
            if values:
                mean = statistics.mean(values)
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append((mean, spread))
            else:
                cells.append((float("nan"), float("nan")))
        for key in ("loss_distill", "loss_mask"):
            ends = [_ssl_end(out / f"{variant}-seed{seed}").get(key) for seed in seeds]
            ends = [e for e in ends if e is not None]
            if ends:
                cells.append((statistics.mean(ends), statistics.stdev(ends) if len(ends) > 1 else 0.0))
            else:
                cells.append((float("nan"), float("nan")))
        table[variant] = cells
        lines.append(
            f"| {variant}: {label} | "
            + " | ".join("-" if m != m else f"{m:.3f} ± {s:.3f}" for m, s in cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--preset", default="tiny", help="training preset every variant starts from")
    parser.add_argument("--device", default="cpu", help="train.device: cpu, cuda, auto")
    parser.add_argument("--threads", type=int, default=1, help="train.threads per run")
    parser.add_argument("--num-samples", type=int, default=2048, help="built-in samples; 0 = the preset's")
    parser.add_argument("--caption-noise", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--table", default=None, help="write the Markdown table here")
    args = parser.parse_args()
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(run_one, v, s, args) for v, s in jobs]:
            future.result()
    table = summarise(Path(args.out), args.seeds)
    header = (
        f"Built-in data, {args.preset} preset, {args.steps} steps, {args.num_samples or 'preset'} samples, caption noise "
        f"{args.caption_noise}, seeds {args.seeds}; mean ± std over seeds; {time.time() - start:.0f} s.\n\n"
    )
    print(header + table)
    if args.table:
        Path(args.table).write_text(header + table)


if __name__ == "__main__":
    main()
