"""The training loop: schedules, mixed precision, accumulation, clipping, EMA teacher, checkpoints, logs."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from open_tips.data.tokenizer import Tokenizer
from open_tips.eval.suite import evaluate_builtin
from open_tips.formats.load import load_pretrained
from open_tips.models.configs import get_config
from open_tips.models.lora import merge_lora_state
from open_tips.models.tips import TIPSModel
from open_tips.train import dcp as sharded_ckpt
from open_tips.train import distributed as dist_utils
from open_tips.train.checkpoint import (
    checkpoint_path,
    clean_stale_temporaries,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_text_atomic,
)
from open_tips.train.config import TrainConfig
from open_tips.train.data import build_tokenizer, build_train_batches
from open_tips.train.flops import FlopsMeter, peak_tflops
from open_tips.train.interrupt import GracefulStop
from open_tips.train.metrics import MetricsLogger, plot_losses
from open_tips.train.monitor import CollapseWatch
from open_tips.train.objective import build_objective
from open_tips.train.optim import build_optimizer, set_schedules
from open_tips.train.periodic_eval import PeriodicEval
from open_tips.train.schedules import cosine, linear_warmup, run_steps, warmup_cosine
from open_tips.train.trainable import apply_trainable, copy_teacher_heads, hold_all_but_heads

log = logging.getLogger("open_tips.train")


class NonFiniteLossError(RuntimeError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def build_model(cfg: TrainConfig, tokenizer: Tokenizer) -> TIPSModel:
    if cfg.model.init_from:
        model = load_pretrained(cfg.model.init_from, tokenizer=tokenizer)
        if model.text is None:
            raise ValueError(f"{cfg.model.init_from}: training needs a text tower")
        if model.cfg.text.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} pieces but {cfg.model.init_from} only "
                f"{model.cfg.text.vocab_size} token embeddings"
            )
        model.train()
        return model
    model_cfg = get_config(cfg.model.name)
    model_cfg.vision.drop_path_rate = cfg.model.drop_path_rate
    model_cfg.vision.layerscale_init = cfg.model.layerscale_init
    # A from-scratch model gets exactly the tokenizer's vocabulary.
    model_cfg.text.vocab_size = tokenizer.vocab_size
    model_cfg.text.max_len = tokenizer.max_len
    model_cfg.image_size = cfg.data.global_size
    return TIPSModel(model_cfg, tokenizer=tokenizer)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, resume: bool = False, max_steps_this_run: int | None = None) -> dict[str, Any]:
    """Runs (or resumes) training as configured; returns a summary dict. ``max_steps_this_run`` stops early
    (used by tests to simulate interruption)."""
    ctx = dist_utils.init_distributed(cfg.distributed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device) if not ctx.enabled or ctx.device is None else ctx.device
    run_dir = Path(cfg.train.output_dir)
    ckpt_dir = run_dir / "checkpoints"
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        clean_stale_temporaries(ckpt_dir)  # left by a run killed while writing a checkpoint
        sharded_ckpt.clean_stale_partials(ckpt_dir)
    ctx.barrier()

    _seed_everything(cfg.train.seed)
    tokenizer = build_tokenizer(cfg, run_dir, ctx)
    model = build_model(cfg, tokenizer)
    model.set_grad_checkpointing(cfg.model.grad_checkpointing)
    # Before the objective: the EMA teacher copies the (LoRA-adapted) tower with the same parameter names.
    trainable_counts = apply_trainable(model, cfg.model.trainable, cfg.model.lora)
    if ctx.is_main:
        log.info("trainable parameters per tower: %s", trainable_counts)
    objective = build_objective(cfg, model).to(device)
    # Wrap before building the optimiser: FSDP2 replaces parameters by sharded ones.
    wrapped = dist_utils.wrap(objective, cfg.distributed, ctx, device, cfg.train.precision)
    optimizer = build_optimizer(objective, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")

    start_step = 0
    nonfinite_total = 0
    caption_fallbacks = 0  # samples whose CLS2 caption was the web caption (no synthetic caption)
    if resume:
        found = _latest_any_checkpoint(ckpt_dir)  # either format: a run may switch train.checkpoint_format
        if found is not None and found.suffix == ".dcp":
            payload = sharded_ckpt.load_sharded(found, objective, optimizer)  # each rank reads its shards
        elif found is not None:
            payload = load_checkpoint(found)
            dist_utils.load_full_state(objective, optimizer, payload["objective"], payload["optimizer"])
        if found is not None:
            scaler.load_state_dict(payload["scaler"])
            rngs = payload["rng"]
            # A different world size resumes with rank 0's generator state on every new rank.
            set_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0])
            start_step = int(payload["step"])
            nonfinite_total = int(payload.get("nonfinite_steps", 0))
            caption_fallbacks = int(payload.get("caption_fallbacks", 0))
            if ctx.is_main:
                log.info("resumed from %s at step %d", found, start_step)
        elif ctx.is_main:
            log.info("no checkpoint in %s: starting from scratch", ckpt_dir)

    compiled = torch.compile(wrapped) if cfg.model.compile else wrapped

    metrics = MetricsLogger(
        run_dir,
        enabled=ctx.is_main,
        tensorboard=cfg.logging.tensorboard,
        wandb=cfg.logging.wandb,
        wandb_project=cfg.logging.wandb_project,
        wandb_name=cfg.logging.wandb_name,
        config=cfg.to_dict(),
    )
    periodic = _periodic_eval(cfg, ctx, device)
    last_eval: dict[str, float] = {}
    metrics.truncate_after(start_step)
    total_steps = cfg.train.steps
    end_step = (
        total_steps if max_steps_this_run is None else min(total_steps, start_step + max_steps_this_run)
    )
    batches = build_train_batches(cfg, tokenizer, start_step, ctx)
    progress = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not ctx.is_main,
        dynamic_ncols=True,
        desc="train",
        mininterval=1.0,
    )
    # Non-finite steps, counted on the device: the current run, its longest since the last check, the total.
    bad_run = torch.zeros((), device=device)
    bad_peak = torch.zeros((), device=device)
    bad_total = torch.zeros((), device=device)
    # Checked at least every max_nonfinite_steps steps, so a run stops at most that many steps late.
    check_every = max(1, min(cfg.train.log_every, cfg.train.max_nonfinite_steps))
    # Skipping a non-finite step on the device needs an optimiser that takes a found_inf flag (fused AdamW).
    device_skip = not scaler.is_enabled() and getattr(optimizer, "_step_supports_amp_scaling", False)
    grad_norm = torch.zeros(())
    flops_meter = FlopsMeter(objective, ctx.world_size)  # per rank, from the shapes of the views run
    device_peak = peak_tflops(device, cfg.train.precision, cfg.train.peak_tflops)
    collapse_watch = CollapseWatch(cfg.loss.head_out_dim, cfg.train.collapse_patience)
    collapse_warnings: list[str] = []
    skip_by_worker: dict[str, dict[str, int]] = {}
    images_seen = 0
    window_start = time.perf_counter()
    last_metrics: dict[str, float] = {}
    objective.train()

    def save(step: int) -> dict:
        payload = {
            "step": step,
            "model_config": model.cfg.to_dict(),
            "scaler": scaler.state_dict(),
            "rng": ctx.all_gather_object(rng_state()),
            "nonfinite_steps": nonfinite_total,
            "caption_fallbacks": caption_fallbacks,
            "train_config": cfg.to_dict(),
        }
        if cfg.train.checkpoint_format == "sharded":  # every rank writes its shards; nothing is gathered
            try:
                sharded_ckpt.save_sharded(
                    ckpt_dir, step, objective, optimizer, payload, keep=cfg.train.keep_checkpoints
                )
            except OSError as err:
                log.error("could not save checkpoint at step %d (%s); previous checkpoints kept", step, err)
            return payload
        objective_state, optimizer_state = dist_utils.full_state(objective, optimizer)
        payload["objective"] = objective_state
        payload["model"] = {
            k[len("model.") :]: v for k, v in objective_state.items() if k.startswith("model.")
        }
        payload["optimizer"] = optimizer_state
        if ctx.is_main:
            try:
                save_checkpoint(payload, ckpt_dir, step, keep=cfg.train.keep_checkpoints)
            except OSError as err:  # e.g. disk full: the previous checkpoints are intact
                log.error("could not save checkpoint at step %d (%s); previous checkpoints kept", step, err)
        ctx.barrier()
        return payload

    # Warm-ups are fractions of the run (as DINOv2's are of its epochs) unless given in steps.
    lr_warmup = run_steps(cfg.optim.warmup_steps, cfg.optim.warmup_fraction, total_steps)
    temp_warmup = run_steps(
        cfg.loss.teacher_temp_warmup_steps, cfg.loss.teacher_temp_warmup_fraction, total_steps
    )
    ssl_warmup_steps = cfg.loss.ssl_weight_warmup * total_steps  # unrounded: the ramp is linear in step
    step = start_step
    stop_signal: str | None = None
    stopper = GracefulStop(verbose=ctx.is_main).__enter__()  # SIGINT/SIGTERM: save and stop after a step
    for step in range(start_step, end_step):
        lr = warmup_cosine(step, total_steps, cfg.optim.lr, cfg.optim.min_lr, lr_warmup)
        wd = cosine(step, total_steps, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
        momentum = cosine(step, total_steps, cfg.teacher.momentum_start, cfg.teacher.momentum_end)
        teacher_temp = linear_warmup(step, temp_warmup, cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp)
        set_schedules(optimizer, lr, wd)
        ssl_scale = min(1.0, step / ssl_warmup_steps) if ssl_warmup_steps > 0 else 1.0
        ssl_scales = {"distill": ssl_scale, "mask": ssl_scale}

        # Losses and the finite flag stay on the device; the host reads them on check steps only, so a
        # step queues its kernels without waiting for the previous one to finish.
        sums: dict[str, torch.Tensor] = {}
        step_finite = torch.ones((), dtype=torch.bool, device=device)
        for micro in range(cfg.train.accum_steps):
            batch = next(batches)
            skip_by_worker.update(batch.pop("skip_counts", {}) or {})
            caption_fallbacks += int(batch.pop("caption_fallbacks", 0) or 0)
            batch = _to_device(batch, device)
            flops_meter.add(batch)
            sync = micro == cfg.train.accum_steps - 1
            with dist_utils.no_sync_unless(wrapped, sync), _autocast(cfg.train.precision, device):
                losses = compiled(batch, teacher_temp, ssl_scales)
            loss = losses["loss"] / cfg.train.accum_steps
            step_finite = step_finite & torch.isfinite(loss.detach())
            scaler.scale(loss).backward()
            for key, value in losses.items():
                part = value.detach().float() / cfg.train.accum_steps
                sums[key] = sums[key] + part if key in sums else part
            images_seen += batch["global_crops"].shape[0] * ctx.world_size
        finite = _all_ranks_finite(step_finite, ctx)
        bad = (~finite).float()
        bad_run = (bad_run + 1.0) * bad  # consecutive non-finite steps; 0 after a good one
        bad_peak = torch.maximum(bad_peak, bad_run)
        bad_total = bad_total + bad

        is_log = (step + 1) % cfg.train.log_every == 0 or step == start_step or step + 1 == total_steps
        is_save = (step + 1) % cfg.train.save_every == 0 and step + 1 < end_step
        if device_skip:
            skipped = False
        else:  # fp16 (the scaler reads its own inf flag every step anyway) or an optimiser without found_inf
            skipped = not bool(finite)
        if not skipped:
            if step < cfg.train.head_warmup_steps:
                hold_all_but_heads(objective)  # towers and temperature held; before clipping
            scaler.unscale_(optimizer)
            grad_norm = dist_utils.clip_grad_norm(objective, cfg.optim.grad_clip, ctx)
            if step < cfg.optim.freeze_last_layer_steps:
                for name, param in objective.named_parameters():
                    if "last_layer" in name:
                        param.grad = None
            if device_skip:
                optimizer.found_inf = (
                    bad  # the fused AdamW kernel leaves params, moments and step as they are
                )
            scaler.step(optimizer)
            if device_skip:
                del optimizer.found_inf
            scaler.update()
            # A skipped step leaves the teacher as it is too (momentum 1).
            objective.update_teacher(torch.where(finite, momentum, 1.0) if device_skip else momentum)
        optimizer.zero_grad(set_to_none=True)
        if step + 1 == cfg.train.head_warmup_steps:
            copy_teacher_heads(objective)

        if is_log or is_save or (step + 1) % check_every == 0 or skipped or step + 1 == end_step:
            peak, now, seen = (int(v) for v in torch.stack([bad_peak, bad_run, bad_total]).tolist())
            if seen:
                log.warning(
                    "%d non-finite loss step(s) skipped up to step %d (%d in a row now)", seen, step, now
                )
            nonfinite_total += seen
            bad_total = torch.zeros_like(bad_total)
            bad_peak = bad_run.clone()
            if peak >= cfg.train.max_nonfinite_steps:
                stopper.__exit__()
                progress.close()
                metrics.close()
                raise NonFiniteLossError(
                    f"{peak} consecutive non-finite losses by step {step}; stopping. "
                    f"The last good checkpoint is kept in {ckpt_dir}."
                )
            step_was_finite = now == 0
        else:
            step_was_finite = True  # not read on this step; only logged steps need it
        if is_log and step_was_finite:
            last_metrics = {
                **_read_means(sums, ctx),
                "lr": lr,
                "weight_decay": wd,
                "teacher_momentum": momentum,
                "teacher_temp": teacher_temp,
                "grad_norm": float(grad_norm),
            }
            for reason, count in _total_skips(skip_by_worker, ctx).items():
                last_metrics[f"skipped_{reason}"] = count
            last_metrics["caption_fallbacks"] = caption_fallbacks
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            last_metrics["images_per_s"] = images_seen / elapsed  # whole job
            last_metrics["images_per_s_per_rank"] = images_seen / elapsed / ctx.world_size
            last_metrics.update(
                flops_meter.read(elapsed, device_peak)
            )  # tflops per rank, mfu with a known peak
            images_seen, window_start = 0, time.perf_counter()
            metrics.log(step, last_metrics)
            if ctx.is_main:
                collapse_warnings.extend(collapse_watch.update(step, last_metrics))
            progress.set_postfix(
                {k.replace("loss_", ""): f"{v:.3f}" for k, v in last_metrics.items() if k.startswith("loss")}
                | {"lr": f"{lr:.1e}"},
                refresh=False,
            )
        progress.update(1)
        if periodic is not None and (step + 1) % cfg.train.eval_every == 0:
            last_eval = periodic(model)  # rank 0 only, on the unwrapped model: no collectives
            metrics.log(step, last_eval)
        if (step + 1) % cfg.train.save_every == 0 and step + 1 < end_step:
            save(step + 1)
        if stopper.requested(ctx):
            stop_signal, end_step = stopper.signal_name or "signal", step + 1
            break
    stopper.__exit__()
    nonfinite_total += int(bad_total.item())  # steps since the last check (a signal stops between checks)

    final_step = end_step
    final_payload = save(final_step)
    if cfg.train.checkpoint_format == "sharded" and final_step >= total_steps:
        final_payload["model"] = sharded_ckpt.full_module_state(
            objective.model
        )  # the export only: collective
    progress.close()
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "steps": final_step,
        "nonfinite_steps": nonfinite_total,
        "last": last_metrics,
        "finished": final_step >= total_steps,
        "skipped_samples": _total_skips(skip_by_worker, ctx),
        "caption_fallbacks": caption_fallbacks,
        "interrupted": stop_signal,
        "checkpoint": str(
            sharded_ckpt.sharded_path(ckpt_dir, final_step)
            if cfg.train.checkpoint_format == "sharded"
            else checkpoint_path(ckpt_dir, final_step)
        ),
        "collapse_warnings": collapse_warnings,
        "last_periodic_eval": last_eval,
    }
    if final_step >= total_steps and ctx.is_main:
        export_dir = run_dir / "final"
        # Export from the full state so that sharded (FSDP) runs export the same way as single-process ones.
        model = TIPSModel(model.cfg, tokenizer=tokenizer)
        model.load_state_dict(merge_lora_state(final_payload["model"])[0])  # LoRA runs export merged
        model.save_pretrained(export_dir)
        summary["export"] = str(export_dir)
        plot = plot_losses(run_dir / "metrics.jsonl", run_dir / "loss_curves.png", cfg.loss.head_out_dim)
        summary["loss_plot"] = str(plot) if plot else None
        if cfg.train.evaluate_at_end:
            summary["eval"] = _evaluate(model, run_dir, cfg, device)
    metrics.close()
    ctx.barrier()
    dist_utils.cleanup(ctx)
    return summary


def _latest_any_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newer of the latest full (.pt) and the latest sharded (.dcp) checkpoint."""
    full, sharded = latest_checkpoint(ckpt_dir), sharded_ckpt.latest_sharded(ckpt_dir)
    if full is None or sharded is None:
        return full or sharded
    return sharded if sharded_ckpt.step_of(sharded) > int(full.stem.split("_")[1]) else full


