"""Training throughput and peak memory per loss configuration (each in its own process).

For each preset (tiny, b14) and each configuration (CLIP only, + distill, + MIM, full TIPS, TIPSv2 head-only
EMA, + SPARC) it times optimisation steps on the built-in data after warm-up and reports images/s and peak
memory: resident set size on CPU, max allocated on GPU (with MFU from counted FLOPs).

    .venv/bin/python benchmarks/train_step.py --presets tiny b14 --steps 3 --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = {
    "clip": ["loss.distill=false", "loss.mim=false"],
    "+distill": ["loss.mim=false"],
    "+mim": ["loss.distill=false"],
    "tips": [],
    "tipsv2-head-ema": ["teacher.kind=head_ema", "loss.ibot_all_tokens=true"],
    "tips+sparc": ["loss.sparc_weight=1.0"],
}


def worker(preset: str, overrides: list[str], steps: int, warmup: int, batch_size: int, device: str) -> dict:
    import torch

    from open_tips.data.builtin import BuiltinShapes
    from open_tips.models import create_model, get_config
    from open_tips.train.config import load_config
    from open_tips.train.data import _batch_builder
    from open_tips.train.objective import build_objective
    from open_tips.train.optim import build_optimizer

    cfg = load_config(preset, overrides=overrides + [f"data.batch_size={batch_size}"])
    dev = torch.device(device)

    model_cfg = get_config(cfg.model.name)
    vocab, length = model_cfg.text.vocab_size, model_cfg.text.max_len

    class Tok:  # a stand-in word hasher: the benchmark measures the model, not SentencePiece
        def __call__(self, texts):
            ids = torch.zeros(len(texts), length, dtype=torch.long)
            for row, text in enumerate(texts):
                words = text.split()[:length]
                ids[row, : len(words)] = torch.tensor([hash(w) % (vocab - 1) + 1 for w in words])
            return ids, ids == 0

    torch.manual_seed(0)
    objective = build_objective(cfg, create_model(model_cfg)).to(dev)
    optimizer = build_optimizer(objective, cfg.optim)
    data = BuiltinShapes(batch_size, cfg.data.builtin_image_size)
    batch = _batch_builder(cfg, Tok())([data[i] for i in range(batch_size)])
    batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    times = []
    for step in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = objective(batch, 0.04)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.update_teacher(0.996)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    result = {"images_per_s": batch_size / (sum(times) / len(times))}
    if dev.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "b14"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 4], help="one per preset")
    parser.add_argument("--device", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(**spec)))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.batch_size + [args.batch_size[-1]] * (len(args.presets) - len(args.batch_size))
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'preset':8} {'config':18} {'batch':>5} {'img/s':>9} {'peak MB':>9}")
    for preset, batch in zip(args.presets, sizes):
        for name in args.configs:
            spec = {
                "preset": preset,
                "overrides": CONFIGS[name],
                "steps": args.steps,
                "warmup": args.warmup,
                "batch_size": batch,
                "device": device,
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                print(f"{preset:8} {name:18} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{preset:8} {name:18} {batch:5d} {result['images_per_s']:9.2f} {result['peak_mb']:9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
