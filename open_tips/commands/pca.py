"""`open-tips pca`: the first three PCA components of patch features as an RGB picture next to the image."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from open_tips.inference.dense import pca_rgb, side_by_side
from open_tips.inference.images import batched_images
from open_tips.inference.options import add_model_args, input_images, load_model, output_stem, report_skipped


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pca",
        help="PCA picture of patch features next to each image",
        description="Per image: the first three principal components of its patch features, each min-max "
        "scaled to 0..255 as R, G, B, upsampled to the model input and saved right of the image "
        "as <name>_pca.png.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--upsample",
        default="nearest",
        choices=["nearest", "bilinear"],
        help="nearest shows the patch grid; bilinear a smooth picture",
    )
    add_model_args(parser, batch_size=8)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = input_images(args.inputs)
    model, device, image_size = load_model(args)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    used: set[Path] = set()
    batches = batched_images(
        paths, image_size, args.batch_size, args.keep_aspect, skipped, model.vision.patch_size, args.workers
    )
    for batch_paths, pixels in batches:
        with torch.inference_mode():
            patches = model.encode_image(pixels.to(device)).patch_tokens.float().cpu()
        for path, image, features in zip(batch_paths, pixels, patches):
            # the image is shown as the model saw it, so that features and pixels line up
            target = Path(f"{output_stem(path, args.output_dir, used)}_pca.png")
            side_by_side(TF.to_pil_image(image), pca_rgb(features), args.upsample).save(target)
            print(f"{path} -> {target}")
    report_skipped(skipped)
    return 0