def _all_ranks_finite(flag: torch.Tensor, ctx) -> torch.Tensor:
    """``flag`` AND-ed over ranks, on the device (an all-reduce, no host sync)."""
    if not ctx.enabled:
        return flag
    count = (~flag).float()
    torch.distributed.all_reduce(count)
    return count == 0


def _read_means(sums: dict[str, torch.Tensor], ctx) -> dict[str, float]:
    """The step's device-side metrics as floats, averaged over ranks: one transfer for all of them."""
    keys = sorted(sums)
    values = torch.stack([sums[k].reshape(()) for k in keys])
    if ctx.enabled:
        torch.distributed.all_reduce(values)
        values = values / ctx.world_size
    return dict(zip(keys, values.tolist()))


def _total_skips(by_worker: dict[str, dict[str, int]], ctx) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counts in by_worker.values():
        for reason, count in counts.items():
            totals[reason] = totals.get(reason, 0) + int(count)
    return totals


def _periodic_eval(cfg: TrainConfig, ctx, device: torch.device):
    """The in-training evaluator (``train.eval_every``) on the main process, or None."""
    if not cfg.train.eval_every:
        return None
    if ctx.enabled and cfg.distributed.strategy == "fsdp":
        # FSDP2 shards the weights: a forward on one rank alone would wait for the others forever.
        raise ValueError("train.eval_every is not supported with distributed.strategy=fsdp (use ddp)")
    if not ctx.is_main:
        return None
    return PeriodicEval(
        cfg.train.eval_source,
        cfg.train.eval_tasks,
        image_size=cfg.data.global_size,
        device=device,
        seed=cfg.train.seed,
        max_images=cfg.train.eval_max_images,
    )


def _evaluate(model: TIPSModel, run_dir: Path, cfg: TrainConfig, device: torch.device) -> dict | None:
    model.eval()
    results = evaluate_builtin(
        model, run_dir / "eval", image_size=cfg.data.global_size, device=device, seed=cfg.train.seed
    )
    return results if isinstance(results, dict) else None
