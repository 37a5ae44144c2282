"""`open-tips train`: TIPS pretraining or continued pretraining (see docs/training.md).

A run directory belongs to one run: `train` into one that holds a run refuses unless `--resume` (continue it
with its saved config.yaml, KEY=VALUE overrides applied on top and printed) or `--overwrite` (delete its
outputs, start over). SIGINT / SIGTERM stop after the current step with a checkpoint saved and the resume
command printed; the exit status is then 128 + the signal number (130 / 143), so scripts see the run did not
finish. Everything is checked before the run directory is touched; a start that fails before its first step
leaves nothing behind. Under torchrun only rank 0 prints.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from open_tips.commands import CommandError, check_device


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a TIPS model (default: the tiny preset on the built-in dataset, on CPU)",
        description="Train a TIPS-style image-text encoder. Config = preset, then --config YAML, then "
        "KEY=VALUE overrides (e.g. optim.lr=5e-4 loss.mim=false), which may come anywhere on the line. "
        "With --resume the run's saved config.yaml replaces the preset and YAML. Launch with torchrun for "
        "several processes.",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument(
        "--preset",
        default=None,
        help="named preset: tiny, tiny-tipsv2, small, b14, b14-tipsv2, finetune (YAML files in "
        "open_tips/train/presets/)",
    )
    parser.add_argument("--config", dest="config_file", default=None, help="YAML file with config values")
    parser.add_argument("--output-dir", default=None, help="run directory (train.output_dir)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its newest complete checkpoint, with its saved "
        "config.yaml (KEY=VALUE overrides on top)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a run directory that already holds a run (deletes its checkpoints, metrics, "
        "logs and exports)",
    )
    parser.add_argument("--init-from", default=None, help="start from a released or trained checkpoint")
    parser.add_argument("--steps", type=int, default=None, help="total optimisation steps (train.steps)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (train.device; default auto)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)


def _is_main_rank() -> bool:
    # torchrun sets RANK before the process starts; the process group does not exist yet here
    return int(os.environ.get("RANK", "0")) == 0


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key != "caption_weights":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_error(err: Exception, source: str | None) -> CommandError:
    """One line for a config mistake; an unknown key gets the closest known ones."""
    # deferred: torch loads once the command runs, not for `open-tips train --help`
    from open_tips.train.config import TrainConfig

    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, FileNotFoundError):
        return CommandError(f"--config {source}: no such file")
    unknown = re.search(r"unknown config key '([^']+)'", text)
    if unknown:
        keys = list(_flatten(TrainConfig().to_dict()))
        close = difflib.get_close_matches(unknown.group(1), keys, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return CommandError(f"{text}{hint} (`open-tips train --print-config` shows every key)")
    return CommandError(text)


def _load(preset: str | None, yaml_path: str | Path | None, overrides: list[str]):
    # deferred: torch loads once the command runs, not for `open-tips train --help`
    from open_tips.train.config import load_config

    try:
        return load_config(preset, yaml_path, overrides)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        raise _config_error(err, None if yaml_path is None else str(yaml_path)) from err
    except IsADirectoryError as err:
        raise CommandError(f"--config {yaml_path}: is a directory, not a YAML file") from err


def _check_inputs(config, args: argparse.Namespace) -> None:
    """What would otherwise fail after the run directory was written to."""
    # deferred: torch loads once the command runs, not for `open-tips train --help`
    from open_tips.data.tokenizer import Tokenizer
    from open_tips.formats.hub import looks_like_hub_id

    check_device(config.train.device, "--device" if args.device else "train.device")
    init_from = config.model.init_from
    if init_from and not Path(init_from).exists() and not looks_like_hub_id(init_from):
        flag = "--init-from" if args.init_from else "model.init_from"
        raise CommandError(
            f"{flag} {init_from}: no such file or directory (a run directory, .pt checkpoint, *_vision.npz "
            "or HF-format directory)"
        )
    if config.data.tokenizer:
        try:
            Tokenizer(config.data.tokenizer)
        except (FileNotFoundError, ValueError) as err:
            raise CommandError(f"data.tokenizer: {err}") from err


def _resume_config(run_dir: Path, args: argparse.Namespace, overrides: list[str]):
    # deferred: torch loads once the command runs, not for `open-tips train --help`
    from open_tips.train.checkpoint import latest_checkpoint

    if args.overwrite:
        raise CommandError("--resume and --overwrite exclude each other")
    if args.preset or args.config_file:
        raise CommandError(
            "--resume continues with the run's saved config.yaml; give changes as KEY=VALUE overrides "
            "instead of --preset / --config"
        )
    found = latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise CommandError(
            f"{run_dir}: no checkpoint to resume from (nothing complete in {run_dir / 'checkpoints'}); "
            "run without --resume to start a new run there"
        )
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise CommandError(f"{saved_path}: missing; the run's config is needed to resume it")
    saved = _load(None, saved_path, [])
    config = _load(None, saved_path, overrides)
    config.train.output_dir = str(run_dir)  # where the run is now, should it have been moved
    if _is_main_rank():
        before, after = _flatten(saved.to_dict()), _flatten(config.to_dict())
        changed = [
            f"{key}: {before.get(key)!r} -> {after[key]!r}" for key in after if before.get(key) != after[key]
        ]
        step = int(found.stem.split("_")[1])
        print(
            f"resuming {run_dir} from {found.name} (step {step}) with its saved config.yaml; "
            + (f"overrides: {', '.join(changed)}" if changed else "no overrides"),
            file=sys.stderr,
        )
    return config


def _user_files(run_dir: Path, config) -> set[Path]:
    """Inputs the config reads from inside the run directory (a tokenizer put there): never deleted."""
    paths = {config.data.tokenizer, config.model.init_from}
    return {Path(p).resolve() for p in paths if p and Path(p).resolve().parent == run_dir.resolve()}


def _remove(run_dir: Path, names: list[str], keep: set[Path]) -> list[str]:
    removed = []
    for name in names:
        path = run_dir / name
        if path.resolve() in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        removed.append(name)
    return removed


def _refuse_existing_run(run_dir: Path, config, overwrite: bool) -> None:
    # deferred: torch loads once the command runs, not for `open-tips train --help`
    from open_tips.train.checkpoint import run_outputs

    found = run_outputs(run_dir)
    if not found:
        return
    if not overwrite:
        raise CommandError(
            f"{run_dir} already holds a run ({', '.join(found)}); pass --resume to continue it or "
            "--overwrite to start over (deletes its checkpoints, metrics, logs and exports)"
        )
    if _is_main_rank():
        names = run_outputs(run_dir, started_only=False)
        removed = _remove(run_dir, names, _user_files(run_dir, config))
        print(f"--overwrite: removed {', '.join(removed)} from {run_dir}", file=sys.stderr)


def _remove_failed_start(run_dir: Path, before: list[str] | None, config) -> None:
    """After a start that failed before its first step: remove what it wrote (config, tokenizer, empty
    folders) and nothing that was there before, so that the corrected command runs as if the first had not
    happened."""
    # deferred: torch loads once the command runs, not for `open-tips train --help`
    from open_tips.train.checkpoint import list_checkpoints, run_outputs

    if not run_dir.is_dir() or (run_dir / "metrics.jsonl").exists():
        return
    if list_checkpoints(run_dir / "checkpoints"):
        return
    new = [name for name in run_outputs(run_dir, started_only=False) if name not in (before or [])]
    _remove(run_dir, new, _user_files(run_dir, config))
    if before is None:  # the directory is this start's own
        try:
            run_dir.rmdir()
        except OSError:  # something else was put there meanwhile
            pass


def run(args: argparse.Namespace) -> int:
    # deferred: torch loads once the command runs, not for `open-tips train --help`
    from open_tips.train.interrupt import EXIT_CODES, stop_signals_interrupt

    overrides = list(args.overrides)
    for flag, key in (
        (args.output_dir, "train.output_dir"),
        (args.init_from, "model.init_from"),
        (args.steps, "train.steps"),
        (args.device, "train.device"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = _load(args.preset, args.config_file, overrides)
    run_dir = Path(config.train.output_dir)
    if args.resume:
        config = _resume_config(run_dir, args, overrides)
        run_dir = Path(config.train.output_dir)
    if args.print_config:
        print(config.to_yaml())
        return 0
    _check_inputs(config, args)
    if not args.resume:
        _refuse_existing_run(run_dir, config, args.overwrite)

    from open_tips.train.loop import train

    main_rank = _is_main_rank()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if main_rank:
        print(config.to_yaml())
    from open_tips.train.checkpoint import run_outputs

    before = run_outputs(run_dir, started_only=False) if run_dir.exists() else None
    try:
        with stop_signals_interrupt():  # until the loop takes the signals over: stop the start-up cleanly
            summary = train(config, resume=args.resume)
    except BaseException:
        if main_rank and not args.resume:
            _remove_failed_start(run_dir, before, config)
        raise
    if main_rank:
        print(json.dumps(summary, indent=2, default=str))
    stopped = summary.get("interrupted")
    if stopped:
        if main_rank:
            command = f"open-tips train --resume --output-dir {shlex.quote(str(run_dir))}"
            launcher = (
                " (under torchrun, with the same launcher options)" if "WORLD_SIZE" in os.environ else ""
            )
            print(
                f"stopped by {stopped} at step {summary['steps']} of {config.train.steps}; checkpoint "
                f"{summary['checkpoint']}\nresume with: {command}{launcher}",
                file=sys.stderr,
            )
        return EXIT_CODES.get(stopped, 1)
    return 0
