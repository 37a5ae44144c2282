"""`open-tips convert`: official .npz <-> HF-format directory, verified by reloading."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert between the official npz and the HF layout")
    parser.add_argument("--checkpoint", required=True, help="source: *_vision.npz, HF directory or run")
    parser.add_argument("--output", required=True,
                        help="HF directory (--to hf) or npz stem, e.g. out/tips_b14 -> out/tips_b14_vision.npz")
    parser.add_argument("--to", choices=["hf", "npz"], default=None, help="default: the other format")
    parser.add_argument("--config", default=None)
    parser.add_argument("--tokenizer", default=None)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import open_tips

    source = Path(args.checkpoint)
    target = args.to or ("npz" if source.is_dir() else "hf")
    model = open_tips.load_pretrained(source, config=args.config, tokenizer=args.tokenizer)
    if target == "hf":
        model.save_pretrained(args.output)
        reloaded = open_tips.load_pretrained(args.output, config=args.config)
        written = [args.output]
    else:
        written = model.save_npz(args.output)
        if model.tokenizer is not None:  # load_pretrained finds tokenizer.model beside the npz files
            import shutil

            tokenizer_path = Path(written[0]).parent / "tokenizer.model"
            if not tokenizer_path.exists():
                shutil.copyfile(model.tokenizer.model_path, tokenizer_path)
            written.append(str(tokenizer_path))
        reloaded = open_tips.load_pretrained(written[0], config=args.config or model.cfg)
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 2 * model.cfg.vision.patch_size * 2, 3 * model.cfg.vision.patch_size * 2)
    with torch.no_grad():
        a, b = model.encode_image(pixels), reloaded.encode_image(pixels)
        error = float((a.patch_tokens - b.patch_tokens).norm() / a.patch_tokens.norm())
        if model.text is not None:
            ids = torch.randint(1, model.cfg.text.vocab_size, (2, 8))
            padding = torch.zeros_like(ids, dtype=torch.bool)
            ta, tb = model.encode_text(ids, padding), reloaded.encode_text(ids, padding)
            error = max(error, float((ta - tb).norm() / ta.norm()))
    print(f"wrote {', '.join(map(str, written))}; max relative error after reload: {error:.2e}")
    return 0 if error < 1e-5 else 1
