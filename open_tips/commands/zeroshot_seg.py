"""`open-tips zeroshot-seg`: zero-shot semantic segmentation (MaskCLIP value trick, official notebook protocol)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from open_tips.commands.zeroshot import add_class_args
from open_tips.inference.options import (
    add_model_args,
    fail,
    input_images,
    load_model,
    output_stem,
    positive_int,
    report_skipped,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zeroshot-seg",
        help="zero-shot segmentation: label map + overlay PNGs",
        description="The official TIPS notebook protocol: short side resized to --image-size (bicubic), last "
        "block on the value path (MaskCLIP), class text = mean of the normalised embeddings of the "
        "9 templates, cosine per patch, bilinear upsampling to the original image size, argmax. "
        "Writes <name>_labels.png (pixel value = class index), <name>_labels.json (the class "
        "list) and <name>_overlay.png (image | coloured labels, with a legend).",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    add_class_args(parser)
    parser.add_argument(
        "--mode",
        default="whole",
        choices=["whole", "slide"],
        help="whole image at once, or sliding windows whose probabilities are averaged",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=None,
        help="slide: window side in pixels (default: --image-size, 448 for the released models)",
    )
    parser.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="slide: window stride (default: 3/4 of the window, 336 for 448)",
    )
    parser.add_argument("--output-dir", default=None, help="where to write (default: beside each image)")
    add_model_args(parser, batch_size=8, keep_aspect=True, workers=False)  # batch = windows
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the model stack loads once the command runs, not for `open-tips zeroshot-seg --help`
    from open_tips.formats.common import atomic_write
    from open_tips.inference.dense import label_image, overlay_picture, segment
    from open_tips.inference.images import LOAD_ERRORS, load_image, load_image_short_side
    from open_tips.inference.zeroshot import class_embeddings, load_class_names, load_templates

    try:
        names = load_class_names(args.classes, args.classes_file)
        templates = load_templates(args.templates)
    except (ValueError, OSError) as err:
        fail(str(err))
    paths = input_images(args.inputs)
    model, device, image_size = load_model(args, needs_text=True)
    window = args.window or image_size
    stride = args.stride or max(1, window * 3 // 4)
    classes = class_embeddings(model, names, templates).float()
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    used: set[Path] = set()
    for path in paths:
        try:
            if args.keep_aspect:  # the notebook's ShortSideResize; patch alignment happens per window
                pixels, image = load_image_short_side(path, image_size)
            else:
                pixels, image = load_image(path, image_size, keep_aspect=False, patch=model.vision.patch_size)
        except LOAD_ERRORS as err:
            print(f"skipping {path}: {err}")
            skipped.append(str(path))
            continue
        with torch.inference_mode():
            labels = (
                segment(
                    model,
                    pixels[None].to(device),
                    classes.to(device),
                    args.mode,
                    size=(image.height, image.width),
                    window=window,
                    stride=stride,
                    batch_size=args.batch_size,
                )
                .cpu()
                .numpy()
            )
        stem = output_stem(path, args.output_dir, used)
        label_path, overlay_path = Path(f"{stem}_labels.png"), Path(f"{stem}_overlay.png")
        picture = label_image(labels, len(names))
        # format given explicitly: the temporary file name does not end in .png
        atomic_write(label_path, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        meta = {
            "image": str(path),
            "classes": names,
            "mode": args.mode,
            "templates": templates,
            "input_size": list(pixels.shape[-2:]),
            "size": [image.height, image.width],
        }
        Path(f"{stem}_labels.json").write_text(json.dumps(meta, indent=2) + "\n")
        overlay_picture(image, labels, names).save(overlay_path)
        print(f"{path} -> {label_path}, {overlay_path}")
    report_skipped(skipped)
    return 0
