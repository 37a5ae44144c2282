"""Running DPT decoders on a TIPS tower, and turning their outputs into files and pictures.

``predict_dense(model, decoders, pixels)`` runs the tower once for all decoders (over the union of their
intermediate blocks) and returns each task's output at the input's (or a given) size:
depth [B, H, W] metres, unit normals [B, 3, H, W], segmentation labels [B, H, W] (int64) plus, on request,
the logits.

File conventions written by ``open-tips dense``:
- ``<stem>_depth.npy``: float32 [H, W] metres; ``<stem>_depth.png``: 16-bit greyscale millimetres
  (value / 1000 = metres, as NYUv2's PNGs; 65.535 m is the largest value);
- ``<stem>_normals.png``: RGB = (n + 1) / 2 * 255 per axis x, y, z of the unit normal;
- ``<stem>_labels.png``: palette PNG whose pixel values are class indices; ``<stem>_overlay.png``: the
  image, the labels blended over it and a legend of the classes present;
- ``<stem>_dense.png``: one labelled panel per output next to the image, with a depth colour bar.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from open_tips.inference.dense import palette, upsampled_argmax
from open_tips.models.dpt import DPTDecoder, canonical_task

# ---------------------------------------------------------------------------------------------------------
# prediction
# ---------------------------------------------------------------------------------------------------------


def _vision(model):
    return getattr(model, "vision", model)


def backbone_identity(model) -> dict:
    """Architecture and a weight fingerprint of a vision tower (or a TIPSModel): decoders and probes record
    it so that they refuse a tower they were not fitted on. The fingerprint hashes the patch embedding, the
    CLS token, the position grid and the final norm (cheap at any size, different for any two trainings)."""
    vision = _vision(model)
    cfg = vision.cfg
    digest = hashlib.sha256()
    state = vision.state_dict()
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed", "norm.weight", "norm.bias"):
        digest.update(key.encode())
        digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return {
        "width": cfg.width,
        "depth": cfg.depth,
        "patch_size": cfg.patch_size,
        "pos_grid": cfg.pos_grid,
        "swiglu": bool(cfg.swiglu),
        "fingerprint": digest.hexdigest()[:16],
    }


def check_backbone(model, decoders: Mapping[str, DPTDecoder], source: str = "decoder") -> None:
    """ValueError naming the mismatch when a decoder does not fit the tower (width or block indices)."""
    vision = _vision(model)
    for task, decoder in decoders.items():
        if decoder.cfg.embed_dim != vision.cfg.width:
            raise ValueError(
                f"{source}: the {task} decoder expects tower width {decoder.cfg.embed_dim}, the checkpoint "
                f"has width {vision.cfg.width}"
            )
        bad = [i for i in decoder.layers if not 0 <= i < vision.cfg.depth]
        if bad:
            raise ValueError(
                f"{source}: the {task} decoder reads blocks {list(decoder.layers)}, the tower has "
                f"{vision.cfg.depth} blocks"
            )


@torch.no_grad()
def predict_dense(
    model,
    decoders: Mapping[str, DPTDecoder] | Sequence[DPTDecoder],
    pixels: torch.Tensor,
    size: tuple[int, int] | None = None,
    return_logits: bool = False,
) -> dict[str, torch.Tensor]:
    """Dense predictions of ``pixels`` [B, 3, H, W] (in [0, 1], sides multiples of the patch size) at
    ``size`` (default (H, W)): ``depth`` [B, H, W] metres, ``normals`` [B, 3, H, W] unit vectors,
    ``segmentation`` [B, H, W] int64 labels (and ``segmentation_logits`` [B, C, H, W] with
    ``return_logits``). The tower runs once, over the union of the decoders' blocks."""
    if not isinstance(decoders, Mapping):
        decoders = {d.task: d for d in decoders}
    decoders = {canonical_task(t): d for t, d in decoders.items()}
    if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
        raise ValueError(
            f"expected float pixels of shape B x 3 x H x W, got {tuple(pixels.shape)} {pixels.dtype}"
        )
    check_backbone(model, decoders)
    vision = _vision(model)
    grid = (pixels.shape[-2] // vision.patch_size, pixels.shape[-1] // vision.patch_size)
    size = tuple(size) if size is not None else tuple(pixels.shape[-2:])
    blocks = sorted({i for d in decoders.values() for i in d.layers})
    tokens = dict(zip(blocks, vision.get_intermediate_layers(pixels, blocks, norm=True)))
    out: dict[str, torch.Tensor] = {}
    for task, decoder in decoders.items():
        param = next(decoder.parameters())
        levels = [tokens[i].to(param.dtype) for i in decoder.layers]
        if task == "segmentation":
            logits = decoder(levels, grid).float()
            out["segmentation"] = torch.stack([_upsampled_argmax(item, size) for item in logits])
            if return_logits:
                out["segmentation_logits"] = F.interpolate(
                    logits, size=size, mode="bilinear", align_corners=False
                )
        else:
            prediction = decoder.predict(levels, size=size, grid=grid).float()
            out[task] = prediction[:, 0] if task == "depth" else prediction
    return out


def _upsampled_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return upsampled_argmax(scores, size)


# ---------------------------------------------------------------------------------------------------------
# files and pictures
# ---------------------------------------------------------------------------------------------------------

# A perceptually ordered colour map (near to "turbo"): dark blue -> cyan -> green -> yellow -> red.
_MAP_ANCHORS = np.array(
    [
        [48, 18, 59],
        [70, 107, 227],
        [40, 188, 235],
        [50, 242, 152],
        [164, 252, 60],
        [238, 207, 58],
        [251, 128, 34],
        [208, 47, 5],
        [122, 4, 3],
    ],
    dtype=np.float64,
)


def colour_map(values: np.ndarray) -> np.ndarray:
    """[...] values in [0, 1] -> [..., 3] uint8 colours."""
    x = np.clip(values, 0.0, 1.0) * (len(_MAP_ANCHORS) - 1)
    low = np.floor(x).astype(int).clip(0, len(_MAP_ANCHORS) - 2)
    frac = (x - low)[..., None]
    return (_MAP_ANCHORS[low] * (1 - frac) + _MAP_ANCHORS[low + 1] * frac).round().astype(np.uint8)


def depth_png(depth: np.ndarray) -> Image.Image:
    """16-bit greyscale PNG of depth in millimetres (clipped to 0..65535)."""
    return Image.fromarray(np.clip(np.round(depth * 1000.0), 0, 65535).astype(np.uint16))


def normals_rgb(normals: np.ndarray) -> np.ndarray:
    """[3, H, W] unit normals -> [H, W, 3] uint8 with (n + 1) / 2 * 255 per axis."""
    return np.clip((normals.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def label_font(size: int = 16):
    """Pillow's bundled scalable font at ``size`` px (no system fonts needed)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def _titled(panel: Image.Image, title: str, height: int) -> Image.Image:
    """``panel`` scaled to ``height`` pixels with a title strip above it."""
    width = max(1, round(panel.width * height / panel.height))
    scaled = panel.convert("RGB").resize((width, height), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height + 28), (255, 255, 255))
    canvas.paste(scaled, (0, 28))
    ImageDraw.Draw(canvas).text((6, 5), title, fill=(0, 0, 0), font=label_font(18))
    return canvas


def _colour_bar(low: float, high: float, height: int, unit: str = "m") -> Image.Image:
    bar = colour_map(np.linspace(1, 0, height)[:, None].repeat(18, axis=1))
    canvas = Image.new("RGB", (78, height + 28), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (4, 28))
    draw = ImageDraw.Draw(canvas)
    font = label_font(14)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = 28 + round((1 - frac) * (height - 1))
        draw.line([(22, y), (27, y)], fill=(0, 0, 0))
        draw.text(
            (29, max(28, min(y - 7, height + 14))),
            f"{low + frac * (high - low):.2f}",
            fill=(0, 0, 0),
            font=font,
        )
    draw.text((4, 5), unit, fill=(0, 0, 0), font=label_font(16))
    return canvas


def legend_strip(
    entries: list[tuple[tuple[int, int, int], str]], width: int, title: str = "classes (share of pixels)"
) -> Image.Image:
    """A white strip ``width`` px wide: ``title``, then a colour swatch and a label per entry, in columns."""
    font = label_font(15)
    columns = max(1, min(len(entries), width // 220, 4))
    rows = (len(entries) + columns - 1) // columns
    canvas = Image.new("RGB", (width, 30 + 22 * rows), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill=(0, 0, 0), font=label_font(16))
    column_width = min(width // columns, 300)
    for index, (colour, text) in enumerate(entries):
        x = 6 + (index // rows) * column_width
        y = 28 + (index % rows) * 22
        draw.rectangle([x, y + 2, x + 14, y + 16], fill=colour, outline=(0, 0, 0))
        draw.text((x + 20, y), text, fill=(0, 0, 0), font=font)
    return canvas


def _legend_entries(labels: np.ndarray, class_names: Sequence[str], limit: int = 12):
    colours = palette(len(class_names))
    present, areas = np.unique(labels, return_counts=True)
    order = np.argsort(-areas)[:limit]
    return [
        (
            tuple(int(v) for v in colours[present[i]]),
            f"{class_names[present[i]]} ({100 * areas[i] / labels.size:.1f}%)",
        )
        for i in order
    ]


def labelled_overlay(
    image: Image.Image, labels: np.ndarray, class_names: Sequence[str], height: int = 384, alpha: float = 0.55
) -> Image.Image:
    """ "Image" and "Segmentation" panels (labels blended over the image) with a legend of the largest
    classes underneath."""
    base = image.convert("RGB").resize((labels.shape[1], labels.shape[0]), Image.BILINEAR)
    blended = Image.blend(base, Image.fromarray(palette(len(class_names))[labels]), alpha)
    panels = [_titled(base, "Image", height), _titled(blended, "Segmentation", height)]
    return _assemble(panels, _legend_entries(labels, class_names))


def _assemble(panels: list[Image.Image], legend_entries=None, gap: int = 8) -> Image.Image:
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    legend = legend_strip(legend_entries, width) if legend_entries else None
    height = max(p.height for p in panels) + (legend.height if legend else 0)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + gap
    if legend is not None:
        canvas.paste(legend, (0, height - legend.height))
    return canvas


def summary_picture(
    image: Image.Image,
    outputs: Mapping[str, np.ndarray],
    class_names: Sequence[str] | None = None,
    height: int = 384,
) -> Image.Image:
    """Labelled panels: the image, then depth (colour-mapped, with a colour bar in metres), normals (RGB)
    and segmentation (blended over the image), for whichever outputs are given."""
    size = next(iter(outputs.values())).shape[-2:]
    base = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
    panels = [_titled(base, "Image", height)]
    entries = None
    if "depth" in outputs:
        depth = outputs["depth"]
        low, high = float(depth.min()), float(depth.max())
        scaled = (depth - low) / max(high - low, 1e-8)
        panels.append(_titled(Image.fromarray(colour_map(scaled)), "Depth (m)", height))
        panels.append(_colour_bar(low, high, height))
    if "normals" in outputs:
        panels.append(
            _titled(Image.fromarray(normals_rgb(outputs["normals"])), "Normals (RGB = XYZ)", height)
        )
    if "segmentation" in outputs:
        labels = outputs["segmentation"]
        names = (
            list(class_names) if class_names is not None else [str(i) for i in range(int(labels.max()) + 1)]
        )
        blended = Image.blend(base, Image.fromarray(palette(len(names))[labels]), 0.55)
        panels.append(_titled(blended, "Segmentation", height))
        entries = _legend_entries(labels, names)
    return _assemble(panels, entries)


__all__ = [
    "backbone_identity",
    "check_backbone",
    "colour_map",
    "depth_png",
    "labelled_overlay",
    "normals_rgb",
    "predict_dense",
    "summary_picture",
]
