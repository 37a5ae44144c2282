"""Image encoding: open_tips eager and compiled vs transformers' Tipsv2Model, on the same random weights.

One process, one set of random B/14-shaped weights written in the HF layout (open_tips ``save_pretrained``;
transformers loads the directory with ``attn_implementation="sdpa"``), the same inputs and threads. The sides

- ``eager``: ``TIPSModel.encode_image`` as it is;
- ``compiled``: the same after ``open_tips.inference.options.prepare_for_inference(compile=True)`` (what
  ``open-tips embed --compile`` runs: torch.compile with Inductor freezing);
- ``hf``: ``Tipsv2Model.vision_model(pixel_values=...).last_hidden_state``

are warmed up (the first call checks that all give the same tokens), then timed ``--repeats`` times with the
order rotating every repetition; reported: medians, and each ratio as the median of the per-repetition
ratios. ``--gemm-ceiling`` also times a plain fp32 matmul of the model's MLP shape: the most any side can
reach on this CPU, the bound of an encoder whose FLOPs are ~98 % matmuls. ``--profile`` prints the top
operators of each side (torch.profiler).

    .venv/bin/python benchmarks/encode.py                 # CPU fp32, B/14, 224 px (batch 4), 448 px (batch 1)
    .venv/bin/python benchmarks/encode.py --quick         # tiny model, seconds: a smoke run
    .venv/bin/python benchmarks/encode.py --device cuda --precision bf16 --sizes 448 --batch-sizes 64
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402


def gemm_ceiling(tokens: int, width: int, hidden: int, repeats: int = 5) -> float:
    """GFLOP/s of a plain fp32 [tokens, width] x [width, hidden] matmul (the model's MLP shape)."""
    a, b = torch.randn(tokens, width), torch.randn(width, hidden)
    torch.mm(a, b)
    seconds = _bench.median([_bench.time_once(lambda: torch.mm(a, b)) for _ in range(repeats)])
    return 2 * tokens * width * hidden / seconds / 1e9


def profile_side(name: str, fn, rows: int = 8) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"--- profile: {name}\n{table}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="tipsv2-b14", help="open_tips registry name")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 1], help="one per size")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    parser.add_argument("--no-compile", action="store_true", help="time eager and transformers only")
    parser.add_argument(
        "--max-autotune",
        action="store_true",
        help="also time an 'autotune' side: compiled with Inductor's max_autotune (CPU: its C++ GEMM templates)",
    )
    parser.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # tests: eager
    parser.add_argument("--gemm-ceiling", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="for MFU (GPU); 0: from the table")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny model, 56 px, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.config, args.sizes, args.batch_sizes, args.repeats = "tiny", [56], [2], 3

    import transformers

    from open_tips.inference.options import prepare_for_inference
    from open_tips.train.flops import peak_tflops, vision_forward_flops

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        eager = _bench.write_random_hf(args.config, folder)
        compiled = copy.deepcopy(eager)
        autotuned = copy.deepcopy(eager) if args.max_autotune else None
        hf = transformers.Tipsv2Model.from_pretrained(folder, attn_implementation="sdpa").eval()
    eager, compiled, hf = eager.to(device), compiled.to(device), hf.to(device)
    if autotuned is not None:
        autotuned.to(device).vision.forward_tokens = torch.compile(
            autotuned.vision.forward_tokens, options={"freezing": True, "max_autotune": True}
        )
    if not args.no_compile:
        if args.compile_backend == "inductor":
            prepare_for_inference(compiled, compile=True)
        else:  # tests: dynamo capture without the C++ compiler
            compiled.vision.forward_tokens = torch.compile(
                compiled.vision.forward_tokens, backend=args.compile_backend
            )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    peak = peak_tflops(device, args.precision, args.peak_tflops)
    result: dict = {
        "benchmark": "encode",
        "config": args.config,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "rows": [],
    }
    print(
        f"encode: {args.config} {args.precision} on {result['device']}, threads {result['threads']}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.repeats} paired repeats"
    )
    batch_sizes = args.batch_sizes + [args.batch_sizes[-1]] * max(0, len(args.sizes) - len(args.batch_sizes))
    for size, batch in zip(args.sizes, batch_sizes):
        pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device)

        def tokens(model, pixels=pixels):
            out = model.encode_image(pixels)
            return torch.cat(
                [out.cls_web[:, None], out.cls_synthetic[:, None], out.patch_tokens.flatten(1, 2)], 1
            )

        sides = {
            "eager": lambda: tokens(eager),
            "hf": lambda pixels=pixels: hf.vision_model(pixel_values=pixels).last_hidden_state,
        }
        if not args.no_compile:
            sides["compiled"] = lambda: tokens(compiled)
        if autotuned is not None:
            sides["autotune"] = lambda: tokens(autotuned)
        with torch.inference_mode(), autocast:
            outputs = {name: fn().float() for name, fn in sides.items()}  # warm-up (compiles) + parity
            reference = outputs["hf"]
            diffs = {
                n: float((o - reference).norm() / reference.norm()) for n, o in outputs.items() if n != "hf"
            }
            times = _bench.paired(sides, args.repeats, device)
            profiles = [profile_side(n, fn) for n, fn in sides.items()] if args.profile else []
        flops = vision_forward_flops(eager.cfg.vision, batch, size, size)
        row = {
            "size": size,
            "batch": batch,
            "shapes": {n: list(o.shape) for n, o in outputs.items()},
            "rel_diff_vs_hf": diffs,
            "img_per_s": {n: batch / _bench.median(t) for n, t in times.items()},
            "gflop_per_s": {n: flops / _bench.median(t) / 1e9 for n, t in times.items()},
            "ratio_vs_hf": {n: _bench.paired_ratio(times, n, "hf") for n in sides if n != "hf"},
        }
        if peak:
            row["mfu_percent"] = {n: 100 * g / (peak * 1e3) for n, g in row["gflop_per_s"].items()}
        result["rows"].append(row)
        ips, ratio = row["img_per_s"], row["ratio_vs_hf"]
        line = f"{size}px batch {batch}: hf {ips['hf']:.2f} img/s | eager {ips['eager']:.2f} ({ratio['eager']:.3f}x)"
        if "compiled" in ips:
            line += f" | compiled {ips['compiled']:.2f} ({ratio['compiled']:.3f}x)"
        if "autotune" in ips:
            line += f" | autotune {ips['autotune']:.2f} ({ratio['autotune']:.3f}x)"
        line += " | GFLOP/s " + ", ".join(f"{n} {g:.0f}" for n, g in row["gflop_per_s"].items())
        if peak:
            line += " | MFU " + ", ".join(f"{n} {m:.1f}%" for n, m in row["mfu_percent"].items())
        line += " | rel. diff vs hf " + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items())
        print(line, flush=True)
        for text in profiles:
            print(text)
    if args.gemm_ceiling and device.type == "cpu":
        v = eager.cfg.vision
        tokens_ = batch_sizes[0] * (2 + (args.sizes[0] // v.patch_size) ** 2)
        result["gemm_ceiling_gflop_per_s"] = gemm_ceiling(tokens_, v.width, v.mlp_hidden)
        print(
            f"plain fp32 matmul [{tokens_}x{v.width}]x[{v.width}x{v.mlp_hidden}]: "
            f"{result['gemm_ceiling_gflop_per_s']:.0f} GFLOP/s (the ceiling of every side)"
        )
    result["load"] = _bench.load_note(torch.get_num_threads())
    print(result["load"])
    _bench.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
