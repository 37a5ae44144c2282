"""Captioning throughput (images/s) of the pipeline on COCO-mini images.

By default it builds the tiny random PaliGemma (no download) so the number measures the pipeline's own
overhead plus a minimal model; pass --model for a real local checkpoint directory.

    .venv/bin/python benchmarks/caption.py --images 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local model directory (default: tiny random PaliGemma)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--coco", default=str(COCO))
    args = parser.parse_args()

    from PIL import Image

    from open_tips.captions.pipeline import DecodeSettings, run_pipeline
    from open_tips.captions.prompts import parse_templates
    from open_tips.captions.tiny import make_tiny_paligemma
    from open_tips.data.shards import write_shards

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = args.model or str(make_tiny_paligemma(work / "model"))
        paths = sorted(Path(args.coco).glob("*/*.jpg"))[: args.images]
        samples = [{"__key__": p.stem, "image": Image.open(p).convert("RGB"), "web_caption": "a photo"}
                   for p in paths]
        write_shards(samples, str(work / "in" / "s-%06d.tar"), max_per_shard=max(1, len(samples) // 4))
        start = time.perf_counter()
        summary = run_pipeline(model, [str(work / "in" / "s-*.tar")], work / "out", parse_templates(["detailed"]),
                               DecodeSettings(max_new_tokens=args.max_new_tokens), args.batch_size,
                               device=args.device)
        elapsed = time.perf_counter() - start
    print(f"device {args.device}, model {'tiny random PaliGemma' if not args.model else args.model}, "
          f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}")
    print(f"captioned {summary['captioned']} images in {elapsed:.1f} s (incl. model load): "
          f"{summary['captioned'] / elapsed:.1f} img/s end to end, {summary.get('images_per_s', 0):.1f} img/s "
          f"captioning")


if __name__ == "__main__":
    main()
