"""Distilling a trained tiny teacher into a smaller student, on the built-in procedural dataset.

The teacher is the ``tiny`` architecture (width 64, 2 + 2 blocks) trained contrastively; the student is
``tiny-half`` (width 32, 2 + 2 blocks, registered below), trained for the same number of steps either from
scratch (contrastive only) or distilled from the frozen teacher with each variant's ``distill.*`` keys. The
score is retrieval R@1 + R@5 + R@10 summed over both directions, CLS1-web and CLS2-synthetic, on the built-in
held-out split (200 images; chance 0.16). Runs are done one at a time, in this process, with one thread;
finished runs (a ``final/`` export) are reused, so the script can be stopped and rerun.

    .venv/bin/python experiments/distill.py --out runs/distill --teacher-steps 400 --student-steps 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from open_tips.models.configs import TextConfig, TIPSConfig, VisionConfig, get_config, register_config

BASE = [
    "data.num_samples=256",
    "data.batch_size=16",
    "train.log_every=10",
    "train.threads=1",
    "optim.warmup_steps=10",
    "train.evaluate_at_end=false",
    "loss.distill=false",
    "loss.mim=false",
]
STUDENT = "tiny-half"
DISTILL = ["distill.combine_with_tips=false"]
# name -> (description, overrides on top of the student's)
VARIANTS = {
    "scratch": ("from scratch, contrastive only", []),
    "feat": ("CLS + patches, with contrastive", DISTILL),
    "feat_text": ("CLS + patches + text, with contrastive", [*DISTILL, "distill.text_weight=1.0"]),
    "logit": (
        "CLS + patches + text + logit KD, with contrastive",
        [*DISTILL, "distill.text_weight=1.0", "distill.logit_weight=1.0"],
    ),
    "interactive": (
        "CLS + patches + text + interactive contrastive, with contrastive",
        [*DISTILL, "distill.text_weight=1.0", "distill.interactive_weight=1.0"],
    ),
    "logit_interactive": (
        "CLS + patches + text + logit KD + interactive, with contrastive",
        [*DISTILL, "distill.text_weight=1.0", "distill.logit_weight=1.0", "distill.interactive_weight=1.0"],
    ),
}


def register_student(width: int = 32, depth: int = 2) -> str:
    """A smaller tiny: ``width`` wide (16-dim heads), ``depth`` blocks per tower."""
    tiny = get_config("tiny")
    heads = max(1, width // 16)
    register_config(
        TIPSConfig(
            vision=VisionConfig(
                width=width, depth=depth, heads=heads, mlp_hidden=4 * width, pos_grid=tiny.vision.pos_grid
            ),
            text=TextConfig(
                width=width,
                depth=depth,
                heads=heads,
                mlp_hidden=4 * width,
                vocab_size=tiny.text.vocab_size,
                max_len=tiny.text.max_len,
            ),
            temperature=tiny.temperature,
            image_size=tiny.image_size,
            name=STUDENT,
        )
    )
    return STUDENT


def retrieval_sum(run_dir: Path) -> float:
    """R@1 + R@5 + R@10, both directions, CLS1-web and CLS2-synthetic, of ``run_dir/final`` on the built-in
    held-out split (200 images): less noisy than R@1 alone on a model this small."""
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


def run(out: Path, name: str, steps: int, overrides: list[str]) -> tuple[float, float]:
    """Trains (unless done) and scores one run: (retrieval sum, training seconds)."""
    from open_tips.train.config import load_config
    from open_tips.train.loop import train

    run_dir = out / name
    done = run_dir / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        return result["retrieval"], result["seconds"]
    start = time.perf_counter()
    extra = [f"train.output_dir={run_dir}", f"train.steps={steps}", f"train.save_every={steps}"]
    train(load_config("tiny", overrides=[*BASE, *extra, *overrides]))
    seconds = time.perf_counter() - start
    score = retrieval_sum(run_dir)
    done.write_text(json.dumps({"retrieval": score, "seconds": seconds, "overrides": overrides}))
    return score, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/distill"))
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--student-steps", type=int, default=100)
    parser.add_argument("--student-width", type=int, default=32)
    parser.add_argument("--student-depth", type=int, default=2)
    parser.add_argument("--student-lr", type=float, default=None, help="optim.lr of the students")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of the students")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for the distilled students")
    parser.add_argument("--tag", default="", help="run-name suffix for --set")
    args = parser.parse_args()
    student = register_student(args.student_width, args.student_depth)
    teacher_score, teacher_s = run(args.out, f"teacher_{args.teacher_steps}", args.teacher_steps, [])
    teacher = args.out / f"teacher_{args.teacher_steps}" / "final"
    lr = [f"optim.lr={args.student_lr}"] if args.student_lr else []
    lr += [f"train.seed={args.seed}"] if args.seed else []
    tag = f"w{args.student_width}d{args.student_depth}_s{args.student_steps}" + (
        f"_lr{args.student_lr:g}" if args.student_lr else ""
    )
    tag += f"_seed{args.seed}" if args.seed else ""
    rows = [("teacher: tiny", args.teacher_steps, teacher_score, teacher_s)]
    for variant in args.variants:
        description, overrides = VARIANTS[variant]
        distilled = variant != "scratch"
        teacher_key = [f"distill.teacher={teacher}", *args.set] if distilled else []
        score, seconds = run(
            args.out,
            f"{tag}_{variant}" + (args.tag if distilled else ""),
            args.student_steps,
            [f"model.name={student}", *lr, *teacher_key, *overrides],
        )
        label = f"student {tag}: {description}" + (f" {' '.join(args.set)}" if distilled and args.set else "")
        rows.append((label, args.student_steps, score, seconds))
        print(f"{variant}: {score:.3f} ({seconds:.0f} s)", flush=True)
    print("\n| run | steps | retrieval sum | x teacher | train s |\n|---|---|---|---|---|")
    for label, steps, score, seconds in rows:
        print(f"| {label} | {steps} | {score:.2f} | {score / teacher_score:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
