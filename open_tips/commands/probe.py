"""`open-tips probe fit|apply`: linear dense probes (seg, fg, depth, normals) on frozen multi-layer features,
kept in a file that records the task, classes, image size, layers and the backbone's identity.

The head is eval's linear probe (``open_tips.eval.dense_probe``: standardised features, a 1x1 convolution,
bilinear upsampling) with eval's losses: cross-entropy (ignore 255) for seg / fg, 256-bin classification
with expectation decoding for depth, cosine loss for normals. Its input is the concatenation of the patch
tokens of ``--layers`` (default: the last block, which is what ``open-tips eval`` probes), plus CLS1 with
``--with-cls``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

import open_tips
from open_tips.inference.options import add_model_args, fail, input_images, output_stem

FORMAT = "open_tips.probe"
PROBE_TASKS = ("seg", "fg", "depth", "normals")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("probe", help="fit / apply linear dense probes on frozen features")
    sub = parser.add_subparsers(dest="probe_command", metavar="ACTION")
    fit = sub.add_parser("fit", help="fit a probe on images and their targets")
    fit.add_argument("--task", required=True, choices=PROBE_TASKS)
    fit.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    fit.add_argument(
        "--targets",
        default=None,
        help="folder of same-stem targets: seg / fg label PNGs (255 = ignore; fg: non-zero = foreground), "
        "depth 16-bit PNG (mm) or .npy (m), normals RGB PNG or .npy",
    )
    fit.add_argument("--coco", default=None, help="COCO instances JSON instead of --targets (seg / fg)")
    fit.add_argument("--classes", default=None, help="comma-separated class names (seg)")
    fit.add_argument("--output", required=True, help="probe file (.safetensors)")
    fit.add_argument(
        "--head",
        choices=("linear", "dpt"),
        default="linear",
        help="linear: 1x1 convolution on standardised patch tokens (eval's probe); dpt: a DPT decoder as "
        "released (four blocks, CLS readout), trained from scratch; its file also runs in `open-tips dense`",
    )
    fit.add_argument(
        "--layers",
        default=None,
        help="comma-separated block indices (default: the last; --head dpt: four, the released ones)",
    )
    fit.add_argument(
        "--dpt-channels", type=int, default=256, help="--head dpt: fusion channels (default 256)"
    )
    fit.add_argument("--with-cls", action=argparse.BooleanOptionalAction, default=None)
    fit.add_argument("--epochs", type=int, default=30)
    fit.add_argument("--lr", type=float, default=None, help="default 5e-2 (linear), 1e-3 (dpt)")
    fit.add_argument("--val-fraction", type=float, default=0.0, help="hold out this share and report metrics")
    fit.add_argument("--cache-dir", default=None, help="cache the extracted features here")
    add_model_args(fit, batch_size=16)
    fit.set_defaults(func=run_fit)
    apply = sub.add_parser("apply", help="apply a fitted probe to images")
    apply.add_argument("inputs", nargs="+", help="image files and/or folders")
    apply.add_argument("--probe", required=True)
    apply.add_argument("--output-dir", required=True)
    add_model_args(apply, batch_size=16)
    apply.set_defaults(func=run_apply)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


# ----------------------------------------------------------------------------------------------- features


def _features(model, paths, image_size, layers, with_cls, device, cache_dir=None):
    """[N, C, h, w] float32: concatenated patch tokens of ``layers`` (+ CLS1 of the last), cached."""
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    import torch

    from open_tips.eval.features import load_image, to_pixels
    from open_tips.inference.dense_heads import backbone_identity

    key = None
    if cache_dir:
        digest = hashlib.sha256(json.dumps([backbone_identity(model), image_size, layers, with_cls]).encode())
        for path in paths:
            stat = Path(path).stat()
            digest.update(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        key = Path(cache_dir) / f"probe-features-{digest.hexdigest()[:20]}.pt"
        if key.is_file():
            return torch.load(key, weights_only=True)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(paths), 8):
            pixels = torch.stack([to_pixels(load_image(p), image_size) for p in paths[start : start + 8]])
            pixels = pixels.to(device)
            grid = model.vision.grid_size(pixels)
            tokens = model.vision.get_intermediate_layers(pixels, layers, norm=True)
            parts = [t[:, 2:].reshape(t.shape[0], *grid, -1) for t in tokens]
            if with_cls:
                parts.append(tokens[-1][:, :1, None].expand(-1, grid[0], grid[1], -1))
            chunks.append(torch.cat(parts, dim=-1).permute(0, 3, 1, 2).float().cpu())
    features = torch.cat(chunks)
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, key)
    return features


def _read_targets(args, paths, size):
    """(kept image paths, targets tensor at ``size`` x ``size``, class names or None)."""
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    import torch

    from open_tips.eval.depth import read_depth, resize_depth
    from open_tips.eval.normals import read_normals, resize_normals
    from open_tips.eval.segmentation import read_mask, resize_mask

    names = None
    if args.coco:
        if args.task not in ("seg", "fg"):
            fail("--coco gives segmentation masks: use it with --task seg or fg")
        from open_tips.eval.segmentation import rasterise_coco

        try:
            pairs, names = rasterise_coco(args.coco, Path(paths[0]).parent)
        except (OSError, ValueError, KeyError) as err:
            fail(f"{args.coco}: {err}")
        by_name = {p.name: m for p, m in pairs}
        kept = [p for p in paths if p.name in by_name]
        masks = [by_name[p.name].astype(np.int64) for p in kept]
    else:
        if not args.targets:
            fail("give --targets DIR (or --coco for seg / fg)")
        folder = Path(args.targets)
        if not folder.is_dir():
            fail(f"--targets {folder}: not a folder")
        found = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".png", ".npy")}
        kept = [p for p in paths if p.stem in found]
        masks = []
        for p in kept:
            target = found[p.stem]
            try:
                if args.task in ("seg", "fg"):
                    masks.append(read_mask(target))
                elif args.task == "depth":
                    masks.append(read_depth(target))
                else:
                    masks.append(read_normals(target))
            except (OSError, ValueError) as err:
                fail(f"{target}: unreadable target ({err})")
    if not kept:
        fail(f"no image has a target ({args.coco or args.targets})")
    if args.task == "fg":
        masks = [np.where(m == 255, 255, (m > 0).astype(np.int64)) for m in masks]
        names = ["background", "foreground"]
    if args.task in ("seg", "fg"):
        stacked = torch.stack([resize_mask(m, size) for m in masks])
    elif args.task == "depth":
        stacked = torch.stack([resize_depth(m, size) for m in masks])
    else:
        stacked = torch.stack([resize_normals(m, size) for m in masks])
    if args.task == "seg" and args.classes:
        names = [c.strip() for c in args.classes.split(",")]
    return kept, stacked, names


# ----------------------------------------------------------------------------------------------- fit / apply


def _loss(task: str, centres):
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    import torch.nn.functional as F

    from open_tips.eval.depth import depth_to_bin
    from open_tips.eval.metrics import IGNORE

    if task in ("seg", "fg"):
        return lambda logits, target: F.cross_entropy(logits, target.long(), ignore_index=IGNORE)
    if task == "depth":

        def depth_loss(logits, target):
            valid = target > 0
            per_pixel = F.cross_entropy(logits, depth_to_bin(target, centres), reduction="none")
            return (per_pixel * valid).sum() / valid.sum().clamp_min(1)

        return depth_loss

    def normals_loss(output, target):
        target = target.permute(0, 3, 1, 2)
        valid = target.norm(dim=1) > 0
        cosine = F.cosine_similarity(output, target, dim=1, eps=1e-6)
        return ((1 - cosine) * valid).sum() / valid.sum().clamp_min(1)

    return normals_loss


def decode(task: str, logits, centres):
    """Probe logits [B, C, H, W] -> labels [B, H, W] / depth [B, H, W] / unit normals [B, 3, H, W]."""
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    import torch.nn.functional as F

    from open_tips.eval.depth import decode_expectation

    if task in ("seg", "fg"):
        return logits.argmax(dim=1)
    if task == "depth":
        return decode_expectation(logits, centres)
    return F.normalize(logits, dim=1)


def metrics(task: str, prediction, target, num_classes: int) -> dict:
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    from open_tips.eval.metrics import angular_errors, confusion_matrix, depth_metrics, segmentation_metrics

    if task in ("seg", "fg"):
        return segmentation_metrics(confusion_matrix(prediction, target, num_classes))
    if task == "depth":
        return depth_metrics(prediction, target.float(), target > 0)
    return angular_errors(prediction.permute(0, 2, 3, 1), target)


def save_probe(path, probe, meta: dict) -> None:
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    from safetensors.torch import save_file

    from open_tips.formats.common import atomic_write

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in probe.state_dict().items()}
    atomic_write(
        path, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "probe": json.dumps(meta)})
    )


def load_probe(path):
    """(DenseLinearProbe, metadata dict); CheckpointError naming the file for anything else."""
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    from safetensors import SafetensorError, safe_open

    from open_tips.eval.dense_probe import DenseLinearProbe
    from open_tips.formats.common import CheckpointError, load_strict

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an open_tips probe file (format {header.get('format')!r})")
    meta = json.loads(header["probe"])
    if "head.weight" not in tensors:
        raise CheckpointError(f"{path}: missing key 'head.weight'")
    out_dim, in_dim = tensors["head.weight"].shape[:2]
    import torch

    probe = DenseLinearProbe(in_dim, out_dim, torch.zeros(in_dim), torch.ones(in_dim))
    load_strict(probe, tensors, str(path))
    return probe.eval(), meta


def _parse_layers(text: str | None, depth: int) -> list[int]:
    if not text:
        return [depth - 1]
    try:
        layers = [int(t) % depth if -depth <= int(t) < depth else int("x") for t in text.split(",")]
    except ValueError:
        fail(f"--layers {text}: expected comma-separated block indices in [0, {depth})")
    return layers


def run_fit(args: argparse.Namespace) -> int:
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    import torch

    from open_tips.eval.dense_probe import fit_dense_probe, predict_chunks
    from open_tips.eval.depth import bin_centres
    from open_tips.eval.features import patch_aligned
    from open_tips.inference.dense_heads import backbone_identity
    from open_tips.inference.options import load_model

    paths = input_images(args.images)
    model, device, image_size = load_model(args)
    size = patch_aligned(image_size, model.vision.patch_size)
    if args.head == "dpt":
        return _fit_dpt(args, model, device, paths, size)
    args.lr = 5e-2 if args.lr is None else args.lr
    layers = _parse_layers(args.layers, model.vision.cfg.depth)
    with_cls = args.with_cls if args.with_cls is not None else args.task in ("depth", "normals")
    kept, targets, names = _read_targets(args, paths, size)
    features = _features(model, kept, size, layers, with_cls, device, args.cache_dir)
    if args.task == "seg":
        valid = targets[targets != 255]
        count = int(valid.max()) + 1 if valid.numel() else 1
        if names is not None and len(names) < count:
            fail(f"--classes names {len(names)} classes but the targets hold labels up to {count - 1}")
        num = len(names) if names is not None else count
        names = names or [f"class {i}" for i in range(num)]
    out_dim = {"seg": len(names or []), "fg": 2, "depth": 256, "normals": 3}[args.task]
    centres = bin_centres(256, 1e-3, 10.0)
    held = int(round(len(kept) * args.val_fraction)) if args.val_fraction > 0 else 0
    train = slice(0, len(kept) - held)
    probe = fit_dense_probe(
        features[train],
        targets[train],
        out_dim,
        _loss(args.task, centres),
        epochs=args.epochs,
        lr=args.lr,
        target_factor=2 if args.task == "depth" else 4,
        device=device,
        desc=f"{args.task} probe",
    )
    meta = {
        "task": args.task,
        "classes": names,
        "image_size": size,
        "layers": layers,
        "with_cls": with_cls,
        "backbone": backbone_identity(model),
        "depth_bins": [256, 1e-3, 10.0] if args.task == "depth" else None,
        "images": len(kept) - held,
    }
    save_probe(args.output, probe, meta)
    print(
        f"fitted a {args.task} probe on {len(kept) - held} images ({len(layers)} layer(s)) -> {args.output}"
    )
    if held:
        test_x, test_y = features[len(kept) - held :], targets[len(kept) - held :]
        predictions = []
        for _, logits in predict_chunks(probe, test_x, tuple(test_y.shape[1:3])):
            predictions.append(decode(args.task, logits, centres).cpu())
        result = metrics(args.task, torch.cat(predictions), test_y, out_dim)
        print(f"held-out ({held} images): " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0


def _seg_names(args, targets, names):
    """Class names of a seg / fg probe: --classes, else ``class i`` up to the largest label."""
    if args.task != "seg":
        return names
    valid = targets[targets != 255]
    count = int(valid.max()) + 1 if valid.numel() else 1
    if names is not None and len(names) < count:
        fail(f"--classes names {len(names)} classes but the targets hold labels up to {count - 1}")
    return names or [f"class {i}" for i in range(count)]


def _fit_dpt(args, model, device, paths, size) -> int:
    """``probe fit --head dpt``: a DPT decoder on the cached outputs of four blocks."""
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    import torch

    from open_tips.eval.features import load_image, to_pixels
    from open_tips.inference.dense_heads import backbone_identity
    from open_tips.inference.dpt_probe import block_tokens, fit_dpt_probe, predict_dpt_probe, save_dpt_probe
    from open_tips.models.dpt import default_layers

    depth = model.vision.cfg.depth
    layers = _parse_layers(args.layers, depth) if args.layers else list(default_layers(depth))
    if len(layers) != 4:
        fail(f"--layers {args.layers}: a DPT head reads exactly four blocks")
    if args.dpt_channels < 1:
        fail(f"--dpt-channels must be positive, got {args.dpt_channels}")
    kept, targets, names = _read_targets(args, paths, size)
    names = _seg_names(args, targets, names)
    pixels = torch.stack([to_pixels(load_image(p), size) for p in kept])
    cls, patches = block_tokens(model, pixels, layers)
    held = int(round(len(kept) * args.val_fraction)) if args.val_fraction > 0 else 0
    train = slice(0, len(kept) - held)
    decoder, history = fit_dpt_probe(
        cls[train],
        patches[train],
        targets[train],
        "segmentation" if args.task in ("seg", "fg") else args.task,
        layers,
        num_classes=len(names) if names else None,
        class_names=names,
        channels=args.dpt_channels,
        epochs=args.epochs,
        lr=1e-3 if args.lr is None else args.lr,
        device=device,
    )
    meta = {
        "task": args.task,
        "head": "dpt",
        "classes": names,
        "image_size": size,
        "layers": layers,
        "images": len(kept) - held,
        "train_loss": history,
    }
    save_dpt_probe(args.output, decoder, backbone_identity(model), meta)
    print(
        f"fitted a {args.task} DPT probe on {len(kept) - held} images (blocks {layers}; training loss "
        f"{history[0]:.4f} -> {history[-1]:.4f}) -> {args.output}"
    )
    if held:
        test_y = targets[len(kept) - held :]
        prediction = predict_dpt_probe(
            decoder, cls[len(kept) - held :], patches[len(kept) - held :], (size, size)
        )
        result = metrics(args.task, prediction, test_y, len(names or []))
        print(f"held-out ({held} images): " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0


def run_apply(args: argparse.Namespace) -> int:
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    import torch
    from PIL import Image

    from open_tips.eval.depth import bin_centres
    from open_tips.inference.dense import label_image
    from open_tips.inference.dense_heads import (
        backbone_identity,
        depth_png,
        labelled_overlay,
        normals_rgb,
        summary_picture,
    )
    from open_tips.inference.dpt_probe import is_dpt_file, load_dpt_probe
    from open_tips.inference.images import read_image
    from open_tips.inference.options import load_model

    paths = input_images(args.inputs)
    dpt = is_dpt_file(args.probe)
    try:
        if dpt:
            probe, backbone, meta = load_dpt_probe(args.probe)
            meta = {"image_size": probe_size(meta), **meta, "backbone": backbone}
        else:
            probe, meta = load_probe(args.probe)
    except (open_tips.CheckpointError, ValueError) as err:
        fail(str(err))
    model, device, _ = load_model(args)
    mine = backbone_identity(model)
    if mine != meta["backbone"]:
        theirs = meta["backbone"]
        fail(
            f"{args.probe}: fitted on another backbone (width {theirs['width']}, depth {theirs['depth']}, "
            f"fingerprint {theirs['fingerprint']}); {args.checkpoint} has width {mine['width']}, depth "
            f"{mine['depth']}, fingerprint {mine['fingerprint']}"
        )
    probe.to(device)
    task = meta["task"]
    centres = bin_centres(*meta["depth_bins"]) if meta.get("depth_bins") else None
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[Path] = set()
    for path in paths:
        try:
            image = read_image(path)
        except OSError as err:
            print(f"skipping {path}: {err}")
            continue
        except Exception as err:  # SkipSample for undecodable bytes
            print(f"skipping {path}: {err}")
            continue
        size = (image.height, image.width)
        if dpt:
            out = _apply_dpt(model, probe, path, meta["image_size"], size)
        else:
            features = _features(model, [path], meta["image_size"], meta["layers"], meta["with_cls"], device)
            with torch.inference_mode():
                out = decode(task, probe(features.to(device), size), centres)[0].cpu()
        stem = output_stem(path, args.output_dir, used)
        if task in ("seg", "fg"):
            labels = out.numpy()
            label_image(labels, len(meta["classes"])).save(f"{stem}_labels.png")
            labelled_overlay(image, labels, meta["classes"]).save(f"{stem}_overlay.png")
            arrays = {"segmentation": labels}
        elif task == "depth":
            depth = out.numpy().astype(np.float32)
            np.save(f"{stem}_depth.npy", depth)
            depth_png(depth).save(f"{stem}_depth.png")
            arrays = {"depth": depth}
        else:
            normals = out.numpy()
            Image.fromarray(normals_rgb(normals)).save(f"{stem}_normals.png")
            arrays = {"normals": normals}
        summary_picture(image, arrays, meta.get("classes")).save(f"{stem}_probe.png")
        print(f"{path} -> {Path(stem).name}_*")
    return 0


def probe_size(meta: dict) -> int:
    """The square side a probe was fitted at (a DPT head file written by `open-tips dense` tools has none:
    the released heads' 448)."""
    return int(meta.get("image_size") or 448)


def _apply_dpt(model, decoder, path, image_size: int, size: tuple[int, int]):
    # deferred: the model stack loads once the command runs, not for `open-tips probe --help`
    from open_tips.eval.features import load_image, to_pixels
    from open_tips.inference.dpt_probe import block_tokens, predict_dpt_probe

    pixels = to_pixels(load_image(path), image_size)[None]
    cls, patches = block_tokens(model, pixels, decoder.layers)
    return predict_dpt_probe(decoder, cls, patches, size)[0]
