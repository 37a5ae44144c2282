"""The `open-tips` command line.

Each sub-command lives in its own module under `open_tips.commands`; a module takes part by
defining `register(subparsers)`, which adds its parser and sets `func` (called with the parsed
arguments, returning an exit code). Discovery keeps this file free of per-command edits.

Only the module of the command being run is imported (the others pull in torch, seconds of start-up);
`open-tips --help` lists the commands from their module docstrings without importing them.

Errors: a command raises `open_tips.commands.CommandError` for a user mistake; `main` prints every failure
as one line (`open-tips COMMAND: error: ...`) and returns non-zero, with the traceback only under `--debug`
(or OPEN_TIPS_DEBUG=1).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path

from open_tips import __version__, commands
from open_tips.commands import CommandError, check_device

# A dotted config override (train's KEY=VALUE), accepted anywhere on the line, also after options.
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
# Shown in full only under --debug; beyond this a message (e.g. a list of every key) is cut.
_MAX_MESSAGE = 600


def _command_modules() -> dict[str, str]:
    """Command name -> module name: `make_shards.py` is `make-shards`."""
    return {
        info.name.replace("_", "-"): info.name
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    }


def _summary(name: str, module_name: str) -> str:
    """The help text the module's ``add_parser(name, help=...)`` gives, read from its source without importing
    it; else the first sentence of its docstring."""
    path = Path(commands.__path__[0]) / f"{module_name}.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "add_parser"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == name
        ):
            for keyword in node.keywords:
                if keyword.arg == "help" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
    doc = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
    doc = re.sub(r"^`open-tips [^`]*`:\s*", "", doc)  # docstrings start "`open-tips NAME`: ..."
    return doc.split(". ")[0].rstrip(".")


def _new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="open-tips",
        description="TIPS / TIPSv2 image-text encoders: inference, training, captioning, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"open-tips {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback on errors (also accepted after the command; or OPEN_TIPS_DEBUG=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser, subparsers


def _register(module_name: str, subparsers: argparse._SubParsersAction) -> None:
    module = importlib.import_module(f"{commands.__name__}.{module_name}")
    register = getattr(module, "register", None)
    if register is not None:
        register(subparsers)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``argv``, one in which only the command named there is registered (the
    others appear in the help with their docstring summary)."""
    modules = _command_modules()
    wanted = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    parser, subparsers = _new_parser()
    if argv is None:
        for name in sorted(modules):
            _register(modules[name], subparsers)
        return parser
    if wanted in modules:
        _register(modules[wanted], subparsers)
        if wanted in subparsers.choices:
            return parser
        return build_parser()  # a module registering another name: fall back to importing all
    for name in sorted(modules):
        subparsers.add_parser(name, help=_summary(name, modules[name]))
    return parser


def _one_line(err: BaseException) -> str:
    # KeyError's str() adds quotes around its message
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 40] + f" ... [{len(text)} characters; --debug shows all]"
    return text or type(err).__name__


def _debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """--debug is a top-level option but also taken after the command (where users type it)."""
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut] or os.environ.get("OPEN_TIPS_DEBUG", "") not in ("", "0")
    return debug, [a for a in argv[:cut] if a != "--debug"] + argv[cut:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug, argv = _debug_requested(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling a positional list at the first option: take train's KEY=VALUE from anywhere
        if isinstance(getattr(args, "overrides", None), list) and all(_OVERRIDE.match(a) for a in extra):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    prefix = f"open-tips {args.command}: error:"
    try:
        check_device(getattr(args, "device", None))  # before anything is loaded or written
        return int(args.func(args) or 0)
    except CommandError as err:
        if debug:
            raise
        print(f"{prefix} {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\nopen-tips {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure is reported as one line
        if debug:
            raise
        known = isinstance(err, (FileNotFoundError, KeyError, ValueError, OSError))
        kind = "" if known else f"{type(err).__name__}: "
        print(f"{prefix} {kind}{_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
