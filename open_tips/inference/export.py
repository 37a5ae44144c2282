"""The towers as graphs other runtimes load: ONNX (onnxruntime, TensorRT ...) and torch.export programs.

Both keep the batch and the image size dynamic (sides any multiple of the patch size; the position grid
is resized inside the graph) and, for the text tower, the batch and the sequence length (up to
``max_len``). Inputs and outputs:

- vision: ``pixels`` float32 [B, 3, H, W] in [0, 1] -> ``cls_web`` [B, D], ``cls_synthetic`` [B, D],
  ``patch_tokens`` [B, H/p, W/p, D] (after the final norm, not L2-normalised, as ``encode_image``);
- text: ``token_ids`` int64 [B, L], ``padding_mask`` bool [B, L] (True = padding) -> ``text_embeddings``
  [B, D] (``encode_text``; the tokenizer stays outside the graph).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VISION_INPUTS = ("pixels",)
VISION_OUTPUTS = ("cls_web", "cls_synthetic", "patch_tokens")
TEXT_INPUTS = ("token_ids", "padding_mask")
TEXT_OUTPUTS = ("text_embeddings",)
TOWERS = ("vision", "text")
# Largest patch grid side the vision graph accepts (7168 px at patch 14); the batch is capped likewise.
MAX_GRID = 512
MAX_BATCH = 4096


class ImageEncoder(nn.Module):
    """``pixels -> (cls_web, cls_synthetic, patch_tokens)``: the vision tower with tensor outputs."""

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.vision.encode(pixels)
        return out.cls_web, out.cls_synthetic, out.patch_tokens


class TextEncoder(nn.Module):
    """``(token_ids, padding_mask) -> text_embeddings``: the pooled text tower."""

    def __init__(self, text: nn.Module) -> None:
        super().__init__()
        self.text = text

    def forward(self, token_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.text(token_ids, padding_mask)


@contextlib.contextmanager
def positions_for_any_grid(vision: nn.Module) -> Iterator[None]:
    """Makes the vision tower resize its position grid for every input size while it is traced.

    The tower skips the resize when the patch grid equals the stored one; traced with a symbolic size, that
    branch would become a guard and the graph would refuse the training resolution. Bilinear resizing to
    the same size is the identity (each output sample falls on a stored one), so the outputs are unchanged.
    """
    stored = vision.cfg.pos_grid

    def resized(grid_h: int, grid_w: int) -> torch.Tensor:
        pos = vision.pos_embed
        grid = pos[:, 1:].float().reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, size=(grid_h, grid_w), mode="bilinear", antialias=True, align_corners=False
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1).to(pos.dtype)
        return torch.cat((pos[:, :1], grid), dim=1)

    vision.interpolate_pos_embed = resized  # an instance attribute shadows the method until deleted
    try:
        yield
    finally:
        del vision.interpolate_pos_embed


def example_inputs(model, tower: str, batch_size: int = 2, image_size: int | None = None) -> tuple:
    """Inputs to trace ``tower`` with: a batch of 2 (batch 1 would fix the size) of non-square images, so
    that neither the batch nor either side is specialised."""
    if tower == "vision":
        patch = model.vision.patch_size
        side = max(2, round((image_size or model.cfg.image_size) / patch))
        # height != width != batch: torch.export would otherwise treat equal sizes as one symbol
        grid_h, grid_w = side, side + 1
        if batch_size in (grid_h, grid_w):
            batch_size = grid_w + 1
        return (torch.rand(max(batch_size, 2), 3, grid_h * patch, grid_w * patch),)
    if tower == "text":
        length = model.text.cfg.max_len
        batch = max(batch_size, 2)
        if batch == length:
            batch += 1
        ids = torch.randint(1, model.text.cfg.vocab_size, (batch, length))
        padding = torch.zeros(batch, length, dtype=torch.bool)
        padding[0, length // 2 :] = True  # one caption shorter than the context
        ids[padding] = 0
        return ids, padding
    raise ValueError(f"tower must be one of {', '.join(TOWERS)}, got {tower!r}")


def _module_and_shapes(model, tower: str) -> tuple[nn.Module, dict]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if tower == "vision":
        patch = model.vision.patch_size
        grid_h = torch.export.Dim("grid_height", min=1, max=MAX_GRID)
        grid_w = torch.export.Dim("grid_width", min=1, max=MAX_GRID)
        return ImageEncoder(model.vision).eval(), {"pixels": {0: batch, 2: patch * grid_h, 3: patch * grid_w}}
    if tower == "text":
        if model.text is None:
            raise ValueError("this model has no text tower (a vision-only checkpoint was loaded)")
        length = torch.export.Dim("length", min=1, max=model.text.cfg.max_len)
        return TextEncoder(model.text).eval(), {
            "token_ids": {0: batch, 1: length},
            "padding_mask": {0: batch, 1: length},
        }
    raise ValueError(f"tower must be one of {', '.join(TOWERS)}, got {tower!r}")


def _float32_eval(model) -> None:
    for param in model.parameters():
        if param.dtype != torch.float32:
            raise ValueError(f"export needs float32 weights, got {param.dtype}")
    model.eval()


def export_program(model, tower: str, example: tuple | None = None) -> torch.export.ExportedProgram:
    """``tower`` ("vision" or "text") as a torch.export program with dynamic batch and image size / length.
    Save it with ``torch.export.save(program, "vision.pt2")``; run ``torch.export.load(path).module()(...)``."""
    _float32_eval(model)
    module, shapes = _module_and_shapes(model, tower)
    example = _on_model_device(model, example_inputs(model, tower) if example is None else example)
    with positions_for_any_grid(model.vision), torch.no_grad():
        return torch.export.export(module, example, dynamic_shapes=shapes, strict=False)


def export_onnx(
    model, tower: str, path: str | os.PathLike, example: tuple | None = None, opset: int | None = None
) -> Path:
    """Writes ``tower`` as an ONNX model at ``path`` (weights of models over 2 GB go to ``path.data``),
    through torch's dynamo exporter (needs ``onnx`` and ``onnxscript``: pip install "open-tips[export]")."""
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError as err:
            raise ImportError(f'ONNX export needs {name}: pip install "open-tips[export]"') from err
    _float32_eval(model)
    module, shapes = _module_and_shapes(model, tower)
    example = _on_model_device(model, example_inputs(model, tower) if example is None else example)
    names = (VISION_INPUTS, VISION_OUTPUTS) if tower == "vision" else (TEXT_INPUTS, TEXT_OUTPUTS)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with positions_for_any_grid(model.vision), torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=list(names[0]),
            output_names=list(names[1]),
            opset_version=opset,
            verbose=False,
        )
    program.save(str(path))
    return path


