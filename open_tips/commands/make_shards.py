"""`open-tips make-shards`: WebDataset shards from a folder, COCO captions, or the built-in dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shards", help="write WebDataset shards (.jpg + .json) for training",
        description="--input: a folder with captions.jsonl, a COCO captions_*.json (with --image-dir), or "
                    "builtin:N for N procedural samples.")
    parser.add_argument("--input", required=True)
    parser.add_argument("--image-dir", default=None, help="image folder for a COCO captions file")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in dataset")
    parser.set_defaults(func=run)


def _samples(args: argparse.Namespace):
    source = args.input
    if source.startswith("builtin:"):
        from open_tips.data.builtin import BuiltinShapes

        dataset = BuiltinShapes(num_samples=int(source.split(":", 1)[1]), seed=args.seed)
        for i in range(len(dataset)):
            sample = dataset[i]
            yield {k: sample[k] for k in ("__key__", "image", "web_caption", "synthetic_captions", "labels",
                                          "main_label")}
        return
    from open_tips.data.decode import SkipSample
    from open_tips.data.folder import CocoCaptionsDataset, FolderDataset

    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        if not args.image_dir:
            raise SystemExit("--image-dir is required with a COCO captions file")
        dataset = CocoCaptionsDataset(path, args.image_dir)
    else:
        dataset = FolderDataset(path)
    for i in range(len(dataset)):
        try:
            yield dataset.load(i)
        except SkipSample as skip:
            dataset.skipped.add(skip.reason, str(i), str(skip))
    if dataset.skipped:
        print(f"skipped: {dict(dataset.skipped)}")


def run(args: argparse.Namespace) -> int:
    from open_tips.data.shards import write_shards

    output = Path(args.output)
    written = write_shards(_samples(args), str(output / f"{args.prefix}-%06d.tar"), args.per_shard)
    print(f"wrote {len(written)} shards to {output}")
    if written:
        first, last = Path(written[0]).name, Path(written[-1]).name
        print(f"train with: data.source='{output}/{args.prefix}-{{{first.split('-')[-1][:6]}..{last.split('-')[-1][:6]}}}.tar'")
    return 0
