"""`open-tips export`: the vision and text towers as ONNX models or torch.export programs, checked against
PyTorch."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from open_tips.inference.options import add_model_args, fail, load_checkpoint

FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the towers to ONNX or torch.export programs",
        description="Writes vision.onnx / text.onnx (or vision.pt2 / text.pt2), the tokenizer.model and "
        "export.json (inputs, outputs, image size, temperature, check results) into --output. Batch, image "
        "size (multiples of the patch size) and text length are dynamic. Each graph is then run at two input "
        "sizes (onnxruntime for ONNX) and compared with PyTorch; exit status 1 when the relative error "
        "exceeds --tolerance.",
    )
    parser.add_argument("--output", required=True, help="a directory (created)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument(
        "--towers",
        default=None,
        help="comma-separated: vision, text (default: both, or vision when the checkpoint has no text tower)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's, at least 18)")
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the exported graphs with PyTorch on two input sizes (default on)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest relative error accepted (default 1e-4)"
    )
    add_model_args(parser, batch_size=2, images=False, precision=False)
    parser.set_defaults(func=run)


def parse_towers(text: str | None, has_text: bool) -> list[str]:
    from open_tips.inference.export import TOWERS  # on use: `open-tips --help` does not load torch

    if text is None:
        return ["vision", "text"] if has_text else ["vision"]
    towers = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        fail(f"--towers: expected a comma-separated list of {', '.join(TOWERS)}, got {text!r}")
    return list(dict.fromkeys(towers))


def run(args: argparse.Namespace) -> int:
    import torch

    from open_tips.inference import export  # on use, as above

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        fail(f"--output {output} exists and is not a directory")
    wanted = None if args.towers is None else parse_towers(args.towers, True)
    # CPU unless asked: the graphs are device-neutral and the check runs onnxruntime on the CPU anyway
    model = load_checkpoint(
        args.checkpoint,
        args.config,
        args.tokenizer,
        args.device or "cpu",
        revision=args.revision,
        vision_only=wanted == ["vision"],
    )
    towers = parse_towers(args.towers, model.text is not None)
    if "text" in towers and model.text is None:
        fail(f"{args.checkpoint}: no text tower was loaded (is the *_text.npz beside the *_vision.npz?)")
    output.mkdir(parents=True, exist_ok=True)
    suffix = FORMATS[args.format]
    manifest = {
        "format": args.format,
        "model": model.cfg.name,
        "image_size": args.image_size or model.cfg.image_size,
        "patch_size": model.vision.patch_size,
        "temperature": float(model.temperature.detach()),
        "pixels": "float32 RGB in [0, 1], no mean/std normalisation; sides multiples of patch_size",
        "towers": {},
    }
    worst_overall = 0.0
    for tower in towers:
        path = output / f"{tower}{suffix}"
        example = export.example_inputs(model, tower, args.batch_size, args.image_size)
        try:
            if args.format == "onnx":
                export.export_onnx(model, tower, path, example, opset=args.opset)
            else:
                torch.export.save(export.export_program(model, tower, example), str(path))
        except ImportError as err:
            fail(str(err))
        names = (
            (export.VISION_INPUTS, export.VISION_OUTPUTS)
            if tower == "vision"
            else (export.TEXT_INPUTS, export.TEXT_OUTPUTS)
        )
        entry = {"file": path.name, "inputs": list(names[0]), "outputs": list(names[1])}
        if args.check:
            try:
                if args.format == "onnx":
                    worst = export.verify_onnx(model, tower, path, args.image_size)
                else:
                    worst = export.verify_program(model, tower, path, args.image_size)
            except ImportError as err:
                fail(f"{err} (or pass --no-check)")
            entry["max_relative_error"] = worst
            worst_overall = max(worst_overall, worst)
            print(f"{tower}: {path} (largest relative error vs PyTorch at two input sizes: {worst:.2e})")
        else:
            print(f"{tower}: {path}")
        manifest["towers"][tower] = entry
    tokenizer = getattr(model.tokenizer, "model_path", None)
    if "text" in towers and tokenizer is not None:
        shutil.copyfile(tokenizer, output / "tokenizer.model")
        manifest["tokenizer"] = "tokenizer.model"
        manifest["max_len"] = model.text.cfg.max_len
    (output / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if args.check and worst_overall > args.tolerance:
        print(
            f"error: exported graphs differ from PyTorch by {worst_overall:.2e} > --tolerance {args.tolerance}"
        )
        return 1
    return 0
