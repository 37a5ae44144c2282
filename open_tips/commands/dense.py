"""`open-tips dense`: depth, surface normals and ADE20K segmentation from the released DPT decoders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import open_tips
from open_tips.inference.options import add_model_args, fail, input_images, output_stem, report_skipped


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dense",
        help="depth / normals / segmentation maps from DPT decoders",
        description="Runs DPT decoders (official Scenic zips tips_v2_*_{depth,normals,segmentation}_dpt.zip, "
        "HF Tipsv2Dpt directories, or open_tips .safetensors heads) on a TIPS tower. Per image and task: "
        "<name>_depth.npy (float32 metres) + <name>_depth.png (16-bit, millimetres); <name>_normals.png "
        "(RGB = (n + 1) / 2 * 255); <name>_labels.png (palette PNG of class indices) + <name>_overlay.png; "
        "and <name>_dense.png with every output as a labelled panel. Outputs are at the image's own size.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument(
        "--heads",
        nargs="+",
        default=None,
        help="decoder files or folders (default: the --checkpoint, when it is an HF Tipsv2Dpt directory)",
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated subset of depth,normals,seg (default: every decoder given)",
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(parser, batch_size=4)
    parser.set_defaults(func=run)


def load_backbone(args: argparse.Namespace):
    """(model, device, image size): the tower from --checkpoint, which may also be an HF Tipsv2Dpt
    directory (its ``vision_encoder.`` weights)."""
    # deferred: the model stack loads once the command runs, not for `open-tips dense --help`
    from open_tips.formats.dpt import is_hf_dpt_dir
    from open_tips.inference.options import load_model, resolve_device

    if not is_hf_dpt_dir(args.checkpoint):
        return load_model(args)
    from open_tips.formats.common import infer_vision_config, load_strict
    from open_tips.formats.dpt import read_hf_dpt_dir
    from open_tips.models import TIPSConfig, TIPSModel, get_config

    device = resolve_device(args.device)
    try:
        _, vision_state, config = read_hf_dpt_dir(args.checkpoint)
        if not vision_state:
            fail(f"{args.checkpoint}: no vision_encoder weights in this Tipsv2Dpt directory")
        heads = (config.get("backbone_config") or {}).get("num_attention_heads")
        vision_cfg = (
            get_config(args.config).vision
            if args.config
            else infer_vision_config(vision_state, args.checkpoint, heads)
        )
        model = TIPSModel(
            TIPSConfig(vision=vision_cfg, text=None, image_size=448, name=Path(args.checkpoint).name)
        )
        load_strict(model.vision, vision_state, f"{args.checkpoint} (vision_encoder)")
    except (FileNotFoundError, KeyError, open_tips.CheckpointError) as err:
        fail(str(err).strip("'\""))
    model.eval().to(device)
    return model, device, args.image_size or model.cfg.image_size


def load_heads(paths: list[str], tasks: list[str] | None, model):
    # deferred: the model stack loads once the command runs, not for `open-tips dense --help`
    from open_tips.formats.dpt import load_dense_heads
    from open_tips.inference.dense_heads import check_backbone

    try:
        decoders = load_dense_heads(paths, tasks=tasks, backbone_depth=model.vision.cfg.depth)
        check_backbone(model, decoders, ", ".join(paths))
    except (FileNotFoundError, ValueError, open_tips.CheckpointError) as err:
        fail(str(err).strip("'\""))
    if not decoders:
        fail(f"no decoders found in {', '.join(paths)}")
    return decoders


def parse_tasks(text: str | None) -> list[str] | None:
    # deferred: the model stack loads once the command runs, not for `open-tips dense --help`
    from open_tips.models.dpt import canonical_task

    if not text:
        return None
    try:
        return [canonical_task(t.strip()) for t in text.split(",") if t.strip()]
    except ValueError as err:
        fail(str(err))


def run(args: argparse.Namespace) -> int:
    # deferred: the model stack loads once the command runs, not for `open-tips dense --help`
    import torch
    from tqdm import tqdm

    from open_tips.inference.dense import label_image
    from open_tips.inference.dense_heads import (
        depth_png,
        labelled_overlay,
        normals_rgb,
        predict_dense,
        summary_picture,
    )
    from open_tips.inference.images import batched_images, read_image

    tasks = parse_tasks(args.tasks)
    paths = input_images(args.inputs)
    model, device, image_size = load_backbone(args)
    heads = args.heads or [args.checkpoint]
    decoders = load_heads(heads, tasks, model)
    for decoder in decoders.values():
        decoder.to(device)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    used: set[Path] = set()
    seg_names = decoders["segmentation"].cfg.class_names if "segmentation" in decoders else None
    if "segmentation" in decoders and seg_names is None:
        seg_names = [f"class {i}" for i in range(decoders["segmentation"].cfg.num_classes)]
    batches = batched_images(
        paths, image_size, args.batch_size, args.keep_aspect, skipped, model.vision.patch_size, args.workers
    )
    bar = tqdm(total=len(paths), unit="image", desc="dense", disable=args.no_progress)
    for batch_paths, pixels in batches:
        pixels = pixels.to(device)
        for path, image_pixels in zip(batch_paths, pixels):
            image = read_image(path)
            size = (image.height, image.width)
            with torch.inference_mode():
                result = predict_dense(model, decoders, image_pixels[None], size=size)
            stem = output_stem(path, args.output_dir, used)
            arrays: dict[str, np.ndarray] = {}
            written = []
            if "depth" in result:
                depth = result["depth"][0].cpu().numpy().astype(np.float32)
                arrays["depth"] = depth
                np.save(f"{stem}_depth.npy", depth)
                depth_png(depth).save(f"{stem}_depth.png")
                written += [f"{stem}_depth.npy", f"{stem}_depth.png"]
            if "normals" in result:
                normals = result["normals"][0].cpu().numpy()
                arrays["normals"] = normals
                from PIL import Image

                Image.fromarray(normals_rgb(normals)).save(f"{stem}_normals.png")
                written.append(f"{stem}_normals.png")
            if "segmentation" in result:
                labels = result["segmentation"][0].cpu().numpy()
                arrays["segmentation"] = labels
                label_image(labels, len(seg_names)).save(f"{stem}_labels.png")
                (Path(f"{stem}_labels.json")).write_text(json.dumps({"classes": list(seg_names)}) + "\n")
                labelled_overlay(image, labels, seg_names).save(f"{stem}_overlay.png")
                written += [f"{stem}_labels.png", f"{stem}_overlay.png"]
            summary_picture(image, arrays, seg_names).save(f"{stem}_dense.png")
            written.append(f"{stem}_dense.png")
            bar.write(f"{path} -> {', '.join(Path(w).name for w in written)}")
            bar.update(1)
    bar.update(len(skipped))
    bar.close()
    report_skipped(skipped)
    return 0
