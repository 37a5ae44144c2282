"""Training step: throughput and peak memory per loss configuration, and open_tips vs open_clip.

Default mode: for each preset (tiny, b14) and each configuration (CLIP only, + distill, + MIM, full TIPS,
TIPSv2 head-only EMA, + SPARC) it times optimisation steps on the built-in data after warm-up and reports
images/s and peak memory (each configuration in its own process): resident set size on CPU, max allocated
on GPU (with MFU from counted FLOPs).

``--vs open_clip``: one process, paired. open_tips in CLIP-only mode (``loss.distill=false loss.mim=false
loss.pairs=web``: one image and one text forward, InfoNCE) against open_clip's training step
(``open_clip.CLIP`` + ``open_clip.loss.ClipLoss``, as its ``train_one_epoch`` does) on the same shapes:
ViT (patch 14, width, depth, heads, MLP, LayerScale, no pre-norm) and text tower (width, depth, heads, MLP,
64 tokens, vocabulary, no causal mask), the same batch (global crops and web caption ids), precision,
threads, fused AdamW (lr, betas, weight decay) and gradient clipping. Then what each TIPS term costs on top
of the CLIP step: ``+dual`` (CLS2 against the synthetic caption: a second text forward), ``+distill``
(DINO with the EMA teacher and the local crops), ``+mim`` (iBOT: masked view and teacher), ``+sparc``,
and the full ``tips`` objective, each paired against the CLIP step (ratio = its step time / CLIP's).

    .venv/bin/python benchmarks/train_step.py --presets tiny b14 --steps 3 --batch-size 4
    .venv/bin/python benchmarks/train_step.py --vs open_clip                 # b14 shapes, batch 8, CPU fp32
    .venv/bin/python benchmarks/train_step.py --vs open_clip --quick         # tiny shapes: a smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

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


# The CLIP step of open_tips and what each TIPS term adds on top of it (--vs open_clip).
CLIP_ONLY = ["loss.distill=false", "loss.mim=false", "loss.pairs=web"]
ON_TOP = {
    "+dual": ["loss.distill=false", "loss.mim=false", "loss.pairs=dual"],
    "+distill": ["loss.mim=false", "loss.pairs=web"],
    "+mim": ["loss.distill=false", "loss.pairs=web"],
    "+sparc": CLIP_ONLY + ["loss.sparc_weight=1.0"],
    "tips": [],
}


def word_hash_tokenizer(vocab: int, length: int):
    """A stand-in word hasher: the benchmark measures the model, not SentencePiece."""
    import torch

    def tokenize(texts):
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = text.split()[:length]
            ids[row, : len(words)] = torch.tensor([hash(w) % (vocab - 1) + 1 for w in words])
        return ids, ids == 0

    return tokenize


def open_tips_step(preset: str, overrides: list[str], batch_size: int, dev, precision: str):
    """(step function, the batch, the config) of open_tips' objective + fused AdamW + clipping."""
    import torch

    from open_tips.data.builtin import BuiltinShapes
    from open_tips.models import create_model, get_config
    from open_tips.train.config import load_config
    from open_tips.train.data import _batch_builder
    from open_tips.train.objective import build_objective
    from open_tips.train.optim import build_optimizer

    cfg = load_config(preset, overrides=overrides + [f"data.batch_size={batch_size}"])
    model_cfg = get_config(cfg.model.name)
    tokenizer = word_hash_tokenizer(model_cfg.text.vocab_size, model_cfg.text.max_len)
    torch.manual_seed(0)
    objective = build_objective(cfg, create_model(model_cfg)).to(dev).train()
    optimizer = build_optimizer(objective, cfg.optim)
    data = BuiltinShapes(batch_size, cfg.data.builtin_image_size)
    batch = _batch_builder(cfg, tokenizer)(
        [data[i] for i in range(batch_size)], seeds=list(range(batch_size))
    )
    batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    params = [p for p in objective.parameters() if p.requires_grad]

    def step():
        with autocast:
            loss = objective(batch, 0.04)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.update_teacher(0.996)
        return loss

    return step, batch, cfg, model_cfg


