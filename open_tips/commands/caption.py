"""`open-tips caption`: synthetic captions with a local HF image-to-text model (see docs/captions.md)."""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "caption", help="add synthetic captions to shards or image folders with a local captioning model",
        description="Runs an HF image-text-to-text model (PaliGemma by default) from a local directory; "
                    "resumable and split across processes (torchrun or --rank/--world-size).")
    parser.add_argument("--model", required=True, help="local model directory (config + weights + processor)")
    parser.add_argument("--input", nargs="+", required=True, help="tar shards (brace patterns, globs, pipe:) or folders")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--template", nargs="+", default=["detailed"], help="detailed, short, rewrite, or custom names")
    parser.add_argument("--prompt", nargs="*", default=None, metavar="NAME=PROMPT", help="custom templates")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-caption-tokens", type=int, default=64)
    parser.add_argument("--sidecar", action="store_true", help="write <unit>.jsonl files instead of new shards")
    parser.add_argument("--chunk-size", type=int, default=256, help="images per unit for folder input")
    parser.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from open_tips.captions.pipeline import DecodeSettings, run_pipeline
    from open_tips.captions.prompts import parse_templates

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0 <= args.rank < args.world_size:
        raise SystemExit(f"--rank {args.rank} must lie in [0, --world-size {args.world_size})")
    templates = parse_templates(args.template, args.prompt)
    settings = DecodeSettings(args.max_new_tokens, args.num_beams, args.do_sample, args.temperature, args.top_p,
                              args.max_caption_tokens)
    summary = run_pipeline(args.model, args.input, args.output, templates, settings, args.batch_size, args.rank,
                           args.world_size, args.device, args.dtype, args.sidecar, args.chunk_size)
    print(json.dumps(summary, indent=2))
    return 0
