"""`open-tips pca`: the first three PCA components of patch features as an RGB picture."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from open_tips.commands._common import add_model_args, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pca", help="PCA picture of patch features next to each image")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--output-dir", required=True)
    add_model_args(parser, batch_size=1)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from open_tips.data.decode import SkipSample
    from open_tips.inference.dense import pca_rgb, side_by_side
    from open_tips.inference.images import list_images, load_image

    model, device, image_size = load_model(args)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in list_images(args.inputs):
        try:
            pixels, image = load_image(path, image_size, args.keep_aspect)
        except (SkipSample, OSError) as err:
            print(f"skipping {path}: {err}")
            continue
        with torch.no_grad():
            patches = model.encode_image(pixels[None].to(device)).patch_tokens[0].cpu()
        resized = image.resize((pixels.shape[2], pixels.shape[1]))
        side_by_side(resized, pca_rgb(patches)).save(out_dir / f"{path.stem}_pca.png")
        print(f"{path} -> {out_dir / (path.stem + '_pca.png')}")
    return 0
