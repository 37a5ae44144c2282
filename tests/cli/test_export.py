"""`open-tips export`: ONNX under onnxruntime and torch.export programs give PyTorch's outputs on a random
tiny checkpoint, at batch sizes and image sizes other than the traced ones (dynamic shapes)."""

from __future__ import annotations

import json

import pytest
import torch

from open_tips.cli import main
from tests.helpers import rel_err

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# The tiny model traces at 56 x 70 px, batch 2 (open_tips.inference.export.example_inputs); these differ
# in batch, in each side, and include the stored 4 x 4 position grid (56 px), where the tower skips the resize.
SIZES = [(1, 56, 56), (3, 84, 42), (2, 28, 126)]
TOLERANCE = 1e-4  # relative, ||a - b|| / ||b||; the graphs measure about 5e-7 in float32


def export(checkpoint, folder, fmt: str) -> dict:
    args = ["export", "--checkpoint", str(checkpoint), "--output", str(folder), "--format", fmt]
    assert main([*args, "--config", "tiny", "--device", "cpu"]) == 0
    return json.loads((folder / "export.json").read_text())


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return folder, export(checkpoint, folder, "onnx")


@pytest.fixture(scope="module")
def program_dir(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pt2")
    return folder, export(checkpoint, folder, "exported-program")


def image_batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.rand(b, 3, h, w, generator=gen) for b, h, w in SIZES]


def text_batches(model):
    captions = [["a photo of a cat"], ["a dog", "a photo of a large red car", "pizza"]]
    return [model.tokenizer(c) for c in captions]


def test_onnx_matches_pytorch_in_onnxruntime(onnx_dir, model):
    folder, manifest = onnx_dir
    assert sorted(p.name for p in folder.iterdir()) == [
        "export.json",
        "text.onnx",
        "tokenizer.model",
        "vision.onnx",
    ]
    assert manifest["towers"]["vision"]["outputs"] == ["cls_web", "cls_synthetic", "patch_tokens"]
    assert manifest["image_size"] == 56 and manifest["patch_size"] == 14
    assert manifest["temperature"] == pytest.approx(float(model.temperature.detach()))
    assert all(entry["max_relative_error"] <= TOLERANCE for entry in manifest["towers"].values())
    vision = onnxruntime.InferenceSession(str(folder / "vision.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in vision.get_inputs()] == ["pixels"]
    for pixels in image_batches():
        got = vision.run(None, {"pixels": pixels.numpy()})
        with torch.no_grad():
            want = model.encode_image(pixels)
        for value, key in zip(got, ("cls_web", "cls_synthetic", "patch_tokens")):
            assert value.shape == tuple(getattr(want, key).shape)
            assert rel_err(torch.from_numpy(value), getattr(want, key)) <= TOLERANCE, (key, pixels.shape)
    text = onnxruntime.InferenceSession(str(folder / "text.onnx"), providers=["CPUExecutionProvider"])
    for ids, padding in text_batches(model):
        (got,) = text.run(None, {"token_ids": ids.numpy(), "padding_mask": padding.numpy()})
        with torch.no_grad():
            want = model.encode_text(ids, padding)
        assert rel_err(torch.from_numpy(got), want) <= TOLERANCE
    # a different length than the tokenizer's: the sequence axis is dynamic too
    ids, padding = text_batches(model)[1]
    (short,) = text.run(None, {"token_ids": ids[:, :8].numpy(), "padding_mask": padding[:, :8].numpy()})
    with torch.no_grad():
        assert rel_err(torch.from_numpy(short), model.encode_text(ids[:, :8], padding[:, :8])) <= TOLERANCE


def test_exported_program_matches_pytorch(program_dir, model):
    folder, manifest = program_dir
    assert {p.name for p in folder.iterdir()} >= {"vision.pt2", "text.pt2", "export.json"}
    assert all(entry["max_relative_error"] <= TOLERANCE for entry in manifest["towers"].values())
    vision = torch.export.load(str(folder / "vision.pt2")).module()
    for pixels in image_batches():
        with torch.no_grad():
            got, want = vision(pixels), model.encode_image(pixels)
        for value, key in zip(got, ("cls_web", "cls_synthetic", "patch_tokens")):
            assert rel_err(value, getattr(want, key)) <= TOLERANCE, (key, pixels.shape)
    text = torch.export.load(str(folder / "text.pt2")).module()
    for ids, padding in text_batches(model):
        with torch.no_grad():
            assert rel_err(text(ids, padding), model.encode_text(ids, padding)) <= TOLERANCE


def test_export_leaves_the_model_unchanged(model):
    """Tracing shadows the position resize on the instance; afterwards the method is the class's again."""
    from open_tips.inference.export import positions_for_any_grid

    pixels = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        before = model.encode_image(pixels).patch_tokens
        with positions_for_any_grid(model.vision):
            inside = model.encode_image(pixels).patch_tokens
        assert "interpolate_pos_embed" not in vars(model.vision)
        after = model.encode_image(pixels).patch_tokens
    torch.testing.assert_close(inside, before, rtol=0, atol=1e-6)  # resize to the same grid = identity
    assert torch.equal(after, before)


def test_export_vision_only_and_bad_towers(checkpoint, tmp_path, capsys):
    folder = tmp_path / "v"
    args = ["export", "--checkpoint", str(checkpoint), "--output", str(folder), "--config", "tiny"]
    assert main([*args, "--towers", "vision", "--format", "exported-program", "--no-check"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "vision.pt2"]
    assert list(json.loads((folder / "export.json").read_text())["towers"]) == ["vision"]
    with pytest.raises(SystemExit) as stop:
        main([*args, "--towers", "vision,audio"])
    assert stop.value.code == 2 and "--towers" in capsys.readouterr().err


def test_check_failure_exits_1(checkpoint, tmp_path, capsys, monkeypatch):
    """A graph that disagrees with PyTorch beyond --tolerance: the command says so and exits 1."""
    from open_tips.inference import export

    monkeypatch.setattr(export, "verify_program", lambda *a, **k: 3e-3)
    args = ["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "x"), "--config", "tiny"]
    assert main([*args, "--towers", "text", "--format", "exported-program"]) == 1
    assert "3.00e-03 > --tolerance 0.0001" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "x" / "export.json").read_text())
    assert manifest["towers"]["text"]["max_relative_error"] == 3e-3
    assert manifest["tokenizer"] == "tokenizer.model" and manifest["max_len"] == 32


def test_swiglu_vision_onnx_api(tmp_path):
    """The g/14 MLP (SwiGLU, packed w12) through the API: export_onnx + verify_onnx at two sizes."""
    from open_tips.inference.export import check_inputs, export_onnx, verify_onnx
    from open_tips.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny-swiglu").eval()
    with torch.no_grad():  # away from the near-identity init, so that every weight shows in the outputs
        for param in model.vision.parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = export_onnx(model, "vision", tmp_path / "vision.onnx")
    assert len(check_inputs(model, "vision")) == 2
    assert verify_onnx(model, "vision", path) <= TOLERANCE
    with pytest.raises(ValueError, match="tower must be one of"):
        export_onnx(model, "audio", tmp_path / "x.onnx")
