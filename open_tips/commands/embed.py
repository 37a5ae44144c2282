"""`open-tips embed`: images -> CLS (and patch) features in one .npz or .safetensors file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from open_tips.inference.options import (
    add_model_args,
    fail,
    input_images,
    load_model,
    precision_metadata,
    report_skipped,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="compute image embeddings for images or folders",
        description="Writes cls_web and cls_synthetic [N, D] (and patch_tokens [N, h, w, D] with "
        "--patch-tokens) plus the image paths, in input order; unreadable images are skipped.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="out.npz or out.safetensors (written atomically)")
    parser.add_argument(
        "--patch-tokens", action="store_true", help="also store the patch features [N, h, w, D]"
    )
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the CLS embeddings")
    add_model_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: the model stack loads once the command runs, not for `open-tips embed --help`
    from open_tips.formats.common import atomic_write
    from open_tips.inference.images import batched_images

    output = Path(args.output)
    if output.suffix not in (".npz", ".safetensors"):
        fail(f"--output must end in .npz or .safetensors, got {output}")
    paths = input_images(args.inputs)
    model, device, image_size = load_model(args)
    skipped: list[str] = []
    done: list[str] = []
    store: dict[str, list[torch.Tensor]] = {"cls_web": [], "cls_synthetic": []}
    if args.patch_tokens:
        store["patch_tokens"] = []
    batches = batched_images(
        paths, image_size, args.batch_size, args.keep_aspect, skipped, model.vision.patch_size, args.workers
    )
    first_shape: tuple[int, int] | None = None
    with torch.inference_mode(), tqdm(total=len(paths), desc="embed", unit="img") as bar:
        for batch_paths, pixels in batches:
            shape = tuple(pixels.shape[-2:])
            if args.patch_tokens and first_shape is not None and shape != first_shape:
                # one [N, h, w, D] array needs one grid; checked now rather than after the whole run
                fail(
                    f"--patch-tokens needs one image shape for all images: drop --keep-aspect "
                    f"({batch_paths[0]} is {shape}, earlier images {first_shape})"
                )
            first_shape = first_shape or shape
            out = model.encode_image(pixels.to(device))
            web, synthetic = out.cls_web, out.cls_synthetic
            if args.normalize:
                web, synthetic = F.normalize(web, dim=-1), F.normalize(synthetic, dim=-1)
            store["cls_web"].append(web.float().cpu())
            store["cls_synthetic"].append(synthetic.float().cpu())
            if args.patch_tokens:
                store["patch_tokens"].append(out.patch_tokens.float().cpu())
            done.extend(str(p) for p in batch_paths)
            bar.update(len(done) + len(skipped) - bar.n)  # skipped images count as handled
        bar.update(len(paths) - bar.n)
    if not done:
        report_skipped(skipped)
        fail(f"none of the {len(paths)} inputs could be read")
    arrays = {key: torch.cat(parts).numpy() for key, parts in store.items()}
    precision = precision_metadata(args)

    def write(tmp: str) -> None:
        if output.suffix == ".npz":
            with open(tmp, "wb") as handle:  # a handle: np.savez would append ".npz" to a bare temp name
                np.savez(
                    handle,
                    paths=np.array(done, dtype=str),
                    **arrays,
                    **{key: np.array(value) for key, value in precision.items()},
                )
        else:
            from safetensors.numpy import save_file

            save_file(
                arrays,
                tmp,
                metadata={"paths": json.dumps(done), "skipped": json.dumps(skipped), **precision},
            )

    atomic_write(output, write)
    shapes = ", ".join(f"{key} {list(value.shape)}" for key, value in arrays.items())
    print(f"embedded {len(done)} images -> {output} ({shapes})")
    report_skipped(skipped)
    return 0
