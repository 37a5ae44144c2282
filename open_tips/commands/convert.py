"""`open-tips convert`: official .npz <-> HF-format directory, verified by reloading the written files."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from open_tips.inference.options import add_model_args, fail, load_checkpoint, resolve_device


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert between the official npz and the HF layout",
        description="Writes the model in the other format (or the one named by --to), reloads what was written "
        "and compares both models' outputs on a random image and random token ids; exits 1 when "
        "the largest relative difference exceeds --tolerance.",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="--to hf: a directory; --to npz: a stem (out/tips_b14 -> out/tips_b14_vision.npz "
        "+ _text.npz), a *_vision.npz path, or an existing directory",
    )
    parser.add_argument(
        "--to",
        choices=["hf", "npz"],
        default=None,
        help="target format (default: npz for an HF directory, hf otherwise)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-5)
    add_model_args(parser, batch_size=1, images=False, precision=False)
    parser.set_defaults(func=run)


def npz_stem(output: Path, source: Path) -> Path:
    """Where ``save_npz`` writes: the stem of ``output``, or ``output/<source name>`` for a directory."""
    name = output.name
    for suffix in ("_vision.npz", "_text.npz", ".npz"):
        if name.endswith(suffix):
            return output.with_name(name[: -len(suffix)])
    if output.is_dir():
        base = source.name if source.is_dir() else source.name.removesuffix(".npz").removesuffix("_vision")
        return output / base
    return output


def max_relative_error(model, reloaded, image_size: int, batch_size: int) -> float:
    """Largest max|a - b| / max|a| over every output: both CLS tokens and the patch tokens of random
    non-square images (positions resized off the stored grid), pooled text, temperature."""
    generator = torch.Generator().manual_seed(0)
    patch = model.vision.patch_size
    height = max(patch, round(image_size / patch) * patch)
    pixels = torch.rand(batch_size, 3, height, height + patch, generator=generator).to(model.device)

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-12))

    with torch.inference_mode():
        a, b = model.encode_image(pixels), reloaded.encode_image(pixels)
        errors = [
            relative(getattr(a, k), getattr(b, k)) for k in ("cls_web", "cls_synthetic", "patch_tokens")
        ]
        errors.append(relative(model.temperature, reloaded.temperature))
        if model.text is not None:
            if reloaded.text is None:
                return float("inf")
            length = min(16, model.cfg.text.max_len)
            rows = 4  # captions of several lengths, so that padding is exercised
            ids = torch.randint(1, model.cfg.text.vocab_size, (rows, length), generator=generator)
            padding = torch.arange(length)[None] >= torch.randint(
                1, length + 1, (rows, 1), generator=generator
            )
            ids = ids.masked_fill(padding, 0).to(model.device)
            errors.append(
                relative(
                    model.encode_text(ids, padding.to(model.device)),
                    reloaded.encode_text(ids, padding.to(model.device)),
                )
            )
    return max(errors)


def run(args: argparse.Namespace) -> int:
    source, output = Path(args.checkpoint), Path(args.output)
    device = resolve_device(args.device)
    model = load_checkpoint(source, args.config, args.tokenizer, device, revision=args.revision)
    hf_source = (source / "config.json").is_file() or not source.exists()  # a directory or a hub id
    target = args.to or ("npz" if hf_source else "hf")
    if target == "hf":
        if model.text is None:
            fail("the HF layout (Tipsv2Model) holds both towers; this checkpoint has no text tower")
        model.save_pretrained(output)  # copies tokenizer.model along
        written = [str(output)]
        reloaded = load_checkpoint(output, args.config, device=device)
    else:
        written = model.save_npz(npz_stem(output, source))
        if model.tokenizer is not None:  # load_pretrained looks for tokenizer.model beside the npz files
            tokenizer_path = Path(written[0]).parent / "tokenizer.model"
            if not tokenizer_path.exists():
                shutil.copyfile(model.tokenizer.model_path, tokenizer_path)
                written.append(str(tokenizer_path))
        # reloaded as a user would load it: architecture from the files (an open_tips_config record is
        # written when the weights alone would give other head counts), so a loss shows as an error
        reloaded = load_checkpoint(written[0], args.config, device=device)
    error = max_relative_error(model, reloaded, args.image_size or model.cfg.image_size, args.batch_size)
    print(f"wrote {', '.join(written)}")
    print(f"reloaded and compared: max relative error {error:.2e} (tolerance {args.tolerance:.0e})")
    if model.tokenizer is not None and reloaded.tokenizer is None:
        print("warning: the tokenizer did not travel with the converted model")
    return 0 if error <= args.tolerance else 1
