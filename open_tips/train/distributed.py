"""torch.distributed set-up for torchrun launches (DDP or FSDP2), and no-op fallbacks for one process."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from open_tips.train.config import DistributedSection
from open_tips.train.fsdp import apply_fsdp


@dataclass
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean_values(self, values: dict[str, float]) -> dict[str, float]:
        """Averages scalar metrics over ranks (so logged losses are those of the global batch)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device or "cpu")
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` holds on every rank (so all ranks skip a non-finite step together)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([0.0 if flag else 1.0], device=self.device or "cpu")
        dist.all_reduce(tensor)
        return bool(tensor.item() == 0.0)


def init_distributed(cfg: DistributedSection) -> DistContext:
    """Initialises the process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT); one process without those variables runs undistributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.strategy == "none" or world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=cfg.timeout_s))
    return DistContext(enabled=True, rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap(
    objective: nn.Module,
    cfg: DistributedSection,
    ctx: DistContext,
    device: torch.device,
    precision: str = "fp32",
) -> nn.Module:
    if not ctx.enabled:
        return objective
    strategy = "ddp" if cfg.strategy == "auto" else cfg.strategy
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Centers are all-reduced inside the losses, so buffers need no broadcast; unused parameters occur
        # when a loss is switched off (e.g. mask_token without MIM).
        return DistributedDataParallel(
            objective,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=True,
        )
    if strategy == "fsdp":
        return apply_fsdp(objective, precision)
    return objective


def no_sync_unless(module: nn.Module, sync: bool):
    if not sync and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(module: nn.Module, max_norm: float, ctx: DistContext) -> torch.Tensor:
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    if max_norm and max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return norm.detach()


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def full_state(objective: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded, CPU state dicts keyed by parameter names (not optimiser indices), the same for one
    process, DDP and FSDP2, so a checkpoint resumes on any world size and strategy."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(objective, options=options),
        get_optimizer_state_dict(objective, optimizer, options=options),
    )


def load_full_state(
    objective: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(objective, model_state, options=options)
    set_optimizer_state_dict(objective, optimizer, optimizer_state, options=options)
