"""The TIPS text tower in the official parameter layout.

Token embedding x sqrt(width) + fixed sinusoidal positions, pre-LN blocks with a ReLU MLP and a
key-padding mask, final LayerNorm, mean over non-padding tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from open_tips.models.configs import TextConfig


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """[length, dim] sin/cos table with geometric timescales 1 .. 10^4 (sin half first, then cos)."""
    num_timescales = dim // 2
    log_increment = math.log(10_000.0) / max(num_timescales - 1, 1)
    inv_timescales = torch.exp(
        torch.arange(num_timescales, dtype=torch.float32, device=device) * -log_increment
    )
    scaled = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inv_timescales[None, :]
    signal = torch.cat((torch.sin(scaled), torch.cos(scaled)), dim=1)
    return F.pad(signal, (0, dim % 2))


class TextAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's packed parameter names, on fused SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """attend: bool [B, 1, 1, L], True where a key may be attended to."""
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attend)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class TextMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)))


class TextBlock(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = TextAttention(cfg.width, cfg.heads)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = TextMlp(cfg.width, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, attend: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attend)
        # The official tower zeroes the MLP branch at padding positions; kept so token features match.
        return x + self.mlp(self.ln_2(x)) * valid


class TextResblocks(nn.Module):
    """Holds the blocks under the official ``transformer.resblocks.{i}`` names."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([TextBlock(cfg) for _ in range(cfg.depth)])


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.transformer = TextResblocks(cfg)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.width), persistent=False)
        self.grad_checkpointing = False
        # Embeddings are scaled by sqrt(width) on use; unit-scale tokens need std 1/sqrt(width) here.
        nn.init.normal_(self.token_embedding.weight, std=cfg.width**-0.5)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def width(self) -> int:
        return self.cfg.width

    def forward_tokens(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Per-token features after the final norm: [B, L, D]."""
        if token_ids.shape != padding_mask.shape:
            raise ValueError(
                f"token_ids {tuple(token_ids.shape)} and padding_mask "
                f"{tuple(padding_mask.shape)} differ in shape"
            )
        length = token_ids.shape[1]
        positions = (
            self.positions[:length]
            if length <= self.positions.shape[0]
            else sinusoidal_positions(length, self.cfg.width, token_ids.device)
        )
        x = self.token_embedding(token_ids) * math.sqrt(self.cfg.width)
        x = x + positions.to(device=x.device, dtype=x.dtype)
        valid = ~padding_mask.bool()
        # A caption with no token at all would make every attention row empty (NaN); let such rows
        # attend everywhere instead: their pooled output is zero either way.
        attend = (valid | ~valid.any(dim=1, keepdim=True))[:, None, None, :]
        valid_f = valid[..., None].to(x.dtype)
        for block in self.transformer.resblocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, attend, valid_f, use_reentrant=False)
            else:
                x = block(x, attend, valid_f)
        return self.ln_final(x)

    def pool(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        valid = (~padding_mask.bool())[..., None].to(tokens.dtype)
        return (tokens * valid).sum(dim=1) / (valid.sum(dim=1) + 1e-8)

    def forward(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Pooled text embedding [B, D] (masked mean over non-padding tokens; not L2-normalised)."""
        return self.pool(self.forward_tokens(token_ids, padding_mask), padding_mask)
