"""`open-tips embed`: images -> CLS (and patch) features in .npz or .safetensors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from open_tips.commands._common import add_model_args, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="compute image embeddings for images or folders")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders")
    parser.add_argument("--output", required=True, help="out.npz or out.safetensors")
    parser.add_argument("--patch-tokens", action="store_true", help="also store patch features [N, h, w, D]")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the CLS embeddings")
    add_model_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from open_tips.formats.common import atomic_write
    from open_tips.inference.images import batched_images, list_images

    output = Path(args.output)
    if output.suffix not in (".npz", ".safetensors"):
        raise SystemExit(f"--output must end in .npz or .safetensors, got {output}")
    model, device, image_size = load_model(args)
    paths = list_images(args.inputs)
    skipped: list[str] = []
    done: list[str] = []
    store: dict[str, list[torch.Tensor]] = {"cls_web": [], "cls_synthetic": []}
    if args.patch_tokens:
        store["patch_tokens"] = []
    with torch.no_grad(), tqdm(total=len(paths), desc="embed", unit="img") as bar:
        for batch_paths, pixels in batched_images(paths, image_size, args.batch_size, args.keep_aspect, skipped):
            out = model.encode_image(pixels.to(device))
            web, synthetic = out.cls_web, out.cls_synthetic
            if args.normalize:
                web, synthetic = F.normalize(web, dim=-1), F.normalize(synthetic, dim=-1)
            store["cls_web"].append(web.float().cpu())
            store["cls_synthetic"].append(synthetic.float().cpu())
            if args.patch_tokens:
                store["patch_tokens"].append(out.patch_tokens.float().cpu())
            done.extend(str(p) for p in batch_paths)
            bar.update(len(batch_paths))
        bar.update(len(skipped))
    if not done:
        raise SystemExit(f"no readable image among {len(paths)} inputs")
    if args.patch_tokens and len({t.shape[1:] for t in store["patch_tokens"]}) > 1:
        raise SystemExit("--patch-tokens with --keep-aspect needs images of one shape")
    arrays = {k: torch.cat(v).numpy() for k, v in store.items()}

    def write(tmp: str) -> None:
        if output.suffix == ".npz":
            with open(tmp, "wb") as handle:
                np.savez(handle, paths=np.array(done), **arrays)
        else:
            from safetensors.numpy import save_file

            save_file(arrays, tmp, metadata={"paths": json.dumps(done)})

    atomic_write(output, write)
    print(f"embedded {len(done)} images -> {output}" + (f"; skipped {len(skipped)}: {skipped}" if skipped else ""))
    return 0