def _on_model_device(model, inputs: tuple) -> tuple:
    device = next(model.parameters()).device
    return tuple(t.to(device) for t in inputs)


def reference_outputs(model, tower: str, inputs: tuple) -> list[torch.Tensor]:
    """What PyTorch gives for ``inputs``, in the exported graph's output order."""
    inputs = _on_model_device(model, inputs)
    with torch.no_grad():
        if tower == "vision":
            out = model.vision.encode(inputs[0])
            return [out.cls_web, out.cls_synthetic, out.patch_tokens]
        return [model.text(*inputs)]


def relative_error(got, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected|| over the whole tensor."""
    got = torch.as_tensor(got, dtype=torch.float32)
    expected = expected.detach().float().cpu()
    if tuple(got.shape) != tuple(expected.shape):
        raise ValueError(f"output shape {tuple(got.shape)} differs from PyTorch's {tuple(expected.shape)}")
    return float((got - expected).norm() / expected.norm().clamp_min(1e-12))


def check_inputs(model, tower: str, image_size: int | None = None) -> list[tuple]:
    """Two input sets unlike the traced example: for vision, the training resolution square at batch 1 and
    a non-square image off the stored grid at batch 3; for text, full-length and short sequences."""
    generator = torch.Generator().manual_seed(0)
    if tower == "vision":
        patch = model.vision.patch_size
        side = max(1, round((image_size or model.cfg.image_size) / patch))
        return [
            (torch.rand(1, 3, side * patch, side * patch, generator=generator),),
            (torch.rand(3, 3, (side + 2) * patch, max(1, side - 1) * patch, generator=generator),),
        ]
    cfg = model.text.cfg
    sets = []
    for batch, length in ((1, cfg.max_len), (3, max(1, cfg.max_len // 3))):
        ids = torch.randint(1, cfg.vocab_size, (batch, length), generator=generator)
        padding = torch.zeros(batch, length, dtype=torch.bool)
        padding[-1, max(1, length // 2) :] = True
        ids[padding] = 0
        sets.append((ids, padding))
    return sets


def verify_onnx(model, tower: str, path: str | os.PathLike, image_size: int | None = None) -> float:
    """Largest relative error of the ONNX model under onnxruntime (CPU) against PyTorch over
    :func:`check_inputs`."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            'checking an ONNX export needs onnxruntime: pip install "open-tips[export]"'
        ) from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for inputs in check_inputs(model, tower, image_size):
        got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        for value, expected in zip(got, reference_outputs(model, tower, inputs)):
            worst = max(worst, relative_error(value, expected))
    return worst


def verify_program(model, tower: str, program, image_size: int | None = None) -> float:
    """Largest relative error of an ExportedProgram (or a saved ``.pt2`` path) against PyTorch."""
    if isinstance(program, (str, os.PathLike)):
        program = torch.export.load(str(program))
    module = program.module()
    worst = 0.0
    for inputs in check_inputs(model, tower, image_size):
        with torch.no_grad():
            got = module(*_on_model_device(model, inputs))
        got = got if isinstance(got, (tuple, list)) else [got]
        for value, expected in zip(got, reference_outputs(model, tower, inputs)):
            worst = max(worst, relative_error(value, expected))
    return worst
