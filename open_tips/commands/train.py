"""`open-tips train`: TIPS pretraining or continued pretraining (see docs/training.md)."""

from __future__ import annotations

import argparse
import json
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a TIPS model (default: the tiny preset on the built-in dataset, on CPU)",
        description="Train a TIPS-style image-text encoder. Config = preset, then --config YAML, then "
        "KEY=VALUE overrides (e.g. optim.lr=5e-4 loss.mim=false). Launch with torchrun for "
        "several processes.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument(
        "--preset", default=None, help="named preset (tiny, tiny-tipsv2, small, b14, b14-tipsv2)"
    )
    parser.add_argument("--config", dest="config_file", default=None, help="YAML file with config values")
    parser.add_argument("--output-dir", default=None, help="run directory (train.output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--init-from", default=None, help="start from a released or trained checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="total optimisation steps (train.steps)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (train.device; default auto)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from open_tips.train.config import load_config
    from open_tips.train.loop import train

    overrides = list(args.overrides)
    for flag, key in (
        (args.output_dir, "train.output_dir"),
        (args.init_from, "model.init_from"),
        (args.steps, "train.steps"),
        (args.device, "train.device"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = load_config(args.preset, args.config_file, overrides)
    if args.print_config:
        print(config.to_yaml())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(config.to_yaml())
    summary = train(config, resume=args.resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0
