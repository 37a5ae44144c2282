"""Command-line options and model loading shared by the inference commands (embed, zeroshot, zeroshot-seg,
pca, convert)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import torch

import open_tips
from open_tips.inference.images import list_images


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
    precision: bool = True,
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
    if precision:
        group.add_argument(
            "--dtype",
            choices=sorted(DTYPES),
            default="fp32",
            help="weights and activations in this type (bf16 / fp16 halve memory; on CPUs without bf16 "
            "instructions they are slower); outputs are written as float32 (default fp32)",
        )
        group.add_argument(
            "--compile",
            action="store_true",
            help="torch.compile the towers (the first batch and every new image shape take longer)",
        )
    if images and workers:
        group.add_argument(
            "--workers",
            type=int,
            default=0,
            help="background processes decoding images (default 0: decode in the main process)",
        )


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cast_input_to_weights(module: torch.nn.Module, args: tuple) -> tuple:
    weight = module.proj.weight
    pixels = args[0]
    if pixels.is_floating_point() and pixels.dtype != weight.dtype:
        return (pixels.to(weight.dtype), *args[1:])
    return args


def prepare_for_inference(model, dtype: str = "fp32", compile: bool = False, freeze: bool = True):
    """Casts the weights to ``dtype`` (float pixels are cast to it on entry to the patch embedding, so
    every caller may pass float32) and, with ``compile``, wraps the towers' entry points in torch.compile.

    ``freeze`` (with ``compile``): Inductor's freezing, i.e. the weights become constants of the compiled
    graph, so they are pre-packed once for the CPU GEMM kernels and constant-folded (measured 1.14x over
    transformers on CPU at B/14 224 px against 1.11x without; benchmarks/encode.py). Outputs stay float32
    equal up to rounding (relative difference ~1e-6). Only for a model whose weights no longer change:
    graphs compiled before a weight update would keep the old weights."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] != torch.float32:
        model.to(DTYPES[dtype])
        model.vision.patch_embed.register_forward_pre_hook(_cast_input_to_weights)
    if compile:
        vision = model.vision
        options = {"freezing": True} if freeze else None
        vision.forward_tokens = torch.compile(vision.forward_tokens, options=options)
        vision.forward_value_trick = torch.compile(vision.forward_value_trick, options=options)
        if model.text is not None:
            model.text.forward = torch.compile(model.text.forward, options=options)
    return model


def precision_metadata(args: argparse.Namespace) -> dict[str, str]:
    """``{"dtype": "bf16", "compile": "false"}``: how the outputs were computed, for the files the commands
    write (reduced-precision features differ from float32 ones by about 1e-2 relative)."""
    return {"dtype": getattr(args, "dtype", "fp32"), "compile": str(getattr(args, "compile", False)).lower()}


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
    prepare_for_inference(model, getattr(args, "dtype", "fp32"), getattr(args, "compile", False))
    image_size = args.image_size or model.cfg.image_size
    if hasattr(args, "keep_aspect"):
        patch = model.vision.patch_size
        source = "--image-size" if args.image_size else f"training resolution of {model.cfg.name}"
        if getattr(args, "keep_aspect", False):
            size = f"short side {image_size} px, sides rounded to multiples of {patch}"
        else:
            size = f"{max(patch, round(image_size / patch) * patch)} px square"
        print(f"image size: {size} ({source}); dtype {getattr(args, 'dtype', 'fp32')}")
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
