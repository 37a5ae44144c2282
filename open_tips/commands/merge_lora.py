"""`open-tips merge-lora`: fold a LoRA run's adapters into the base weights and write a plain export.

The export is what a run writes to ``final/``: an HF-format directory (config.json + model.safetensors with
the official key names, tokenizer.model) that ``open_tips.load_pretrained`` and transformers'
``Tipsv2Model.from_pretrained`` read. RUN is a run directory (its newest complete checkpoint) or one
``checkpoints/step_*.pt`` file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from open_tips.commands import CommandError

log = logging.getLogger("open_tips.merge_lora")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge-lora",
        help="merge a LoRA training run into a plain export (HF layout, loadable anywhere)",
        description="Fold the LoRA adapters of a training run (model.trainable.*=lora) into the base weights "
        "and write a plain export, the same format as the run's final/ directory.",
    )
    parser.add_argument("run", metavar="RUN", help="run directory or checkpoint file (checkpoints/step_*.pt)")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="export directory to write")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer.model to ship (default: the run's, or its init model's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DIR")
    parser.set_defaults(func=run)


def _checkpoint_file(run: Path) -> Path:
    # deferred: torch loads once the command runs, not for `open-tips merge-lora --help`
    from open_tips.train.checkpoint import latest_checkpoint

    if run.is_file():
        return run
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory or checkpoint file")
    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"{run}: no complete checkpoint in {run / 'checkpoints'}")
    return found


def _tokenizer_path(explicit: str | None, checkpoint: Path, train_config: dict) -> Path | None:
    """The run's own tokenizer (built-in data), else the configured one, else the one beside init_from."""
    # deferred: torch loads once the command runs, not for `open-tips merge-lora --help`
    from open_tips.models.tokenizer import find_tokenizer

    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"--tokenizer {explicit}: no such file")
        return path
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    candidates: list[Path] = [run_dir]
    data = train_config.get("data", {}) if isinstance(train_config, dict) else {}
    model = train_config.get("model", {}) if isinstance(train_config, dict) else {}
    if data.get("tokenizer") and Path(data["tokenizer"]).is_file():
        return Path(data["tokenizer"])
    if model.get("init_from"):
        base = Path(model["init_from"])
        candidates += [base if base.is_dir() else base.parent]
    return find_tokenizer(*candidates)


def merge_run(
    run: str | Path, output: str | Path, tokenizer: str | None = None, overwrite: bool = False
) -> dict:
    """Merges the run's (or checkpoint's) LoRA adapters and writes the export; returns a summary."""
    # deferred: torch loads once the command runs, not for `open-tips merge-lora --help`
    import torch

    from open_tips.formats.common import load_strict
    from open_tips.models.configs import TIPSConfig
    from open_tips.models.lora import merge_lora_state
    from open_tips.models.tips import TIPSModel
    from open_tips.models.tokenizer import Tokenizer

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"--output {output}: directory is not empty (use --overwrite)")
    checkpoint = _checkpoint_file(Path(run))
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for truncated / foreign files
        raise ValueError(f"{checkpoint}: unreadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise ValueError(
            f"{checkpoint}: not an open_tips training checkpoint (needs 'model' and 'model_config')"
        )
    state, merged = merge_lora_state(payload["model"])
    if merged == 0:
        log.warning("%s: no LoRA adapters found; writing the weights as they are", checkpoint)
    train_config = payload.get("train_config") or {}
    tokenizer_path = _tokenizer_path(tokenizer, checkpoint, train_config)
    if tokenizer_path is None:
        log.warning("no tokenizer.model found for %s: the export has none (pass --tokenizer)", checkpoint)
    cfg = TIPSConfig.from_dict(payload["model_config"])
    max_len = cfg.text.max_len if cfg.text is not None else 64
    model = TIPSModel(cfg, tokenizer=Tokenizer(tokenizer_path, max_len=max_len) if tokenizer_path else None)
    load_strict(model, state, str(checkpoint))
    model.save_pretrained(output)
    return {
        "checkpoint": str(checkpoint),
        "step": int(payload.get("step", -1)),
        "merged_weights": merged,
        "tokenizer": str(tokenizer_path) if tokenizer_path else None,
        "output": str(output),
    }


def run(args: argparse.Namespace) -> int:
    import json

    try:
        summary = merge_run(args.run, args.output, tokenizer=args.tokenizer, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        # user mistakes (wrong RUN, occupied --output, a foreign or damaged checkpoint; CheckpointError is a
        # ValueError): one line, exit 2, as the others
        message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        raise CommandError(message) from err
    print(json.dumps(summary, indent=2))
    return 0