def open_clip_step(model_cfg, cfg, batch: dict, dev, precision: str):
    """open_clip's training step on the same shapes, batch and optimiser settings."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    v, t = model_cfg.vision, model_cfg.text
    vision = CLIPVisionCfg(
        layers=v.depth,
        width=v.width,
        head_width=v.width // v.heads,
        mlp_ratio=v.mlp_hidden / v.width,
        patch_size=v.patch_size,
        image_size=cfg.data.global_size,
        ls_init_value=1.0,  # LayerScale, as the TIPS ViT
        no_ln_pre=True,  # TIPS has no norm before the blocks
    )
    text = CLIPTextCfg(
        context_length=t.max_len,
        vocab_size=t.vocab_size,
        width=t.width,
        heads=t.heads,
        layers=t.depth,
        mlp_ratio=t.mlp_hidden / t.width,
        no_causal_mask=True,  # TIPS' text tower is bidirectional
    )
    torch.manual_seed(0)
    model = (
        open_clip.CLIP(embed_dim=v.width, vision_cfg=vision, text_cfg=text, output_dict=True).to(dev).train()
    )
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        weight_decay=cfg.optim.weight_decay,
        fused=True,
    )
    images, texts = batch["global_crops"], batch["web_ids"]
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            out = model(images, texts)
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return loss

    return step, model


def vs_open_clip(args) -> dict:
    import gc

    import open_clip
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _bench

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or "cpu")
    preset = "tiny" if args.quick else args.presets[0]
    batch_size = args.batch_size[0]
    repeats = args.steps
    ours, batch, cfg, model_cfg = open_tips_step(preset, CLIP_ONLY, batch_size, dev, args.precision)
    theirs, clip_model = open_clip_step(model_cfg, cfg, batch, dev, args.precision)
    result: dict = {
        "benchmark": "train_step_vs_open_clip",
        "preset": preset,
        "model": model_cfg.name,
        "batch": batch_size,
        "global_size": cfg.data.global_size,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "open_clip": open_clip.__version__,
        "torch": torch.__version__,
    }
    print(
        f"train step vs open_clip: {model_cfg.name} shapes, batch {batch_size} at {cfg.data.global_size} px, "
        f"{args.precision}, {torch.get_num_threads()} threads, {repeats} paired steps after {args.warmup} warm-up"
    )
    losses = {"open_tips_clip": [], "open_clip": []}
    for _ in range(args.warmup):
        losses["open_tips_clip"].append(float(ours().detach()))
        losses["open_clip"].append(float(theirs().detach()))
    times = _bench.paired({"open_tips_clip": ours, "open_clip": theirs}, repeats, dev)
    result["img_per_s"] = {n: batch_size / _bench.median(t) for n, t in times.items()}
    result["ratio_vs_open_clip"] = _bench.paired_ratio(times, "open_tips_clip", "open_clip")
    result["first_loss"] = {n: v[0] if v else None for n, v in losses.items()}
    result["log_batch"] = float(torch.log(torch.tensor(float(batch_size))))
    print(
        f"open_clip        {result['img_per_s']['open_clip']:8.2f} img/s\n"
        f"open_tips (CLIP) {result['img_per_s']['open_tips_clip']:8.2f} img/s  ratio "
        f"{result['ratio_vs_open_clip']:.3f}x  (first losses: open_tips {result['first_loss']['open_tips_clip']:.3f}, "
        f"open_clip {result['first_loss']['open_clip']:.3f}, log(batch) {result['log_batch']:.3f})",
        flush=True,
    )
    del theirs, clip_model
    gc.collect()
    result["on_top"] = {}
    for name in args.on_top:
        extra, _, _, _ = open_tips_step(preset, ON_TOP[name], batch_size, dev, args.precision)
        for _ in range(args.warmup):
            extra()
        pair = _bench.paired({"clip": ours, name: extra}, repeats, dev)
        cost = 1.0 / _bench.paired_ratio(pair, name, "clip")  # its step time / the CLIP step's
        result["on_top"][name] = {
            "img_per_s": batch_size / _bench.median(pair[name]),
            "step_time_vs_clip": cost,
        }
        print(
            f"{name:16} {result['on_top'][name]['img_per_s']:8.2f} img/s  step time {cost:.2f}x the CLIP step",
            flush=True,
        )
        del extra
        gc.collect()
    result["load"] = _bench.load_note(torch.get_num_threads())
    print(result["load"])
    _bench.write_json(args.json, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
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
    parser.add_argument("--vs", choices=["open_clip"], default=None, help="paired comparison (see above)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="--vs: autocast dtype")
    parser.add_argument("--threads", type=int, default=0, help="--vs: torch threads (0: default)")
    parser.add_argument("--on-top", nargs="*", default=list(ON_TOP), choices=list(ON_TOP), help="--vs")
    parser.add_argument("--json", default=None, help="--vs: write the results here")
    parser.add_argument("--quick", action="store_true", help="--vs: tiny shapes, batch 4, 2 steps")
    args = parser.parse_args(argv)
    if args.vs:
        if args.quick:
            args.batch_size, args.steps = [4], 2
        elif args.batch_size == [32, 4]:
            args.batch_size = [8]
        if args.presets == ["tiny", "b14"]:
            args.presets = ["b14"]
        return vs_open_clip(args)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(**spec)))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = args.batch_size + [args.batch_size[-1]] * (len(args.presets) - len(args.batch_size))
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
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
            rows.append({"preset": preset, "config": name, "batch": batch, **result})
            print(
                f"{preset:8} {name:18} {batch:5d} {result['images_per_s']:9.2f} {result['peak_mb']:9.0f}",
                flush=True,
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"benchmark": "train_step", "device": device, "rows": rows}, indent=2)
        )
    return {"rows": rows}


if __name__ == "__main__":
    main()
