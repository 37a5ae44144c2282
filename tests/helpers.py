"""Test helpers: random checkpoints in the official layout and an independent reference forward pass.

The reference below is written from the published behaviour of the official TIPS PyTorch code (eager
attention with the query pre-scaled, nn.MultiheadAttention with an additive -inf key mask in the text
tower, the MLP branch zeroed at padding, masked mean pooling with epsilon 1e-8, position grids resized with
bilinear antialiased interpolation and no offset, skipped when the grid is square and unchanged). It works
on the raw official state dict with functional ops, sharing no code with open_tips.models.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from open_tips.models import TIPSConfig, create_model


def random_official_state(cfg: TIPSConfig, seed: int = 0) -> tuple[dict, dict]:
    """(vision, text) state dicts in the official key layout with every value randomised, so that a
    wrong LayerScale, bias or norm handling shows up in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    model = create_model(cfg)
    vision = {}
    for key, value in model.vision.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        if key.endswith("gamma") or (key.endswith("weight") and value.ndim == 1):
            vision[key] = 1.0 + 0.3 * noise  # LayerScale / LayerNorm scales near 1
        else:
            vision[key] = 0.05 * noise
    text = {}
    if model.text is not None:
        for key, value in model.text.state_dict().items():
            noise = torch.randn(value.shape, generator=gen)
            text[key] = 1.0 + 0.3 * noise if (key.endswith("weight") and value.ndim == 1) else 0.05 * noise
    return vision, text


def write_official_npz(
    folder: Path, cfg: TIPSConfig, stem: str = "tips_test", seed: int = 0, temperature: float = 0.0123
) -> tuple[Path, dict, dict]:
    vision, text = random_official_state(cfg, seed)
    vision_path = folder / f"{stem}_vision.npz"
    np.savez(vision_path, **{k: v.numpy() for k, v in vision.items()})
    if text:
        np.savez(
            folder / f"{stem}_text.npz",
            temperature=np.float32(temperature),
            **{k: v.numpy() for k, v in text.items()},
        )
    return vision_path, vision, text


def reference_vision(
    state: dict, pixels: torch.Tensor, heads: int, masks: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """All tokens after the final norm, [B, 2 + N, D], following the official semantics."""
    batch, _, height, width = pixels.shape
    weight = state["patch_embed.proj.weight"]
    patch = weight.shape[-1]
    x = F.conv2d(pixels, weight, state["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    if masks is not None:
        x = torch.where(masks.unsqueeze(-1), state["mask_token"].unsqueeze(0), x)
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), x], dim=1)
    pos = state["pos_embed"]
    stored = pos.shape[1] - 1
    if not (x.shape[1] - 1 == stored and height == width):
        side = int(math.sqrt(stored))
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height // patch, width // patch), mode="bilinear", antialias=True)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)
    x = x + pos
    x = torch.cat([x[:, :1], state["register_tokens"].expand(batch, -1, -1), x[:, 1:]], dim=1)
    dim = x.shape[-1]
    index = 0
    while f"blocks.{index}.norm1.weight" in state:
        p = f"blocks.{index}."
        h = F.layer_norm(x, (dim,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps)
        qkv = F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        qkv = qkv.reshape(batch, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (dim // heads) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        a = (attn @ v).transpose(1, 2).reshape(batch, -1, dim)
        a = F.linear(a, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        x = x + a * state[p + "ls1.gamma"]
        h = F.layer_norm(x, (dim,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps)
        if p + "mlp.w12.weight" in state:
            x1, x2 = F.linear(h, state[p + "mlp.w12.weight"], state[p + "mlp.w12.bias"]).chunk(2, dim=-1)
            m = F.linear(F.silu(x1) * x2, state[p + "mlp.w3.weight"], state[p + "mlp.w3.bias"])
        else:
            m = F.gelu(F.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
            m = F.linear(m, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        x = x + m * state[p + "ls2.gamma"]
        index += 1
    return F.layer_norm(x, (dim,), state["norm.weight"], state["norm.bias"], eps)


def reference_text(state: dict, ids: torch.Tensor, paddings: torch.Tensor, heads: int) -> torch.Tensor:
    """Pooled text embedding [B, D] following the official semantics (sequence-first MHA, -inf mask)."""
    dim = state["token_embedding.weight"].shape[1]
    length = ids.shape[1]
    x = F.embedding(ids, state["token_embedding.weight"]) * dim**0.5
    half = dim // 2
    inv = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10_000.0) / max(half - 1, 1)))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None]
    x = x + F.pad(torch.cat([torch.sin(t), torch.cos(t)], dim=1), (0, dim % 2))[None]
    valid = (paddings == 0).float()  # [B, L]
    x = x.permute(1, 0, 2)  # L, B, D
    index = 0
    while f"transformer.resblocks.{index}.ln_1.weight" in state:
        p = f"transformer.resblocks.{index}."
        mha = torch.nn.MultiheadAttention(dim, heads)
        mha.load_state_dict(
            {
                "in_proj_weight": state[p + "attn.in_proj_weight"],
                "in_proj_bias": state[p + "attn.in_proj_bias"],
                "out_proj.weight": state[p + "attn.out_proj.weight"],
                "out_proj.bias": state[p + "attn.out_proj.bias"],
            }
        )
        mask = valid[:, None, None, :].repeat(1, heads, length, 1).flatten(0, 1)
        mask = torch.zeros_like(mask).masked_fill(mask == 0, float("-inf"))
        h = F.layer_norm(x, (dim,), state[p + "ln_1.weight"], state[p + "ln_1.bias"], 1e-5)
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (dim,), state[p + "ln_2.weight"], state[p + "ln_2.bias"], 1e-5)
        m = F.relu(F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"]))
        m = m * valid.T[..., None]
        m = F.linear(m, state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"]) * valid.T[..., None]
        x = x + m
        index += 1
    x = F.layer_norm(x.permute(1, 0, 2), (dim,), state["ln_final.weight"], state["ln_final.bias"], 1e-5)
    x = torch.where(paddings[..., None] > 0, torch.zeros_like(x), x)
    return x.sum(dim=1) / ((1.0 - paddings.float()).sum(dim=1, keepdim=True) + 1e-8)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


TINY_CORPUS_CLASSES = [
    "cat",
    "dog",
    "person",
    "car",
    "pizza",
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
    "background",
]


def make_tiny_checkpoint(folder: Path, seed: int = 4) -> Path:
    """A random ``tiny`` checkpoint in the official layout with a small SentencePiece tokenizer beside it
    (so load_pretrained attaches it). Returns the ``*_vision.npz`` path; load it with ``config="tiny"``."""
    from open_tips.data.tokenizer import Tokenizer
    from open_tips.models import get_config

    vision_path, _, _ = write_official_npz(folder, get_config("tiny"), seed=seed)
    texts = [f"a photo of a {c}" for c in TINY_CORPUS_CLASSES] * 10
    texts += ["itap of a bad origami art video game the large small many photos"] * 5
    Tokenizer.train(texts, folder / "tokenizer", vocab_size=80)
    return vision_path
