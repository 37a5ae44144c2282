"""End to end over a folder of JPEGs: ``open-tips embed`` vs a plain transformers + DataLoader loop.

Both sides run as fresh processes, timed from start to the written file (Python start, imports, loading
the weights, decoding, resizing, encoding, writing), on the same random B/14-shaped HF-format directory and
the same images (the first ``--images`` JPEGs of coco-mini), the same image size, batch size, decoding
workers and threads. The transformers side is written as its model docs show
(``AutoImageProcessor`` + ``AutoModel`` with the vision config, ``torch.no_grad``), batched by a
``torch.utils.data.DataLoader`` whose ``collate_fn`` runs the image processor. The sides alternate in
order for ``--repeats`` rounds; reported: median seconds and images/s, and the median per-round ratio.

    .venv/bin/python benchmarks/embed_folder.py                       # B/14, 224 px, 48 images
    .venv/bin/python benchmarks/embed_folder.py --quick               # tiny model, 8 images: a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COCO = Path(os.environ.get("OPEN_TIPS_COCO_MINI") or ROOT.parent / "shared" / "data" / "coco-mini")


def hf_loop(checkpoint: str, folder: str, output: str, size: int, batch_size: int, workers: int) -> None:
    """The transformers side, as a user would write it from the Tipsv2 model docs."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    config = AutoConfig.from_pretrained(checkpoint)
    model = AutoModel.from_pretrained(checkpoint, config=config.vision_config).eval()
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    class Images(Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            return Image.open(paths[index]).convert("RGB")

    def collate(images):
        return processor(images=images, size={"height": size, "width": size}, return_tensors="pt")

    loader = DataLoader(Images(), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    web, synthetic = [], []
    with torch.no_grad():
        for inputs in loader:
            sequence = model(**inputs).last_hidden_state
            web.append(sequence[:, 0])
            synthetic.append(sequence[:, 1])
    np.savez(
        output,
        paths=np.array([str(p) for p in paths]),
        cls_web=torch.cat(web).numpy(),
        cls_synthetic=torch.cat(synthetic).numpy(),
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="tipsv2-b14")
    parser.add_argument("--images", type=int, default=48, help="how many coco-mini JPEGs")
    parser.add_argument("--image-dir", default=str(COCO / "train2017"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes, both sides")
    parser.add_argument("--threads", type=int, default=0, help="OMP threads of both (0: all cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time open-tips embed --compile")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 images, 56 px, 1 round")
    parser.add_argument("--hf-worker", nargs=6, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hf_worker:
        checkpoint, folder, output, size, batch, workers = args.hf_worker
        hf_loop(checkpoint, folder, output, int(size), int(batch), int(workers))
        return {}
    if args.quick:
        args.config, args.images, args.image_size, args.batch_size, args.repeats = "tiny", 8, 56, 4, 1

    sources = sorted(Path(args.image_dir).glob("*.jpg"))[: args.images]
    if not sources:
        raise SystemExit(f"no JPEGs in {args.image_dir}")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    exe = Path(sys.executable)
    cli = str(exe.parent / "open-tips") if (exe.parent / "open-tips").exists() else None
    work = Path(tempfile.mkdtemp(prefix="embed_bench_"))
    try:
        checkpoint, folder = work / "model", work / "images"
        _bench.write_random_hf(args.config, checkpoint)
        folder.mkdir()
        for path in sources:
            shutil.copy(path, folder / path.name)
        common = [
            str(folder),
            "--checkpoint",
            str(checkpoint),
            "--image-size",
            str(args.image_size),
            "--batch-size",
            str(args.batch_size),
            "--workers",
            str(args.workers),
            "--device",
            args.device,
        ]
        base = [cli] if cli else [str(exe), "-m", "open_tips.cli"]
        commands = {
            "open_tips": base + ["embed", *common, "--output", str(work / "ours.npz")],
            "transformers": [str(exe), __file__, "--hf-worker", str(checkpoint), str(folder)]
            + [str(work / "theirs.npz"), str(args.image_size), str(args.batch_size), str(args.workers)],
        }
        if args.compile:
            commands["open_tips_compiled"] = base + [
                "embed",
                *common,
                "--compile",
                "--output",
                str(work / "c.npz"),
            ]

        def runner(command):
            def run():
                proc = subprocess.run(command, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise RuntimeError(f"{command[:3]} failed:\n{proc.stderr[-2000:]}")

            return run

        print(
            f"embed_folder: {args.config}, {len(sources)} JPEGs, {args.image_size} px, batch {args.batch_size}, "
            f"workers {args.workers}, {args.repeats} rounds (each side a fresh process)",
            flush=True,
        )
        start = time.perf_counter()
        times = _bench.paired({name: runner(cmd) for name, cmd in commands.items()}, args.repeats)
        ours, theirs = np.load(work / "ours.npz"), np.load(work / "theirs.npz")
        diff = {
            key: float(np.linalg.norm(ours[key] - theirs[key]) / np.linalg.norm(theirs[key]))
            for key in ("cls_web", "cls_synthetic")
        }
        result = {
            "benchmark": "embed_folder",
            "config": args.config,
            "images": len(sources),
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "seconds": {n: _bench.median(t) for n, t in times.items()},
            "img_per_s": {n: len(sources) / _bench.median(t) for n, t in times.items()},
            "ratio_vs_transformers": {
                n: _bench.paired_ratio(times, n, "transformers") for n in times if n != "transformers"
            },
            "shapes": {
                side: {k: list(data[k].shape) for k in ("cls_web", "cls_synthetic")}
                for side, data in (("open_tips", ours), ("transformers", theirs))
            },
            "same_order": [Path(p).name for p in ours["paths"]] == [Path(p).name for p in theirs["paths"]],
            "rel_diff": diff,
            "load": _bench.load_note(os.cpu_count() or 1),
            "wall_s": time.perf_counter() - start,
        }
        for name in times:
            ratio = result["ratio_vs_transformers"].get(name)
            print(
                f"{name:20} {result['seconds'][name]:7.2f} s  {result['img_per_s'][name]:7.2f} img/s"
                + (f"  ratio {ratio:.3f}x" if ratio else ""),
                flush=True,
            )
        print(
            f"outputs: shapes {result['shapes']['open_tips']} (both), same order {result['same_order']}, "
            f"rel. diff {diff['cls_web']:.1e} / {diff['cls_synthetic']:.1e} (resize kernels differ: float vs "
            f"uint8 bilinear)\n{result['load']}"
        )
        _bench.write_json(args.json, result)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
