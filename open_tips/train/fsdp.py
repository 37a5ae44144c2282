"""FSDP2 (``fully_shard``) for the TIPS objective.

Each transformer block is its own shard unit; the teacher's copies are sharded the same way as the student
modules they track, so the EMA update is a local operation on matching shards.
"""

from __future__ import annotations

import torch
from torch import nn


def apply_fsdp(objective: nn.Module, precision: str = "fp32") -> nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    model = objective.model
    for block in model.vision.blocks:
        fully_shard(block, mp_policy=policy)
    for block in model.text.transformer.resblocks:
        fully_shard(block, mp_policy=policy)
    teacher = getattr(objective, "teacher", None)
    if teacher is not None:
        if teacher.vision is not None:
            for block in teacher.vision.blocks:
                fully_shard(block, mp_policy=policy)
            fully_shard(teacher.vision, mp_policy=policy)
        for head in (teacher.dino_head, teacher.ibot_head):
            if head is not None:
                fully_shard(head, mp_policy=policy)
    for head in (objective.dino_head, objective.ibot_head):
        if head is not None:
            fully_shard(head, mp_policy=policy)
    fully_shard(objective, mp_policy=policy)
    return objective
