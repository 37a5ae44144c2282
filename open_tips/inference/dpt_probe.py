"""DPT decoders fitted as probes on a frozen TIPS tower (``open-tips probe fit --head dpt``).

The decoder is the released architecture (``open_tips.models.dpt``), trained from scratch on the cached
outputs of its four intermediate blocks. Losses per task: cross-entropy (ignore 255) on the class logits
upsampled bilinearly to the target; L1 on the decoded depth (the expectation over the bins, as the released
heads decode it) at valid pixels (depth > 0); 1 - cosine on the normals at valid pixels (non-zero target).
The file it gives is an open_tips dense-heads file, so `open-tips dense --heads` and `predict_dense` run it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from open_tips.formats.common import CheckpointError
from open_tips.formats.dpt import OWN_FORMAT, read_dense_heads_file
from open_tips.models.dpt import DPTConfig, DPTDecoder, canonical_task
from open_tips.utils.atomic import atomic_write

IGNORE = 255  # unlabelled pixels, as open_tips.eval.metrics.IGNORE (eval sits above this layer)


@torch.no_grad()
def block_tokens(
    model, pixels: Sequence[torch.Tensor] | torch.Tensor, layers: Sequence[int], batch_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS1 [N, 4, D], patches [N, 4, h, w, D]) of ``layers`` after the final norm, float32 on the CPU,
    for images [N, 3, H, W] of one size."""
    vision = model.vision if hasattr(model, "vision") else model
    device = next(vision.parameters()).device
    cls_parts, patch_parts = [], []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        chunk = torch.stack(list(chunk)) if not isinstance(chunk, torch.Tensor) else chunk
        chunk = chunk.to(device)
        grid = vision.grid_size(chunk)
        tokens = vision.get_intermediate_layers(chunk, list(layers), norm=True)
        cls_parts.append(torch.stack([t[:, 0] for t in tokens], dim=1).float().cpu())
        patches = [t[:, 2:].reshape(t.shape[0], *grid, -1) for t in tokens]
        patch_parts.append(torch.stack(patches, dim=1).float().cpu())
    return torch.cat(cls_parts), torch.cat(patch_parts)


def _levels(cls: torch.Tensor, patches: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(cls[:, i], patches[:, i]) for i in range(cls.shape[1])]


def dpt_loss(decoder: DPTDecoder, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task's loss of the decoder ``output`` (its forward) against ``target`` at the target's size:
    labels [B, H, W] (segmentation), metres [B, H, W] (depth), unit vectors [B, H, W, 3] (normals)."""
    size = tuple(target.shape[1:3])
    task = decoder.task
    if task == "segmentation":
        logits = F.interpolate(output, size=size, mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, target.long(), ignore_index=IGNORE)
    if task == "depth":
        depth = F.interpolate(output, size=size, mode="bilinear", align_corners=False)[:, 0]
        valid = target > 0
        return ((depth - target).abs() * valid).sum() / valid.sum().clamp_min(1)
    normals = F.interpolate(output, size=size, mode="bilinear", align_corners=False)
    target = target.permute(0, 3, 1, 2)
    valid = target.norm(dim=1) > 0
    cosine = F.cosine_similarity(normals, target, dim=1, eps=1e-6)
    return ((1 - cosine) * valid).sum() / valid.sum().clamp_min(1)


def fit_dpt_probe(
    cls: torch.Tensor,
    patches: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    layers: Sequence[int],
    *,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    channels: int = 256,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> tuple[DPTDecoder, list[float]]:
    """A DPT decoder fitted on block outputs (:func:`block_tokens`) against ``targets`` [N, H, W(, 3)];
    AdamW under a cosine schedule over mini-batches of images. Returns (decoder in eval mode, mean training
    loss per epoch)."""
    task = canonical_task(task)
    if cls.shape[0] != targets.shape[0]:
        raise ValueError(f"{cls.shape[0]} feature sets for {targets.shape[0]} targets")
    if task == "segmentation" and not num_classes:
        raise ValueError("a segmentation probe needs num_classes")
    torch.manual_seed(seed)
    cfg = DPTConfig(
        task=task,
        embed_dim=cls.shape[-1],
        layers=tuple(layers),
        channels=channels,
        num_classes=num_classes or 150,
        class_names=class_names if task == "segmentation" else None,
    )
    decoder = DPTDecoder(cfg).to(device).train()
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * -(-cls.shape[0] // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in tqdm(range(epochs), desc=f"{task} DPT probe", leave=False, disable=not progress):
        order = torch.randperm(cls.shape[0], generator=generator)
        total, count = 0.0, 0
        for start in range(0, cls.shape[0], batch_size):
            index = order[start : start + batch_size]
            levels = _levels(cls[index].to(device), patches[index].to(device))
            loss = dpt_loss(decoder, decoder(levels), targets[index].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + float(loss.detach()) * len(index), count + len(index)
        history.append(total / count)
    return decoder.eval(), history


@torch.no_grad()
def predict_dpt_probe(
    decoder: DPTDecoder, cls: torch.Tensor, patches: torch.Tensor, size: tuple[int, int], batch_size: int = 8
) -> torch.Tensor:
    """Labels [N, H, W], depth [N, H, W] or unit normals [N, 3, H, W] at ``size``."""
    device = next(decoder.parameters()).device
    out = []
    for start in range(0, cls.shape[0], batch_size):
        levels = _levels(
            cls[start : start + batch_size].to(device), patches[start : start + batch_size].to(device)
        )
        prediction = decoder.predict(levels, size=size)
        if decoder.task == "segmentation":
            prediction = prediction.argmax(dim=1)
        elif decoder.task == "depth":
            prediction = prediction[:, 0]
        out.append(prediction.cpu())
    return torch.cat(out)


def save_dpt_probe(path: str | os.PathLike, decoder: DPTDecoder, backbone: dict, probe: dict) -> None:
    """An open_tips dense-heads file (``open_tips.formats.dpt.save_dense_heads``) that also records the
    probe's settings (task as fitted, image size, images) under the ``probe`` metadata key."""
    state = {
        f"{decoder.task}.{k}": v.detach().float().cpu().contiguous() for k, v in decoder.state_dict().items()
    }
    metadata = {
        "format": OWN_FORMAT,
        "decoders": json.dumps({decoder.task: decoder.cfg.to_dict()}),
        "backbone": json.dumps(backbone),
        "probe": json.dumps(probe),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_dpt_probe(path: str | os.PathLike) -> tuple[DPTDecoder, dict, dict]:
    """(decoder in eval mode, backbone identity, probe settings) from :func:`save_dpt_probe`'s file."""
    decoders, backbone = read_dense_heads_file(path)
    with safe_open(str(path), framework="pt") as handle:
        probe = json.loads((handle.metadata() or {}).get("probe") or "{}")
    if len(decoders) != 1 or backbone is None:
        raise CheckpointError(f"{path}: a DPT probe file holds one decoder and its backbone's identity")
    (decoder,) = decoders.values()
    return decoder.eval(), backbone, probe


def is_dpt_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an open_tips dense-heads (DPT) safetensors file."""

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") == OWN_FORMAT
    except (SafetensorError, OSError, ValueError):
        return False
