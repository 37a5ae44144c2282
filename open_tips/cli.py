"""The `open-tips` command line.

Each sub-command lives in its own module under `open_tips.commands`; a module takes part by
defining `register(subparsers)`, which adds its parser and sets `func` (called with the parsed
arguments, returning an exit code). Discovery keeps this file free of per-command edits.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from open_tips import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="open-tips",
        description="TIPS / TIPSv2 image-text encoders: inference, training, captioning, evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
