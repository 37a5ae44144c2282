"""Arguments and model loading shared by the inference commands."""

from __future__ import annotations

import argparse

import torch


def add_model_args(parser: argparse.ArgumentParser, batch_size: int = 16) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="official *_vision.npz, HF-format directory, or an open_tips run/checkpoint")
    parser.add_argument("--config", default=None, help="registry name overriding the inferred architecture")
    parser.add_argument("--tokenizer", default=None, help="SentencePiece tokenizer.model (default: beside the checkpoint)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--image-size", type=int, default=None, help="side in pixels (default: the model's)")
    parser.add_argument("--keep-aspect", action="store_true", help="resize the short side, keep the aspect ratio")
    parser.add_argument("--batch-size", type=int, default=batch_size)


def load_model(args: argparse.Namespace):
    import open_tips

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = open_tips.load_pretrained(args.checkpoint, config=args.config, tokenizer=args.tokenizer, device=device)
    image_size = args.image_size or model.cfg.image_size
    return model, torch.device(device), image_size
