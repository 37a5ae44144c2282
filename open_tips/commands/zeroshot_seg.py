"""`open-tips zeroshot-seg`: zero-shot semantic segmentation (MaskCLIP value trick, official protocol)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from open_tips.commands._common import add_model_args, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("zeroshot-seg", help="zero-shot segmentation: label map + overlay PNGs")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--classes", default=None, help="comma-separated class names")
    parser.add_argument("--classes-file", default=None)
    parser.add_argument("--templates", default="default")
    parser.add_argument("--mode", default="whole", choices=["whole", "slide"],
                        help="whole image, or sliding 448 windows with stride 336 (short side 448)")
    parser.add_argument("--window", type=int, default=448)
    parser.add_argument("--stride", type=int, default=336)
    parser.add_argument("--output-dir", required=True)
    add_model_args(parser, batch_size=1)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from open_tips.data.decode import SkipSample
    from open_tips.inference.dense import overlay_picture, segmentation_logits, sliding_window_logits
    from open_tips.inference.images import list_images, load_image
    from open_tips.inference.zeroshot import class_embeddings, load_class_names, load_templates

    model, device, image_size = load_model(args)
    names = load_class_names(args.classes, args.classes_file)
    classes = class_embeddings(model, names, load_templates(args.templates))
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.json").write_text(json.dumps(names, indent=2))
    slide = args.mode == "slide"
    for path in list_images(args.inputs):
        try:
            # sliding windows: short side at the window size, aspect kept; whole: the model's square size
            pixels, image = load_image(path, args.window if slide else image_size, keep_aspect=slide or args.keep_aspect)
        except (SkipSample, OSError) as err:
            print(f"skipping {path}: {err}")
            continue
        pixels = pixels[None].to(device)
        with torch.no_grad():
            logits = (sliding_window_logits(model, pixels, classes, args.window, args.stride) if slide
                      else segmentation_logits(model, pixels, classes))
        labels = logits[0].argmax(dim=0).cpu().numpy().astype(np.uint8 if len(names) < 256 else np.uint16)
        Image.fromarray(labels).save(out_dir / f"{path.stem}_labels.png")
        overlay_picture(image, labels, names).save(out_dir / f"{path.stem}_overlay.png")
        print(f"{path} -> {out_dir / (path.stem + '_overlay.png')}")
    return 0
