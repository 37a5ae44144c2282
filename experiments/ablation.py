"""The TIPS ablation in miniature, on the built-in procedural dataset.

Same tiny architecture, steps, data and seed for every variant:
  A  CLIP on web captions            (one CLS, noisy alt-text)
  B  CLIP on synthetic captions      (one CLS, spatially rich captions)
  C  dual CLS: web + synthetic       (TIPS' dual embedding)
  D  C + self-distillation
  E  D + MIM                         (TIPS)
  F  E with iBOT++ and head-only EMA (TIPSv2)
  G  E + SPARC
Each (variant, seed) trains with `open-tips train` and is evaluated on the built-in suite; the table gives
mean +- standard deviation over seeds. Finished runs are reused, so the script can be stopped and rerun.

    .venv/bin/python experiments/ablation.py --seeds 0 1 2 --steps 600 --jobs 2 --out runs/ablation
"""

from __future__ import annotations

import argparse
import json
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
        "E + iBOT++ + head-only EMA (TIPSv2)",
        ["loss.pairs=dual", "loss.ibot_all_tokens=true", "teacher.kind=head_ema"],
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
    overrides = VARIANTS[variant][1] + [
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        f"train.output_dir={run_dir}",
        "train.threads=1",
        f"data.num_samples={args.num_samples}",
        f"data.caption_noise={args.caption_noise}",
        "train.log_every=20",
        f"train.save_every={args.steps}",
    ]
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


def summarise(out: Path, seeds: list[int]) -> str:
    lines = ["| variant | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
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
        table[variant] = cells
        lines.append(f"| {variant}: {label} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--num-samples", type=int, default=2048)
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
        f"Built-in data, tiny preset, {args.steps} steps, batch 32, {args.num_samples} samples, caption noise "
        f"{args.caption_noise}, seeds {args.seeds}; mean ± std over seeds; {time.time() - start:.0f} s.\n\n"
    )
    print(header + table)
    if args.table:
        Path(args.table).write_text(header + table)


if __name__ == "__main__":
    main()
