"""Command-line options and model loading shared by the inference commands (embed, zeroshot, zeroshot-seg,
pca, convert)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import torch


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_model_args(
    parser: argparse.ArgumentParser,
    batch_size: int = 16,
    keep_aspect: bool = False,
    images: bool = True,
    workers: bool = True,
) -> None:
    """The options every inference command shares. ``keep_aspect`` is the command's default resize
    (zeroshot-seg keeps the aspect ratio, as the official notebook does); ``images`` adds the options about
    reading image files (--keep-aspect, and --workers with ``workers``), which convert does not need."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--checkpoint",
        required=True,
        help="official *_vision.npz (its _text.npz is found beside it), HF-format directory, a Hugging "
        "Face hub id org/name (local cache first; downloaded unless HF_HUB_OFFLINE=1), or an open_tips run "
        "directory / .pt checkpoint",
    )
    group.add_argument("--revision", default=None, help="hub ids: branch, tag or commit (default main)")
    group.add_argument(
        "--config",
        default=None,
        help="registry name overriding the architecture inferred from the weights (see "
        "open_tips.list_configs())",
    )
    group.add_argument(
        "--tokenizer",
        default=None,
        help="SentencePiece tokenizer.model (default: the one beside the checkpoint)",
    )
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    group.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="pixels; sides are rounded to multiples of the patch size (default: the model's "
        "training resolution)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help=f"inputs per forward pass (default {batch_size})",
    )
    if images:
        group.add_argument(
            "--keep-aspect",
            action=argparse.BooleanOptionalAction,
            default=keep_aspect,
            help="resize the short side to --image-size and keep the aspect ratio, instead of "
            f"resizing to a square (default: {'on' if keep_aspect else 'off'})",
        )
    if images and workers:
        group.add_argument(
            "--workers",
            type=int,
            default=0,
            help="background processes decoding images (default 0: decode in the main process)",
        )


def resolve_device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_checkpoint(
    path,
    config,
    tokenizer=None,
    device: torch.device | str | None = None,
    revision: str | None = None,
    vision_only: bool = False,
):
    """``load_pretrained``, with a one-line error instead of a traceback for a missing or bad checkpoint."""
    import open_tips

    try:
        return open_tips.load_pretrained(
            path,
            config=config,
            tokenizer=tokenizer,
            device=device,
            revision=revision,
            vision_only=vision_only,
        )
    except (FileNotFoundError, KeyError, ValueError, open_tips.CheckpointError) as err:
        fail(str(err).strip("'\""))


def input_images(inputs: list[str]) -> list[Path]:
    """The image files named or found in folders, with a one-line error when there are none."""
    from open_tips.inference.images import list_images

    try:
        return list_images(inputs)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))


def load_model(args: argparse.Namespace, needs_text: bool = False):
    """(model in eval mode on the device, device, image size) from the common arguments."""
    device = resolve_device(args.device)
    model = load_checkpoint(
        args.checkpoint,
        args.config,
        args.tokenizer,
        device,
        revision=getattr(args, "revision", None),
        vision_only=not needs_text,
    )
    if needs_text:
        if model.text is None:
            fail(f"{args.checkpoint}: no text tower was loaded (is the *_text.npz beside the *_vision.npz?)")
        if model.tokenizer is None:
            fail(f"{args.checkpoint}: no tokenizer.model beside the checkpoint; pass --tokenizer")
    image_size = args.image_size or model.cfg.image_size
    return model, device, image_size


def fail(message: str) -> NoReturn:
    """Stops the command with a one-line error (exit status 2, as argparse uses for bad usage)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def report_skipped(skipped: list[str]) -> None:
    if skipped:
        print(
            f"skipped {len(skipped)} unreadable image{'s' if len(skipped) > 1 else ''}: {', '.join(skipped)}"
        )


def output_stem(path: Path, output_dir: str | None, used: set[Path]) -> Path:
    """``<dir>/<image stem>``, made unique when two inputs share a stem in one output folder."""
    folder = Path(output_dir) if output_dir else path.parent
    stem, counter = folder / path.stem, 1
    while stem in used:
        counter += 1
        stem = folder / f"{path.stem}_{counter}"
    used.add(stem)
    return stem
