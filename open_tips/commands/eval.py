"""`open-tips eval`: frozen-feature evaluation on the built-in suite or COCO-style data; --compare."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate frozen features; or compare result tables")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--tasks", default="knn,linear,zeroshot,retrieval,seg,depth,normals,zeroshot-seg")
    parser.add_argument("--data", default="builtin", help="builtin, or a COCO-style root (annotations/, train2017/, val2017/)")
    parser.add_argument("--output", default="eval_results", help="output directory")
    parser.add_argument("--config", default=None)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--num-train", type=int, default=300, help="built-in suite: training images for probes")
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--max-images", type=int, default=None, help="COCO: images per split")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: OUTPUT/cache)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                        help="print a side-by-side table of results.json files / run directories")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from open_tips.eval.report import compare

    if args.compare:
        print(compare(args.compare))
        return 0
    if not args.checkpoint:
        raise SystemExit("--checkpoint is required (or --compare)")
    import open_tips
    from open_tips.eval.features import cache_key
    from open_tips.eval.report import markdown_table
    from open_tips.eval.suite import ALL_TASKS, evaluate_builtin, evaluate_coco

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = set(tasks) - set(ALL_TASKS)
    if unknown:
        raise SystemExit(f"unknown tasks {sorted(unknown)}; known: {', '.join(ALL_TASKS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = open_tips.load_pretrained(args.checkpoint, config=args.config, tokenizer=args.tokenizer, device=device)
    checkpoint = Path(args.checkpoint)
    key = cache_key(checkpoint.resolve(), checkpoint.stat().st_mtime, args.config) + "-"
    cache_dir = args.cache_dir or str(Path(args.output) / "cache")
    if args.data == "builtin":
        results = evaluate_builtin(model, args.output, image_size=args.image_size, device=device, tasks=tasks,
                                   num_train=args.num_train, num_test=args.num_test, cache_dir=cache_dir, key=key)
    else:
        results = evaluate_coco(model, args.data, args.output, image_size=args.image_size or 224, device=device,
                                tasks=tasks, cache_dir=cache_dir, key=key, max_images=args.max_images)
    results["model"] = str(checkpoint)
    (Path(args.output) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (Path(args.output) / "results.md").write_text(markdown_table(results))
    print(markdown_table(results))
    return 0
