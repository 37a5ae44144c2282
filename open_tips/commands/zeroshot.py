"""`open-tips zeroshot`: rank class names for images with prompt-averaged text embeddings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from open_tips.inference.options import (
    add_model_args,
    fail,
    input_images,
    load_model,
    precision_metadata,
    report_skipped,
)


def add_class_args(parser: argparse.ArgumentParser) -> None:
    classes = parser.add_mutually_exclusive_group(required=True)
    classes.add_argument("--classes", default=None, help='comma-separated class names, e.g. "cat,dog,car"')
    classes.add_argument("--classes-file", default=None, help="a file with one class name per line")
    parser.add_argument(
        "--templates",
        default="default",
        help="prompt templates: default (the 9 of the TIPS notebook), simple ('a photo of a {}.'), "
        "none ('{}'), or a file with one template per line containing {}",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zeroshot",
        help="zero-shot classification of images",
        description="Class embedding = mean of the L2-normalised text embeddings over the prompt templates, "
        "renormalised; probabilities = softmax(cosine / model temperature).",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    add_class_args(parser)
    parser.add_argument(
        "--cls",
        default="web",
        choices=["web", "synthetic", "mean"],
        help="image embedding: cls_web, cls_synthetic, or the mean of both normalised",
    )
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--output", default=None, help="also write the results as JSON")
    add_model_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the model stack loads once the command runs, not for `open-tips zeroshot --help`
    from open_tips.formats.common import atomic_write
    from open_tips.inference.images import batched_images
    from open_tips.inference.zeroshot import (
        class_embeddings,
        class_probabilities,
        image_embedding,
        load_class_names,
        load_templates,
    )

    try:
        names = load_class_names(args.classes, args.classes_file)
        templates = load_templates(args.templates)
    except (ValueError, OSError) as err:
        fail(str(err))
    paths = input_images(args.inputs)
    model, device, image_size = load_model(args, needs_text=True)
    classes = class_embeddings(model, names, templates)
    temperature = float(model.temperature.detach())
    top_k = max(1, min(args.top_k, len(names)))
    skipped: list[str] = []
    results = []
    batches = batched_images(
        paths, image_size, args.batch_size, args.keep_aspect, skipped, model.vision.patch_size, args.workers
    )
    with torch.inference_mode():
        for batch_paths, pixels in batches:
            out = model.encode_image(pixels.to(device))
            images = image_embedding(out.cls_web, out.cls_synthetic, args.cls)
            probs = class_probabilities(images, classes, temperature).cpu()
            for path, row in zip(batch_paths, probs):
                top = torch.topk(row, top_k)  # sorted, highest first
                ranked = [
                    {"label": names[i], "probability": float(p)} for p, i in zip(top.values, top.indices)
                ]
                results.append({"image": str(path), "ranked": ranked})
                print(f"{path}: " + ", ".join(f"{r['label']} {r['probability']:.3f}" for r in ranked))
    report_skipped(skipped)
    if args.output:
        payload = {
            "classes": names,
            "templates": templates,
            "cls": args.cls,
            "temperature": temperature,
            **precision_metadata(args),
            "results": results,
            "skipped": skipped,
        }
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n"))
    return 0
