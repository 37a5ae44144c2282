"""open_tips vs transformers' Tipsv2Model: image encoding throughput on the same random weights.

Both models get the same weights (open_tips writes them with save_pretrained, transformers loads them),
the same inputs and the same thread count. Timed runs alternate between the two libraries; the median of
the repeats is reported. On a GPU it also measures bf16 autocast and prints MFU.

    .venv/bin/python benchmarks/encode_image.py --config tipsv2-b14 --sizes 224 448 --batch-sizes 8 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def vision_flops(cfg, height: int, width: int) -> float:
    """Forward FLOPs (2 x MACs) of the vision tower for one image."""
    v = cfg.vision
    tokens = 2 + (height // v.patch_size) * (width // v.patch_size)
    d = v.width
    patch = (height // v.patch_size) * (width // v.patch_size) * 3 * v.patch_size**2 * d
    mlp = (3 if v.swiglu else 2) * d * v.mlp_hidden
    per_block = tokens * (4 * d * d + mlp) + 2 * tokens * tokens * d
    return 2.0 * (patch + v.depth * per_block)


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tipsv2-b14")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 2], help="one per size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 dense peak for MFU")
    args = parser.parse_args()

    import transformers

    import open_tips

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = open_tips.create_model(args.config).eval()
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        theirs = transformers.Tipsv2Model.from_pretrained(folder, attn_implementation="sdpa").eval()
    ours, theirs = ours.to(device), theirs.to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, config {args.config}")
    batch_sizes = args.batch_sizes + [args.batch_sizes[-1]] * (len(args.sizes) - len(args.batch_sizes))
    precisions = ["fp32"] + (["bf16"] if device.type == "cuda" else [])
    for precision in precisions:
        for size, batch in zip(args.sizes, batch_sizes):
            pixels = torch.rand(batch, 3, size, size, device=device)
            def autocast(precision=precision):
                return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

            def run_ours(pixels=pixels):
                with torch.inference_mode(), autocast():
                    return ours.encode_image(pixels).patch_tokens

            def run_theirs(pixels=pixels):
                with torch.inference_mode(), autocast():
                    return theirs.vision_model(pixel_values=pixels).last_hidden_state

            with torch.inference_mode():
                a, b = run_ours().float(), run_theirs()[:, 2:].float()
                error = float((a.flatten(1, 2) - b).norm() / b.norm())
            for _ in range(args.warmup):
                run_ours(), run_theirs()
            ours_t, theirs_t = [], []
            for _ in range(args.repeats):  # alternate so drift hits both alike
                ours_t += timed(run_ours, 1, device)
                theirs_t += timed(run_theirs, 1, device)
            ours_ips = batch / statistics.median(ours_t)
            theirs_ips = batch / statistics.median(theirs_t)
            line = (f"{precision} {size}px batch {batch}: open_tips {ours_ips:8.2f} img/s | transformers "
                    f"{theirs_ips:8.2f} img/s | ratio {ours_ips / theirs_ips:5.3f} | rel. diff {error:.1e}")
            if device.type == "cuda":
                flops = vision_flops(ours.cfg, size, size)
                line += (f" | MFU open_tips {100 * ours_ips * flops / (args.peak_tflops * 1e12):5.1f}% "
                         f"transformers {100 * theirs_ips * flops / (args.peak_tflops * 1e12):5.1f}%")
            print(line, flush=True)


if __name__ == "__main__":
    main()
