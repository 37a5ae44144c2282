"""The TIPS vision tower: a ViT with two CLS tokens in the official parameter layout.

Sequence = [CLS1 (cls_web), CLS2 (cls_synthetic), patches]. CLS1 gets ``pos_embed[:, 0]``; CLS2 is stored
as ``register_tokens`` and is inserted after positions are added, so it carries no position. Module and
parameter names equal the official checkpoint keys, so an official state dict loads as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from open_tips.models.configs import VisionConfig


@dataclass
class ImageEmbeddings:
    """Outputs of the vision tower after the final norm (not L2-normalised)."""

    cls_web: torch.Tensor  # [B, D], first CLS, trained against web captions
    cls_synthetic: torch.Tensor  # [B, D], second CLS, trained against synthetic captions
    patch_tokens: torch.Tensor  # [B, h, w, D]


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        return self.proj(pixels).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a packed qkv projection, on fused SDPA."""

    def __init__(self, width: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))

    def value_only(self, x: torch.Tensor) -> torch.Tensor:
        """MaskCLIP's trick: the value path alone (each token attends only to itself)."""
        width = x.shape[-1]
        value = F.linear(
            x, self.qkv.weight[2 * width :], None if self.qkv.bias is None else self.qkv.bias[2 * width :]
        )
        return self.proj(value)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """SwiGLU FFN with the official packed ``w12`` (gate, up) and ``w3`` (down) layout."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(width, 2 * hidden)
        self.w3 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class LayerScale(nn.Module):
    def __init__(self, width: int, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-LN transformer block with LayerScale on both residual branches."""

    def __init__(self, cfg: VisionConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = Attention(cfg.width, cfg.heads, cfg.qkv_bias)
        self.ls1 = LayerScale(cfg.width, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = SwiGLU(cfg.width, cfg.mlp_hidden) if cfg.swiglu else Mlp(cfg.width, cfg.mlp_hidden)
        self.ls2 = LayerScale(cfg.width, cfg.layerscale_init)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path_rate > 0:
            x = x + drop_path(self.ls1(self.attn(self.norm1(x))), self.drop_path_rate, True)
            return x + drop_path(self.ls2(self.mlp(self.norm2(x))), self.drop_path_rate, True)
        # x + gamma * branch in one fused pass over memory (addcmul) instead of a multiply then an add
        x = torch.addcmul(x, self.attn(self.norm1(x)), self.ls1.gamma)
        return torch.addcmul(x, self.mlp(self.norm2(x)), self.ls2.gamma)

    def forward_value_trick(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn.value_only(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    num_prefix_tokens = 2  # CLS1 + CLS2

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, cfg.width))
        self.register_tokens = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.width))
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist() if cfg.depth else []
        self.blocks = nn.ModuleList([Block(cfg, rate) for rate in rates])
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.grad_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def width(self) -> int:
        return self.cfg.width

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings for a grid_h x grid_w patch grid (bilinear, antialiased, no offset)."""
        stored = self.cfg.pos_grid
        if grid_h == stored and grid_w == stored:
            return self.pos_embed
        dtype = self.pos_embed.dtype
        cls_pos = self.pos_embed[:, :1]
        patch_pos = self.pos_embed[:, 1:].float().reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos, size=(grid_h, grid_w), mode="bilinear", antialias=True, align_corners=False
        )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1).to(dtype)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        batch = pixels.shape[0]
        grid_h, grid_w = pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size
        x = self.patch_embed(pixels)
        if masks is not None:
            x = torch.where(masks.reshape(batch, -1, 1), self.mask_token.to(x.dtype), x)
        x = torch.cat((self.cls_token.expand(batch, -1, -1).to(x.dtype), x), dim=1)
        x = x + self.interpolate_pos_embed(grid_h, grid_w).to(x.dtype)
        return torch.cat((x[:, :1], self.register_tokens.expand(batch, -1, -1).to(x.dtype), x[:, 1:]), dim=1)

    def _run_block(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_tokens(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens after the final norm: [B, 2 + h*w, D]."""
        x = self.prepare_tokens(pixels, masks)
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    forward = forward_tokens

    def split_tokens(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> ImageEmbeddings:
        batch = tokens.shape[0]
        return ImageEmbeddings(
            cls_web=tokens[:, 0],
            cls_synthetic=tokens[:, 1],
            patch_tokens=tokens[:, self.num_prefix_tokens :].reshape(batch, grid_hw[0], grid_hw[1], -1),
        )

    def grid_size(self, pixels: torch.Tensor) -> tuple[int, int]:
        return pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size

    def encode(self, pixels: torch.Tensor, masks: torch.Tensor | None = None) -> ImageEmbeddings:
        return self.split_tokens(self.forward_tokens(pixels, masks), self.grid_size(pixels))

    def get_intermediate_layers(
        self, pixels: torch.Tensor, indices: list[int] | int = 1, norm: bool = True
    ) -> list[torch.Tensor]:
        """Token sequences [B, 2 + h*w, D] after the given blocks (an int n = the last n blocks)."""
        depth = len(self.blocks)
        wanted = list(range(depth - indices, depth)) if isinstance(indices, int) else list(indices)
        for index in wanted:
            if not -depth <= index < depth:
                raise IndexError(f"block index {index} out of range for a {depth}-block model")
        wanted = [i % depth for i in wanted]
        outputs: dict[int, torch.Tensor] = {}
        x = self.prepare_tokens(pixels)
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                outputs[i] = self.norm(x) if norm else x
        return [outputs[i] for i in wanted]

    def forward_value_trick(self, pixels: torch.Tensor) -> ImageEmbeddings:
        """Dense features for zero-shot segmentation (MaskCLIP): the last block skips attention mixing."""
        x = self.prepare_tokens(pixels)
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.blocks[-1].forward_value_trick(x)
        return self.split_tokens(self.norm(x), self.grid_size(pixels))
