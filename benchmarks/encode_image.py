"""open_tips vs transformers' Tipsv2Model: image-encoding throughput on the same random weights.

Both libraries get the same weights (open_tips writes them with save_pretrained, transformers loads the
directory with attn_implementation="sdpa"), the same inputs, the same thread count. Each size is warmed up
(the first calls also check that both give the same tokens), then timed ``--repeats`` times, alternating
which library goes first so that drift and caches hit both alike; the median is reported with the best and
worst runs, and the ratio ours/HF both of the medians and as the median of back-to-back pairs (robust to
other processes loading a shared CPU). On a GPU, bf16 autocast is timed too and MFU is printed,
from FLOPs = 2 x MACs counted from the architecture.

    .venv/bin/python benchmarks/encode_image.py                                   # B/14, 224 (batch 8) and 448 (batch 2)
    .venv/bin/python benchmarks/encode_image.py --device cuda --batch-size 256 64 --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import randomise  # noqa: E402  (shared with encode.py)


def vision_macs(cfg, height: int, width: int) -> float:
    """Multiply-accumulates of one image through the vision tower (patch embedding, per block: qkv and
    output projections, attention scores and weighted sum, MLP). Norms, softmax and adds are left out."""
    v = cfg.vision
    patches = (height // v.patch_size) * (width // v.patch_size)
    tokens = 2 + patches  # CLS1 + CLS2 + patches
    d = v.width
    patch_embed = patches * 3 * v.patch_size**2 * d
    mlp = (3 if v.swiglu else 2) * d * v.mlp_hidden  # SwiGLU: gate + up (w12) and down (w3)
    per_block = tokens * (4 * d * d + mlp) + 2 * tokens * tokens * d
    return float(patch_embed + v.depth * per_block)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def summary(batch: int, seconds: list[float]) -> tuple[float, str]:
    median = statistics.median(seconds)
    spread = f"best {batch / min(seconds):.2f}, worst {batch / max(seconds):.2f}"
    return batch / median, spread


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="tipsv2-b14", help="open_tips registry name")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument(
        "--batch-size",
        "--batch-sizes",
        dest="batch_sizes",
        type=int,
        nargs="+",
        default=[8, 2],
        help="one per size (the last one repeats)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per library and setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per library and setting")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16"],
        default=None,
        help="default: fp32 on CPU; fp32 and bf16 (autocast) on a GPU",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="device peak in TFLOP/s for the MFU column (default: H100 SXM bf16 dense)",
    )
    args = parser.parse_args()

    import transformers

    import open_tips

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    torch.manual_seed(0)
    ours = open_tips.create_model(args.config).eval()
    randomise(ours)
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        theirs = transformers.Tipsv2Model.from_pretrained(folder, attn_implementation="sdpa").eval()
    ours, theirs = ours.to(device), theirs.to(device)
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(
        f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"config {args.config}, {args.repeats} timed runs (median){load}"
    )
    batch_sizes = args.batch_sizes + [args.batch_sizes[-1]] * max(0, len(args.sizes) - len(args.batch_sizes))
    for precision in precisions:
        for size, batch in zip(args.sizes, batch_sizes):
            pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)).to(
                device
            )
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

            def run_ours(pixels=pixels, autocast=autocast) -> torch.Tensor:
                with torch.inference_mode(), autocast:
                    out = ours.encode_image(pixels)
                return torch.cat(
                    [out.cls_web[:, None], out.cls_synthetic[:, None], out.patch_tokens.flatten(1, 2)], 1
                )

            def run_theirs(pixels=pixels, autocast=autocast) -> torch.Tensor:
                with torch.inference_mode(), autocast:
                    return theirs.vision_model(pixel_values=pixels).last_hidden_state

            a, b = (
                run_ours().float(),
                run_theirs().float(),
            )  # the first warm-up run doubles as the parity check
            error = float((a - b).norm() / b.norm())
            for _ in range(args.warmup - 1):
                run_ours(), run_theirs()
            times: dict[str, list[float]] = {"ours": [], "theirs": []}
            for repeat in range(args.repeats):
                order = [("ours", run_ours), ("theirs", run_theirs)]
                for name, fn in order if repeat % 2 == 0 else order[::-1]:
                    times[name].append(time_once(fn, device))
            ours_ips, ours_spread = summary(batch, times["ours"])
            theirs_ips, theirs_spread = summary(batch, times["theirs"])
            # Ratio of each back-to-back pair, then the median: neighbours share the machine's load of the
            # moment, so this stays meaningful when other processes come and go on a shared CPU.
            paired = statistics.median(t / o for o, t in zip(times["ours"], times["theirs"]))
            line = (
                f"{precision} {size}px batch {batch}: open_tips {ours_ips:8.2f} img/s ({ours_spread}) | "
                f"transformers {theirs_ips:8.2f} img/s ({theirs_spread}) | ratio ours/HF "
                f"{ours_ips / theirs_ips:5.3f} (paired {paired:5.3f}) | rel. diff {error:.1e}"
            )
            if device.type == "cuda":
                flops = 2.0 * vision_macs(ours.cfg, size, size)
                peak = args.peak_tflops * 1e12
                line += (
                    f" | {flops / 2e9:.0f} GMACs/img, MFU open_tips {100 * ours_ips * flops / peak:5.1f}% "
                    f"transformers {100 * theirs_ips * flops / peak:5.1f}%"
                )
            print(line, flush=True)
    if load and device.type == "cpu":
        end_load = os.getloadavg()[0]
        note = (
            " > threads: other processes shared the CPU, so compare the ratios rather than absolute numbers"
            if end_load > torch.get_num_threads() + 0.5
            else ""
        )
        print(f"load average at the end {end_load:.2f}{note}")


if __name__ == "__main__":
    main()
