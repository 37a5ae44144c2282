"""`open-tips zeroshot`: rank class names for images with prompt-averaged text embeddings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from open_tips.commands._common import add_model_args, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("zeroshot", help="zero-shot classification of images")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--classes", default=None, help="comma-separated class names")
    parser.add_argument("--classes-file", default=None, help="one class name per line")
    parser.add_argument("--templates", default="default", help="default (TIPS 9), simple, none, or a file")
    parser.add_argument("--cls", default="web", choices=["web", "synthetic", "mean"], help="which CLS embedding")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--output", default=None, help="write results as JSON")
    add_model_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from open_tips.inference.images import batched_images, list_images
    from open_tips.inference.zeroshot import (
        class_embeddings,
        image_embedding,
        load_class_names,
        load_templates,
    )

    model, device, image_size = load_model(args)
    names = load_class_names(args.classes, args.classes_file)
    classes = class_embeddings(model, names, load_templates(args.templates))
    temperature = float(model.temperature.detach())
    skipped: list[str] = []
    results = []
    with torch.no_grad():
        for paths, pixels in batched_images(list_images(args.inputs), image_size, args.batch_size,
                                            args.keep_aspect, skipped):
            out = model.encode_image(pixels.to(device))
            images = image_embedding(out.cls_web, out.cls_synthetic, args.cls)
            probs = (images @ classes.T / temperature).softmax(dim=-1).cpu()
            for path, row in zip(paths, probs):
                top = torch.topk(row, min(args.top_k, len(names)))
                ranked = [{"label": names[i], "probability": float(p)} for p, i in zip(top.values, top.indices)]
                results.append({"image": str(path), "ranked": ranked})
                print(f"{path}: " + ", ".join(f"{r['label']} {r['probability']:.3f}" for r in ranked))
    if skipped:
        print(f"skipped {len(skipped)} unreadable images: {skipped}")
    if args.output:
        Path(args.output).write_text(json.dumps({"classes": names, "cls": args.cls, "results": results,
                                                 "skipped": skipped}, indent=2))
    return 0
