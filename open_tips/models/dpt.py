"""DPT decoders for the TIPSv2 dense heads: depth, surface normals and semantic segmentation.

The released decoders (official Scenic zips and HF ``google/tipsv2-*-dpt``) share one architecture:

1. Four intermediate blocks of the frozen vision tower (after the final LayerNorm) are read out. Each
   patch token is concatenated with that block's CLS1 token, projected back to the tower width by a
   Linear layer and passed through a tanh-approximated GELU ("project" readout).
2. Reassemble: per level a 1x1 convolution to ``post_process_channels[i]`` (width/8, /4, /2, /1), then a
   resize of the patch grid: transposed convolution x4, transposed convolution x2, identity, and a 3x3
   convolution of stride 2 (x1/2).
3. A 3x3 convolution (no bias) takes each level to ``channels`` (256), and four fusion blocks merge the
   levels from the coarsest up. A fusion block adds a pre-activation residual unit of the finer level
   (resized bilinearly if its grid differs), applies a second residual unit, upsamples x2 (bilinear,
   corners aligned) and mixes channels with a 1x1 convolution.
4. A 3x3 convolution ("project"), optionally a ReLU, then a per-pixel Linear layer to the task's outputs.

The decoder output is 16 x ceil(h / 2) by 16 x ceil(w / 2) for an h x w patch grid: 8x the grid when its
sides are even (256 x 256 for a 448 px input). The tasks read it as:
- depth: 256 logits per pixel; ``relu(logit) + min_depth`` is normalised to sum to one over the bins and
  the depth is the expectation over linearly spaced bin centres in [min_depth, max_depth] metres;
- normals: three raw values, L2-normalised at prediction time;
- segmentation: one logit per class (150 ADE20K classes for the released heads).

Parameter names follow the official PyTorch port (``dpt.reassemble.readout_projects.0.weight``, ...,
``head.weight``), so its state dicts load as they are; ``open_tips.formats.dpt`` maps the Scenic and HF
layouts onto them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("depth", "normals", "segmentation")

# The blocks (0-based) whose outputs the released decoders read, by tower depth (B, L, So400m, g).
RELEASED_LAYERS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 27: (6, 13, 20, 26), 40: (9, 19, 29, 39)}


def default_layers(depth: int) -> tuple[int, ...]:
    """The intermediate blocks for a tower of ``depth`` blocks: the released choice for B/L/So400m/g, else
    the ends of four equal quarters (distinct indices while the tower has at least four blocks)."""
    if depth in RELEASED_LAYERS:
        return RELEASED_LAYERS[depth]
    if depth < 1:
        raise ValueError(f"a DPT decoder needs a tower with at least one block, got depth {depth}")
    return tuple(max(0, min(depth - 1, (depth * (i + 1) + 3) // 4 - 1)) for i in range(4))


def canonical_task(task: str) -> str:
    aliases = {"seg": "segmentation", "normal": "normals", "surface_normals": "normals"}
    name = aliases.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown dense task {task!r}; expected one of {', '.join(TASKS)} (or seg)")
    return name


@dataclass
class DPTConfig:
    task: str = "depth"
    embed_dim: int = 768
    layers: tuple[int, ...] = (2, 5, 8, 11)
    channels: int = 256
    post_process_channels: tuple[int, ...] | None = None  # default: (width/8, width/4, width/2, width)
    num_classes: int = 150  # segmentation only
    num_depth_bins: int = 256
    min_depth: float = 0.001
    max_depth: float = 10.0
    # The official code and the Scenic config apply nothing after "project"; transformers' depth decoder
    # applies a ReLU there (its ``depth_decoder_activation``). Either is expressible.
    project_activation: str | None = None
    class_names: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        self.task = canonical_task(self.task)
        self.layers = tuple(int(i) for i in self.layers)
        if len(self.layers) != 4:
            raise ValueError(f"a DPT decoder reads exactly four blocks, got layers {self.layers}")
        if self.post_process_channels is None:
            d = self.embed_dim
            self.post_process_channels = (max(1, d // 8), max(1, d // 4), max(1, d // 2), d)
        self.post_process_channels = tuple(int(c) for c in self.post_process_channels)
        if len(self.post_process_channels) != 4:
            raise ValueError(f"post_process_channels needs four entries, got {self.post_process_channels}")
        if self.project_activation not in (None, "relu"):
            raise ValueError(f"project_activation must be None or 'relu', got {self.project_activation!r}")
        if self.class_names is not None:
            self.class_names = [str(n) for n in self.class_names]
            if self.task == "segmentation" and len(self.class_names) != self.num_classes:
                raise ValueError(
                    f"{len(self.class_names)} class names for a {self.num_classes}-class segmentation head"
                )

    @property
    def out_channels(self) -> int:
        return {"depth": self.num_depth_bins, "normals": 3, "segmentation": self.num_classes}[self.task]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["layers"] = list(self.layers)
        data["post_process_channels"] = list(self.post_process_channels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DPT config fields: {', '.join(unknown)}")
        return cls(**data)


class ResidualConvUnit(nn.Module):
    """relu -> 3x3 conv -> relu -> 3x3 conv, plus the input (convolutions without bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Merges the running map with a finer level's map, then doubles the resolution."""

    def __init__(self, channels: int, takes_skip: bool) -> None:
        super().__init__()
        if takes_skip:
            self.residual_unit = ResidualConvUnit(channels)
        self.main_unit = ResidualConvUnit(channels)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if skip.shape[-2:] != x.shape[-2:]:
                # odd grids: the stride-2 level rounds up, so the finer map is resized onto the running one
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.residual_unit(skip)
        x = self.main_unit(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Reassemble(nn.Module):
    """ "Project" readout with CLS1, 1x1 projection and the x4 / x2 / x1 / x1/2 resize, per level."""

    def __init__(self, embed_dim: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.readout_projects = nn.ModuleList([nn.Linear(2 * embed_dim, embed_dim) for _ in out_channels])
        self.out_projections = nn.ModuleList([nn.Conv2d(embed_dim, c, 1) for c in out_channels])
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )

    def readout(self, level: int, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """GELU(W [patch; cls] + b) for [B, h, w, D] patches, without materialising the concatenation:
        the CLS half of the product is computed once per image and broadcast over the grid."""
        layer = self.readout_projects[level]
        d = self.embed_dim
        per_image = F.linear(cls, layer.weight[:, d:], layer.bias)  # [B, D]
        mixed = F.linear(patches, layer.weight[:, :d]) + per_image[:, None, None, :]
        return F.gelu(mixed, approximate="tanh")

    def forward(self, levels: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        maps = []
        for i, (cls, patches) in enumerate(levels):
            x = self.readout(i, cls, patches).permute(0, 3, 1, 2)
            maps.append(self.resize_layers[i](self.out_projections[i](x)))
        return maps


class DPTBody(nn.Module):
    """Reassemble + per-level 3x3 convolutions + fusion + "project": [B, channels, 8h, 8w]."""

    def __init__(self, cfg: DPTConfig) -> None:
        super().__init__()
        self.reassemble = Reassemble(cfg.embed_dim, cfg.post_process_channels)
        self.convs = nn.ModuleList(
            [nn.Conv2d(c, cfg.channels, 3, padding=1, bias=False) for c in cfg.post_process_channels]
        )
        self.fusion_blocks = nn.ModuleList([FusionBlock(cfg.channels, takes_skip=i > 0) for i in range(4)])
        self.project = nn.Conv2d(cfg.channels, cfg.channels, 3, padding=1)
        self.relu_after_project = cfg.project_activation == "relu"

    def forward(self, levels: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        maps = [conv(x) for conv, x in zip(self.convs, self.reassemble(levels))]
        out = self.fusion_blocks[0](maps[3])
        for block, skip in zip(self.fusion_blocks[1:], (maps[2], maps[1], maps[0])):
            out = block(out, skip)
        out = self.project(out)
        return F.relu(out) if self.relu_after_project else out


class DPTDecoder(nn.Module):
    """One task's DPT decoder on the intermediate token sequences of a TIPS vision tower.

    ``forward(tokens)`` takes the four [B, 2 + h*w, D] sequences that
    ``VisionTransformer.get_intermediate_layers(pixels, cfg.layers, norm=True)`` returns (index 0 = CLS1)
    and gives the raw task output at 16 x ceil(h / 2) by 16 x ceil(w / 2) (8x an even grid): depth in metres [B, 1, 8h, 8w], unnormalised normals
    [B, 3, 8h, 8w] or class logits [B, C, 8h, 8w]. ``predict`` resizes to a target size the way the
    official notebook does and normalises normals.
    """

    def __init__(self, cfg: DPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dpt = DPTBody(cfg)
        self.head = nn.Linear(cfg.channels, cfg.out_channels)
        if cfg.task == "depth":
            centres = torch.linspace(cfg.min_depth, cfg.max_depth, cfg.num_depth_bins)
            self.register_buffer("bin_centres", centres, persistent=False)

    @property
    def task(self) -> str:
        return self.cfg.task

    @property
    def layers(self) -> tuple[int, ...]:
        return self.cfg.layers

    def levels(self, tokens: Sequence[torch.Tensor], grid: tuple[int, int] | None = None):
        """(CLS1 [B, D], patches [B, h, w, D]) per level from [B, 2 + h*w, D] sequences (or from
        ready-made (cls, patches) pairs). Without ``grid`` the patch grid must be square."""
        if len(tokens) != 4:
            raise ValueError(f"a DPT decoder takes four intermediate layers, got {len(tokens)}")
        out = []
        for item in tokens:
            if isinstance(item, (tuple, list)):
                out.append(tuple(item))
                continue
            batch, length, dim = item.shape
            count = length - 2
            if grid is None:
                side = int(round(count**0.5))
                if side * side != count:
                    raise ValueError(f"{count} patch tokens are not a square grid; pass grid=(h, w)")
                grid = (side, side)
            if grid[0] * grid[1] != count:
                raise ValueError(f"grid {grid} does not hold {count} patch tokens")
            out.append((item[:, 0], item[:, 2:].reshape(batch, grid[0], grid[1], dim)))
        return out

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Task output from the head's per-pixel outputs [B, C, H, W]."""
        if self.cfg.task != "depth":
            return logits
        weights = F.relu(logits) + self.cfg.min_depth
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.einsum("bchw,c->bhw", weights, self.bin_centres.to(weights.dtype))[:, None]

    def forward(self, tokens: Sequence[torch.Tensor], grid: tuple[int, int] | None = None) -> torch.Tensor:
        features = self.dpt(self.levels(tokens, grid))
        logits = F.conv2d(features, self.head.weight[:, :, None, None], self.head.bias)
        return self.decode(logits)

    @torch.no_grad()
    def predict(
        self,
        tokens: Sequence[torch.Tensor],
        size: tuple[int, int] | None = None,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The task output at ``size``: depth [B, 1, H, W] metres (bilinear), unit normals [B, 3, H, W]
        (normalised, bicubic, normalised again, as the official notebook), or class logits [B, C, H, W]
        (bilinear). ``size=None`` keeps the decoder's 8x-grid resolution."""
        out = self(tokens, grid)
        if self.cfg.task == "normals":
            out = F.normalize(out, dim=1)
            if size is not None and tuple(out.shape[-2:]) != tuple(size):
                out = F.interpolate(out, size=size, mode="bicubic", align_corners=False)
                out = F.normalize(out, dim=1)
            return out
        if size is not None and tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


__all__ = [
    "DPTConfig",
    "DPTDecoder",
    "RELEASED_LAYERS",
    "TASKS",
    "canonical_task",
    "default_layers",
]
