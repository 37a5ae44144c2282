"""Captioning throughput (images/s) of the whole pipeline on COCO-mini images.

Writes N COCO-mini images into WebDataset shards, captions them with ``open_tips.captions`` (reading, JPEG
decoding, batching, generation, cleaning, writing new shards) and prints images/s, split into time inside the
model's ``generate`` and the pipeline's own overhead. By default the model is the tiny random PaliGemma of
``open_tips.captions.tiny`` (no download; its output never stops early, so every caption is
``--max-new-tokens`` long: a worst case), which measures the pipeline rather than a model. ``--model DIR``
measures a real local checkpoint. Runs on CPU, and on the GPU too when one is present.

    .venv/bin/python benchmarks/caption.py --images 64 --batch-size 16 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import torch

COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"


class TimedCaptioner:
    """Wraps a captioner to add up the seconds spent in ``generate`` (processor + model + decoding)."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0
        self.name, self.prompt_style = inner.name, inner.prompt_style
        self.image_size_hint = inner.image_size_hint

    def generate(self, images, prompts, settings):
        if self.inner.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.inner.generate(images, prompts, settings)
        self.seconds += time.perf_counter() - start  # generate returns strings: the GPU work is done
        return out


def write_shards(folder: Path, images: list[Path], per_shard: int) -> None:
    folder.mkdir(parents=True)
    for index, start in enumerate(range(0, len(images), per_shard)):
        with tarfile.open(folder / f"coco-{index:06d}.tar", "w") as archive:
            for path in images[start : start + per_shard]:
                for name, data in (
                    (f"{path.stem}.jpg", path.read_bytes()),
                    (f"{path.stem}.json", b'{"web_caption": "a photo from COCO"}'),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="local model directory (default: tiny random PaliGemma)"
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--per-shard", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--template", nargs="+", default=["detailed"])
    parser.add_argument(
        "--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    parser.add_argument(
        "--tiny-image-size", type=int, default=224, help="tiny model's input side (x/14 squared tokens)"
    )
    parser.add_argument("--tiny-hidden", type=int, default=64)
    parser.add_argument("--tiny-layers", type=int, default=2)
    parser.add_argument("--coco", default=str(COCO))
    args = parser.parse_args()

    from open_tips.captions.model import Captioner, DecodeSettings
    from open_tips.captions.pipeline import PipelineConfig, run_pipeline
    from open_tips.captions.prompts import parse_templates
    from open_tips.captions.tiny import make_tiny_paligemma

    images = sorted(Path(args.coco).glob("*2017/*.jpg"))[: args.images]
    if not images:
        raise SystemExit(f"no COCO-mini images under {args.coco}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {len(images)} COCO-mini images "
        f"in shards of {args.per_shard}; batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, "
        f"templates {' '.join(args.template)}"
    )
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        write_shards(work_dir / "in", images, args.per_shard)
        if args.model:
            model, label = args.model, args.model
        else:
            model = str(
                make_tiny_paligemma(
                    work_dir / "model",
                    image_size=args.tiny_image_size,
                    hidden=args.tiny_hidden,
                    layers=args.tiny_layers,
                )
            )
            label = (
                f"tiny random PaliGemma ({args.tiny_image_size} px, hidden {args.tiny_hidden}, "
                f"{args.tiny_layers} layers)"
            )
        print(f"model: {label}")
        for device in args.devices:
            start = time.perf_counter()
            captioner = TimedCaptioner(Captioner(model, device=device))
            load = time.perf_counter() - start
            config = PipelineConfig(
                parse_templates(args.template),
                DecodeSettings(max_new_tokens=args.max_new_tokens),
                batch_size=args.batch_size,
                progress=False,
            )
            # Warm-up on one shard (allocator, kernels), then the measured run into a fresh directory.
            run_pipeline(
                [str(work_dir / "in" / "coco-000000.tar")],
                work_dir / f"warm-{device}",
                config,
                captioner,
                captioner.name,
            )
            captioner.seconds = 0.0
            start = time.perf_counter()
            summary = run_pipeline(
                [str(work_dir / "in" / "coco-*.tar")],
                work_dir / f"out-{device}",
                config,
                captioner,
                captioner.name,
            )
            elapsed = time.perf_counter() - start
            done = summary["samples"]
            print(
                f"{device:>5} ({captioner.inner.dtype}): {done} images in {elapsed:.2f} s = {done / elapsed:.1f} "
                f"images/s end to end; generate {captioner.seconds:.2f} s ({100 * captioner.seconds / elapsed:.0f} %), "
                f"pipeline overhead {elapsed - captioner.seconds:.2f} s; model load {load:.2f} s; "
                f"failed {summary['failed']}"
            )


if __name__ == "__main__":
    main()
