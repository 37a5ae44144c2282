"""`open-tips caption`: synthetic captions with a local HF image-to-text model (see docs/captions.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from open_tips.commands import CommandError


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="add synthetic captions to shards or image folders with a local captioning model",
        description="Captions WebDataset shards or image folders with an HF image-text-to-text model loaded from "
        "local files (PaliGemma by default; nothing is downloaded). Writes new shards (or --sidecar "
        "JSONL) to --output; resumable (--resume) and split across processes (--rank/--world-size, "
        "or torchrun's RANK/WORLD_SIZE).",
    )
    parser.add_argument(
        "--model", required=True, help="local model directory, or a hub name already in the local HF cache"
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="name recorded in each caption's 'model' field (default: the folder / hub name)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="tar shards (paths, brace patterns, globs, pipe: commands) or image folders",
    )
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument(
        "--template",
        nargs="+",
        default=["detailed"],
        help="templates in order: detailed, short, rewrite, or a --prompt name (default: detailed)",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="a custom template ({web} and {synthetic} are filled in); repeatable",
    )
    parser.add_argument(
        "--prompt-style",
        default="auto",
        choices=["auto", "prefix", "chat", "raw"],
        help="prompt layout: PaliGemma task prefix, the processor's chat template, or plain text "
        "(default: from the model)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPUs that support it (else fp16), fp32 on CPU",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy / beam search")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--max-caption-tokens",
        type=int,
        default=64,
        help="cap on caption length in the captioner's tokens, cut at a word (0: no cap)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="sampling seed (per unit, so resuming repeats it)"
    )
    parser.add_argument(
        "--sidecar",
        action="store_true",
        help="write <unit>.jsonl files of new captions keyed by sample key instead of new shards",
    )
    parser.add_argument("--chunk-size", type=int, default=512, help="images per unit for folder inputs")
    parser.add_argument("--resume", action="store_true", help="skip units already finished in --output")
    parser.add_argument("--rank", type=int, default=_env_int("RANK", 0), help="default: $RANK or 0")
    parser.add_argument(
        "--world-size", type=int, default=_env_int("WORLD_SIZE", 1), help="default: $WORLD_SIZE or 1"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads once the command runs, not for `open-tips caption --help`
    import logging

    from open_tips.captions.model import DecodeSettings
    from open_tips.captions.pipeline import PipelineConfig, caption
    from open_tips.captions.prompts import parse_templates

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.batch_size < 1 or args.max_new_tokens < 1 or args.num_beams < 1 or args.chunk_size < 1:
            raise ValueError("--batch-size, --max-new-tokens, --num-beams and --chunk-size must be positive")
        config = PipelineConfig(
            templates=parse_templates(args.template, args.prompt),
            settings=DecodeSettings(
                args.max_new_tokens,
                args.num_beams,
                args.do_sample,
                args.temperature,
                args.top_p,
                args.max_caption_tokens or None,
            ),
            batch_size=args.batch_size,
            sidecar=args.sidecar,
            chunk_size=args.chunk_size,
            rank=args.rank,
            world_size=args.world_size,
            resume=args.resume,
            seed=args.seed,
            progress=not args.no_progress,
        )
        summary = caption(
            args.model,
            args.input,
            args.output,
            config,
            device=args.device,
            dtype=args.dtype,
            prompt_style=args.prompt_style,
            model_name=args.model_name,
        )
    except (ValueError, FileNotFoundError) as err:
        raise CommandError(str(err)) from err
    brief = {
        k: summary[k]
        for k in (
            "units",
            "samples",
            "captioned",
            "skipped",
            "failed",
            "captions_added",
            "failed_reasons",
            "images_per_s",
        )
    }
    print(json.dumps(brief, indent=2))
    print(
        f"summary: {os.path.join(args.output, f'summary-rank{args.rank}.json')}"
        + (" (job complete: summary.json)" if summary.get("job_complete") else ""),
        file=sys.stderr,
    )
    if summary["unreadable_units"]:  # not done: a scheduler must see that the job needs another --resume run
        print(
            f"{len(summary['unreadable_units'])} unit(s) could not be read; rerun with --resume",
            file=sys.stderr,
        )
        return 1
    return 0
