"""`open-tips make-shards`: WebDataset shards from a folder, a COCO captions file, or the built-in dataset."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from open_tips.commands import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shards",
        help="write WebDataset shards (.jpg + .json) for training",
        description="--input: a folder with captions.jsonl (or the .jsonl file), a COCO captions_*.json "
        "(images from --image-dir, default the split's folder beside 'annotations'), a COCO root "
        "folder, or builtin:N for N procedural samples. Images from files are copied as they are "
        "(checked to decode; unreadable ones are skipped and counted).",
    )
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    parser.add_argument("--image-dir", default=None, help="image folder for a COCO captions file")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix: PREFIX-000000.tar, ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in dataset")
    parser.add_argument("--image-size", type=int, default=112, help="image size of the built-in dataset")
    parser.add_argument(
        "--caption-noise", type=float, default=0.5, help="web caption noise of the built-in dataset"
    )
    parser.set_defaults(func=run)


def _builtin_samples(args: argparse.Namespace, count: int) -> Iterator[dict]:
    # deferred: torch loads once the command runs, not for `open-tips make-shards --help`
    from open_tips.data.builtin import generate_samples

    for sample in generate_samples(args.seed, args.image_size, args.caption_noise, stop=count):
        # captions and the label summary only: ground-truth arrays are not JSON and are rebuilt from the seed
        yield {
            k: sample[k]
            for k in ("__key__", "image", "web_caption", "synthetic_captions", "labels", "main_label")
        }


def _file_samples(dataset, skipped) -> Iterator[dict]:
    # deferred: torch loads once the command runs, not for `open-tips make-shards --help`
    from open_tips.data.decode import SkipSample

    for index in range(len(dataset)):
        try:
            yield dataset.encoded(index)
        except SkipSample as skip:
            skipped.add(skip.reason, str(dataset.image_path(index)), str(skip))


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads once the command runs, not for `open-tips make-shards --help`
    from open_tips.data.decode import SkipCounter
    from open_tips.data.shards import write_shards

    if args.per_shard < 1:
        raise CommandError("--per-shard must be >= 1")
    skipped = SkipCounter()
    if args.input.startswith("builtin:"):
        try:
            count = int(args.input.split(":", 1)[1])
        except ValueError:
            count = 0
        if count < 1:
            raise CommandError(f"--input {args.input!r}: expected builtin:N with N >= 1")
        samples = _builtin_samples(args, count)
    else:
        from open_tips.data.folder import FolderDataset

        try:
            dataset = FolderDataset(args.input, image_dir=args.image_dir)
        except (FileNotFoundError, ValueError) as err:
            raise CommandError(str(err)) from err
        skipped.update(dataset.index_skipped)
        samples = _file_samples(dataset, skipped)

    output = Path(args.output)
    written = write_shards(samples, str(output / f"{args.prefix}-%06d.tar"), args.per_shard)
    if skipped:
        print(f"skipped: {dict(sorted(skipped.items()))}")
    if not written:
        raise CommandError(f"--input {args.input}: no sample could be written (see the skip counts above)", 1)
    print(f"wrote {len(written)} shards to {output}")
    last = Path(written[-1]).name[len(args.prefix) + 1 :][:6]
    print(f"train with: data.source='{output}/{args.prefix}-{{000000..{last}}}.tar'")
    return 0
