"""`open-tips eval`: frozen-feature evaluation of a checkpoint on a registered suite (`--suite NAME --data
ROOT`; the built-in suite by default) into OUTPUT/results.json + results.md; `--compare RUN ...` prints a
side-by-side table; `--list` the suites. Suite and task names come from `open_tips.eval.registry`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

import open_tips
from open_tips.commands import CommandError
from open_tips.eval.registry import suite_names, task_names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    TASKS = task_names()

    parser = subparsers.add_parser(
        "eval",
        help="evaluate frozen features on the paper's task families; or compare result tables",
        description="Evaluate a checkpoint's frozen features (kNN / linear / zero-shot classification, "
        "retrieval, segmentation / depth / normals probes, zero-shot segmentation), or compare "
        "finished evaluations side by side with --compare.",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="official *_vision.npz, HF-format directory, or an open_tips run / .pt checkpoint",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=None,
        metavar="RUN",
        help="print a side-by-side Markdown table of results.json files / eval or run directories",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help=f"comma-separated, from: {', '.join(TASKS)} (default: the suite's tasks, those the model "
        "cannot run skipped; tasks named here must run)",
    )
    parser.add_argument(
        "--suite",
        default="auto",
        choices=("auto", *suite_names()),
        help="dataset layout (default auto: builtin without --data, else detected from the files); "
        "--list describes each",
    )
    parser.add_argument(
        "--data",
        default="builtin",
        help="the dataset's root (or a Karpathy JSON file); 'builtin' for the procedural suite",
    )
    parser.add_argument("--list", action="store_true", help="list the suites, their layouts and tasks")
    parser.add_argument("--output", default="eval_results", help="output directory (default: eval_results)")
    parser.add_argument("--config", default=None, help="registry name overriding the inferred architecture")
    parser.add_argument(
        "--tokenizer", default=None, help="SentencePiece tokenizer.model (default: beside the checkpoint)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument(
        "--image-size",
        type=_positive,
        default=None,
        help="model input side in pixels, rounded to the patch grid (default: the model's)",
    )
    parser.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass")
    parser.add_argument(
        "--workers", type=int, default=0, help="image-decoding processes for datasets on disk"
    )
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for feature extraction on CUDA")
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        default="fp32",
        help="weights and activations of the tower in this type (features are kept as float32; default fp32)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the towers")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: OUTPUT/cache)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    parser.add_argument("--no-pictures", action="store_true", help="skip pca.png / zeroshot_seg.png")
    group = parser.add_argument_group("data sizes")
    group.add_argument(
        "--num-train", type=_positive, default=300, help="built-in suite: training images (probes, kNN)"
    )
    group.add_argument("--num-test", type=_positive, default=200, help="built-in suite: test images")
    group.add_argument(
        "--seed", type=int, default=0, help="built-in suite: splits use seed+10000 / seed+20000"
    )
    group.add_argument(
        "--max-images", type=_positive, default=None, help="datasets on disk: images per split"
    )
    group.add_argument("--split", default="test", help="Karpathy JSON: the split to evaluate (default test)")
    group = parser.add_argument_group("protocol")
    group.add_argument("--knn-k", type=_positive, default=20)
    group.add_argument("--knn-temperature", type=float, default=0.07)
    group.add_argument("--linear-optimizer", choices=("adamw", "lbfgs"), default="adamw")
    group.add_argument(
        "--probe-epochs", type=_positive, default=30, help="dense probes (seg / depth / normals)"
    )
    group.add_argument("--probe-lr", type=float, default=5e-2)
    group.add_argument(
        "--seg-with-cls", action="store_true", help="segmentation probe on patch tokens + CLS1"
    )
    group.add_argument("--depth-bins", type=_positive, default=256)
    group.add_argument(
        "--depth-range",
        type=float,
        nargs=2,
        default=(1e-3, 10.0),
        metavar=("MIN", "MAX"),
        help="metres (default 0.001 10)",
    )
    group.add_argument("--depth-spacing", choices=("linear", "log"), default="linear")
    group.add_argument(
        "--depth-scale",
        type=float,
        default=1000.0,
        help="PNG depth units per metre (default 1000: millimetres, NYUv2)",
    )
    group.add_argument(
        "--templates",
        default="default",
        help="prompt templates: default (the 9 TIPS ones), simple, none, or a file with one per line",
    )
    group.add_argument(
        "--zeroshot-background",
        choices=("name", "threshold", "ignore"),
        default="name",
        help="zero-shot segmentation: 'background' as a prompted class, a cosine threshold, or "
        "background pixels ignored (objects only)",
    )
    group.add_argument("--zeroshot-threshold", type=float, default=0.0)
    group.add_argument(
        "--zeroshot-mode",
        choices=("whole", "slide"),
        default="whole",
        help="zero-shot segmentation: whole image, or sliding windows (notebook protocol)",
    )
    group.add_argument(
        "--zeroshot-size",
        type=_positive,
        default=None,
        help="zero-shot segmentation: short side in pixels (default: --image-size; 448 for the papers)",
    )
    group.add_argument(
        "--window", type=_positive, default=None, help="slide: window side (default: the short side)"
    )
    group.add_argument(
        "--stride", type=_positive, default=None, help="slide: stride (default: 3/4 of the window)"
    )
    group.add_argument(
        "--depth-crop",
        choices=("auto", "eigen", "none"),
        default="auto",
        help="nyuv2: the standard Eigen evaluation crop (auto: on 480x640 maps)",
    )
    group.add_argument(
        "--no-merge", action="store_true", help="replace OUTPUT/results.json instead of merging into it"
    )
    parser.set_defaults(func=run)


def _list_suites() -> str:
    # deferred: torch loads once the command runs, not for `open-tips eval --help`
    from open_tips.eval.registry import get_suite, suite_names

    lines = []
    for name in suite_names():
        suite = get_suite(name)
        lines += [
            f"{name}: {suite.summary}",
            f"    tasks:  {', '.join(suite.tasks)}",
            f"    layout: {suite.layout}",
            f"    source: {suite.source}",
        ]
    return "\n".join(lines) + "\n"


def _fail(message: str, code: int = 2) -> NoReturn:
    raise CommandError(message, code)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads once the command runs, not for `open-tips eval --help`
    from open_tips.eval.report import compare, markdown_table

    if args.list:
        print(_list_suites(), end="")
        return 0
    if args.compare:
        try:
            print(compare(args.compare), end="")
        except (FileNotFoundError, ValueError) as err:
            return _fail(str(err), 1)
        return 0
    if not args.checkpoint:
        return _fail("give --checkpoint (to evaluate), --compare RUN ... (to compare) or --list")
    import torch

    from open_tips.eval.features import model_fingerprint
    from open_tips.eval.registry import EvalError, task_names
    from open_tips.eval.suite import EvalOptions, evaluate
    from open_tips.inference.zeroshot import load_templates

    tasks = None
    if args.tasks is not None:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in task_names()]
        if unknown or not tasks:
            return _fail(f"unknown tasks {unknown}; known: {', '.join(task_names())}")
    data = None if args.data == "builtin" else args.data
    if data is not None and not Path(data).exists():
        return _fail(f"no such dataset: {data}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        templates = load_templates(args.templates)
        model = open_tips.load_pretrained(
            args.checkpoint, config=args.config, tokenizer=args.tokenizer, device=device
        )
    except (FileNotFoundError, KeyError, ValueError, open_tips.CheckpointError) as err:
        return _fail(str(err).strip(chr(39)))
    from open_tips.inference.options import prepare_for_inference  # on use, as the imports above

    prepare_for_inference(model, args.dtype, args.compile)
    # reduced precision gives other features: its own cache entries (fp32 keys stay as they were)
    precision = () if args.dtype == "fp32" else (args.dtype,)
    output = Path(args.output)
    options = EvalOptions(
        image_size=args.image_size,
        device=device,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        cache_dir=None
        if args.no_cache
        else str(Path(args.cache_dir) if args.cache_dir else output / "cache"),
        model_key=model_fingerprint(args.checkpoint, args.config, args.tokenizer, *precision),
        checkpoint=str(args.checkpoint),
        config=args.config,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.seed,
        max_images=args.max_images,
        split=args.split,
        knn_k=args.knn_k,
        knn_temperature=args.knn_temperature,
        linear_optimizer=args.linear_optimizer,
        probe_epochs=args.probe_epochs,
        probe_lr=args.probe_lr,
        seg_with_cls=args.seg_with_cls,
        depth_bins=args.depth_bins,
        depth_min=args.depth_range[0],
        depth_max=args.depth_range[1],
        depth_spacing=args.depth_spacing,
        depth_scale=args.depth_scale,
        depth_crop=args.depth_crop,
        templates=templates,
        templates_name=args.templates,
        zeroshot_background=args.zeroshot_background,
        zeroshot_threshold=args.zeroshot_threshold,
        zeroshot_mode=args.zeroshot_mode,
        zeroshot_size=args.zeroshot_size,
        zeroshot_window=args.window,
        zeroshot_stride=args.stride,
        pictures=not args.no_pictures,
        merge=not args.no_merge,
    )
    try:
        results = evaluate(model, args.suite, data, output, tasks=tasks, options=options)
    except EvalError as err:
        return _fail(str(err))
    print(markdown_table(results), end="")
    print(f"wrote {output / 'results.json'} and {output / 'results.md'}", file=sys.stderr)
    return 0
