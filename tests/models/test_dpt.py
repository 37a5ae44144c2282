"""DPT decoders: parity with transformers' Tipsv2Dpt* classes on random weights written in the HF layout
(tiny and B/14-shaped), the Scenic zip layout (kernel transposes and transposed-conv flips checked against
an independent Flax-semantics reference), open_tips' own file, and strict loading errors."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from open_tips.formats.common import CheckpointError
from open_tips.formats.dpt import (
    ADE20K_CLASSES,
    read_dense_heads_file,
    read_hf_dpt_dir,
    read_scenic_zip,
    save_dense_heads,
    write_hf_dpt_dir,
    write_scenic_zip,
)
from open_tips.models import VisionConfig, VisionTransformer
from open_tips.models.dpt import DPTConfig, DPTDecoder, default_layers
from tests.helpers import rel_err

TOL = 1e-4


def randomise(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Every parameter moved off its init value (norm / LayerScale scales near 1), so each one matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.ndim == 1 and ("norm" in name or "gamma" in name or "lambda" in name):
                param.copy_(1.0 + 0.3 * noise)
            else:
                param.copy_(scale * noise)
    return module.eval()


def random_decoders(
    embed_dim: int,
    layers: tuple[int, ...],
    channels: int = 32,
    num_classes: int = 5,
    seed: int = 0,
    depth_relu: bool = False,
    post_process_channels=None,
) -> dict[str, DPTDecoder]:
    decoders = {}
    for offset, task in enumerate(("depth", "normals", "segmentation")):
        cfg = DPTConfig(
            task=task,
            embed_dim=embed_dim,
            layers=layers,
            channels=channels,
            post_process_channels=post_process_channels,
            num_classes=num_classes,
            project_activation="relu" if (depth_relu and task == "depth") else None,
            class_names=list(ADE20K_CLASSES) if (task == "segmentation" and num_classes == 150) else None,
        )
        decoders[task] = randomise(DPTDecoder(cfg), seed + offset)
    return decoders


def random_vision(width: int, depth: int, heads: int, pos_grid: int = 4, seed: int = 7) -> VisionTransformer:
    cfg = VisionConfig(width=width, depth=depth, heads=heads, mlp_hidden=4 * width, pos_grid=pos_grid)
    return randomise(VisionTransformer(cfg), seed, scale=0.05)


def ours(vision, decoders, pixels):
    """{task: raw output} as transformers returns it (depth [B, H, W], normals unnormalised, logits)."""
    grid = (pixels.shape[-2] // 14, pixels.shape[-1] // 14)
    out = {}
    with torch.no_grad():
        for task, decoder in decoders.items():
            tokens = vision.get_intermediate_layers(pixels, list(decoder.layers), norm=True)
            y = decoder(tokens, grid)
            out[task] = y[:, 0] if task == "depth" else y
    return out


def hf_outputs(model, pixels):
    with torch.no_grad():
        o = model(pixel_values=pixels)
    if hasattr(o, "segmentation_logits"):
        return {"depth": o.predicted_depth, "normals": o.normals, "segmentation": o.segmentation_logits}
    if hasattr(o, "predicted_depth"):
        return {"depth": o.predicted_depth}
    if hasattr(o, "normals"):
        return {"normals": o.normals}
    return {"segmentation": o.logits}


# ---------------------------------------------------------------------------------------------------------
# module behaviour
# ---------------------------------------------------------------------------------------------------------


def test_released_layers_and_fallback():
    assert default_layers(12) == (2, 5, 8, 11)
    assert default_layers(24) == (5, 11, 17, 23)
    assert default_layers(27) == (6, 13, 20, 26)
    assert default_layers(40) == (9, 19, 29, 39)
    assert default_layers(4) == (0, 1, 2, 3)
    assert DPTConfig(embed_dim=768).post_process_channels == (96, 192, 384, 768)
    with pytest.raises(ValueError, match="four"):
        DPTConfig(layers=(1, 2, 3))
    with pytest.raises(ValueError, match="unknown dense task"):
        DPTConfig(task="edges")


def test_outputs_shapes_ranges_and_cls_readout():
    torch.manual_seed(0)
    decoders = random_decoders(32, (0, 0, 1, 1), channels=16, num_classes=7)
    vision = random_vision(32, 2, 2)
    pixels = torch.rand(2, 3, 70, 98)  # 5 x 7 patches: the stride-2 level rounds up to 3 x 4, then x16
    raw = ours(vision, decoders, pixels)
    assert raw["depth"].shape == (2, 48, 64)
    assert raw["normals"].shape == (2, 3, 48, 64) and raw["segmentation"].shape == (2, 7, 48, 64)
    depth = raw["depth"]
    assert float(depth.min()) >= 0.001 - 1e-6 and float(depth.max()) <= 10.0 + 1e-5
    assert float(depth.std()) > 0  # not a constant map
    tokens = vision.get_intermediate_layers(pixels, [0, 1])
    levels = [tokens[0], tokens[0], tokens[1], tokens[1]]
    unit = decoders["normals"].predict(levels, size=(70, 98), grid=(5, 7))
    assert unit.shape == (2, 3, 70, 98)
    assert torch.allclose(unit.norm(dim=1), torch.ones(2, 70, 98), atol=1e-5)
    # the readout uses CLS1 (index 0) and ignores CLS2 (index 1)
    base = decoders["segmentation"](levels, (5, 7))
    changed_cls1 = [t.clone() for t in levels]
    changed_cls2 = [t.clone() for t in levels]
    for t in changed_cls1:
        t[:, 0] += 1.0
    for t in changed_cls2:
        t[:, 1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(decoders["segmentation"](changed_cls1, (5, 7)), base)
        assert torch.equal(decoders["segmentation"](changed_cls2, (5, 7)), base)


def test_depth_is_the_expectation_over_linear_bins():
    decoder = DPTDecoder(DPTConfig(task="depth", embed_dim=16, layers=(0, 0, 0, 0), channels=8))
    logits = torch.full((1, 256, 1, 1), -5.0)
    logits[0, 255] = 1e6  # all weight on the last bin
    assert float(decoder.decode(logits)) == pytest.approx(10.0, rel=1e-4)
    logits = torch.full((1, 256, 1, 1), -5.0)  # every relu'd logit 0: weights min_depth each, uniform
    assert float(decoder.decode(logits)) == pytest.approx((0.001 + 10.0) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# HF layout parity with transformers
# ---------------------------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")

SINGLE = {
    "depth": "Tipsv2DptForDepthEstimation",
    "normals": "Tipsv2DptForNormalEstimation",
    "segmentation": "Tipsv2DptForSemanticSegmentation",
}


def _compare(vision, decoders, hf_models, sizes):
    worst = 0.0
    for height, width in sizes:
        pixels = torch.rand(2, 3, height, width)
        mine = ours(vision, decoders, pixels)
        for model in hf_models:
            for task, reference in hf_outputs(model, pixels).items():
                assert mine[task].shape == reference.shape, (task, mine[task].shape, reference.shape)
                err = rel_err(mine[task], reference)
                worst = max(worst, err)
                assert err <= TOL, f"{type(model).__name__} {task} at {height}x{width}: {err:.2e}"
    return worst


def test_transformers_saved_directory_loads_with_equal_outputs(tmp_path):
    torch.manual_seed(0)
    backbone = transformers.Tipsv2VisionConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56, patch_size=14,
        out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False,
    )  # fmt: skip
    cfg = transformers.Tipsv2DptConfig(
        backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 64], fusion_hidden_size=32, num_labels=5
    )
    hf = randomise(transformers.Tipsv2DptForDensePrediction(cfg), seed=1)
    hf.save_pretrained(tmp_path / "hf")
    decoders, vision_state, _ = read_hf_dpt_dir(tmp_path / "hf")
    assert sorted(decoders) == ["depth", "normals", "segmentation"]
    assert decoders["depth"].layers == (0, 1, 2, 3)
    assert (
        decoders["depth"].cfg.project_activation == "relu"
    )  # transformers' default depth_decoder_activation
    vision = VisionTransformer(VisionConfig(width=64, depth=4, heads=4, mlp_hidden=256, pos_grid=4)).eval()
    vision.load_state_dict(vision_state)
    singles = [getattr(transformers, SINGLE[t]).from_pretrained(tmp_path / "hf").eval() for t in SINGLE]
    worst = _compare(vision, decoders, [hf, *singles], sizes=((56, 56), (70, 98)))
    print(f"tiny (transformers-written) worst relative error {worst:.2e}")


@pytest.mark.parametrize("depth_relu", [False, True])
def test_open_tips_hf_writer_loads_in_transformers(tmp_path, depth_relu):
    vision = random_vision(64, 4, 4)
    decoders = random_decoders(64, (0, 1, 2, 3), depth_relu=depth_relu, seed=3)
    write_hf_dpt_dir(tmp_path / "hf", decoders, vision)
    dense = transformers.Tipsv2DptForDensePrediction.from_pretrained(tmp_path / "hf").eval()
    singles = [getattr(transformers, SINGLE[t]).from_pretrained(tmp_path / "hf").eval() for t in SINGLE]
    worst = _compare(vision, decoders, [dense, *singles], sizes=((56, 56), (42, 84)))
    print(f"tiny (open_tips-written, depth relu {depth_relu}) worst relative error {worst:.2e}")
    back, _, _ = read_hf_dpt_dir(tmp_path / "hf")  # and back into open_tips, bit for bit
    for task, decoder in decoders.items():
        assert back[task].cfg.project_activation == decoder.cfg.project_activation
        for key, value in decoder.state_dict().items():
            assert torch.equal(back[task].state_dict()[key], value), key


def test_b14_shaped_parity(tmp_path):
    """B/14 widths (768, 12 heads, readout 1536 -> 768, levels 96/192/384/768, 256 channels, 150 classes)
    on a 4-block tower, so that the test stays fast."""
    vision = random_vision(768, 4, 12, pos_grid=4, seed=11)
    decoders = random_decoders(768, (0, 1, 2, 3), channels=256, num_classes=150, seed=5)
    assert decoders["segmentation"].cfg.post_process_channels == (96, 192, 384, 768)
    write_hf_dpt_dir(tmp_path / "hf", decoders, vision)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"]["149"] == "flag" and config["fusion_hidden_size"] == 256
    dense = transformers.Tipsv2DptForDensePrediction.from_pretrained(tmp_path / "hf").eval()
    worst = _compare(vision, decoders, [dense], sizes=((56, 70),))
    print(f"B/14-shaped worst relative error {worst:.2e}")


# ---------------------------------------------------------------------------------------------------------
# Scenic layout
# ---------------------------------------------------------------------------------------------------------


def test_scenic_zip_gives_identical_outputs(tmp_path):
    vision = random_vision(64, 4, 4)
    decoders = random_decoders(64, (0, 1, 2, 3), num_classes=150, seed=9)
    pixels = torch.rand(1, 3, 56, 70)
    before = ours(vision, decoders, pixels)
    for task, decoder in decoders.items():
        path = tmp_path / f"tips_v2_test_{task}_dpt.zip"
        write_scenic_zip(decoder, path)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        assert "decoder/dpt/reassemble_blocks/resize_layers_0/kernel.npy" in names
        head = {
            "depth": "pixel_depth_classif",
            "normals": "pixel_normals",
            "segmentation": "pixel_segmentation",
        }
        assert f"decoder/{head[task]}/kernel.npy" in names
        loaded = read_scenic_zip(path, layers=(0, 1, 2, 3))
        assert loaded.task == task
        after = ours(vision, {task: loaded}, pixels)[task]
        assert torch.equal(after, before[task])
    seg = read_scenic_zip(tmp_path / "tips_v2_test_segmentation_dpt.zip", backbone_depth=12)
    assert seg.layers == (2, 5, 8, 11) and seg.cfg.class_names[0] == "wall"


def _flax_conv_transpose(x: np.ndarray, kernel: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """flax.linen.ConvTranspose (transpose_kernel=False) written from its definition, NHWC: the input is
    dilated by the stride, padded by ``pad`` on each side and correlated with the kernel as stored."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    dilated = np.zeros((n, (h - 1) * stride + 1 + 2 * pad, (w - 1) * stride + 1 + 2 * pad, c))
    dilated[:, pad : pad + (h - 1) * stride + 1 : stride, pad : pad + (w - 1) * stride + 1 : stride] = x
    out_h, out_w = dilated.shape[1] - k + 1, dilated.shape[2] - k + 1
    out = np.zeros((n, out_h, out_w, kernel.shape[-1]))
    for a in range(k):
        for b in range(k):
            out += dilated[:, a : a + out_h, b : b + out_w] @ kernel[a, b]
    return out


def _flax_conv(x: np.ndarray, kernel: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """flax.linen.Conv with explicit symmetric padding, NHWC, HWIO kernel (a correlation)."""
    k = kernel.shape[0]
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out_h = (padded.shape[1] - k) // stride + 1
    out_w = (padded.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for a in range(k):
        for b in range(k):
            out += padded[:, a : a + stride * out_h : stride, b : b + stride * out_w : stride] @ kernel[a, b]
    return out


def test_scenic_kernels_follow_flax_semantics(tmp_path):
    """The loaded PyTorch layers reproduce Flax's ops on the zip's kernels as stored: ConvTranspose x4 /
    x2 (Scenic's padding 3 / 1), the 3x3 stride-2 convolution, a 3x3 convolution and a Dense layer."""
    decoder = random_decoders(64, (0, 1, 2, 3), seed=13)["depth"]
    path = tmp_path / "d.zip"
    write_scenic_zip(decoder, path)
    with zipfile.ZipFile(path) as archive:

        def npy(name):
            return np.load(io.BytesIO(archive.read(f"decoder/{name}.npy")))

        raw = {
            "t0": npy("dpt/reassemble_blocks/resize_layers_0/kernel"),
            "t0b": npy("dpt/reassemble_blocks/resize_layers_0/bias"),
            "t1": npy("dpt/reassemble_blocks/resize_layers_1/kernel"),
            "t1b": npy("dpt/reassemble_blocks/resize_layers_1/bias"),
            "d3": npy("dpt/reassemble_blocks/resize_layers_3/kernel"),
            "d3b": npy("dpt/reassemble_blocks/resize_layers_3/bias"),
            "c2": npy("dpt/convs_2/kernel"),
            "dense": npy("pixel_depth_classif/kernel"),
            "denseb": npy("pixel_depth_classif/bias"),
        }
    loaded = read_scenic_zip(path, layers=(0, 1, 2, 3))
    layers = loaded.dpt.reassemble.resize_layers
    rng = np.random.default_rng(0)

    def check(layer, kernel, bias, channels, fn, stride, pad):
        x = rng.standard_normal((1, 5, 6, channels))
        expected = fn(x, kernel, stride, pad) + (0 if bias is None else bias)
        with torch.no_grad():
            got = layer(torch.from_numpy(x).float().permute(0, 3, 1, 2)).permute(0, 2, 3, 1).double().numpy()
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

    cfg = loaded.cfg
    check(layers[0], raw["t0"], raw["t0b"], cfg.post_process_channels[0], _flax_conv_transpose, 4, 3)
    check(layers[1], raw["t1"], raw["t1b"], cfg.post_process_channels[1], _flax_conv_transpose, 2, 1)
    check(layers[3], raw["d3"], raw["d3b"], cfg.post_process_channels[3], _flax_conv, 2, 1)
    check(loaded.dpt.convs[2], raw["c2"], None, cfg.post_process_channels[2], _flax_conv, 1, 1)
    x = rng.standard_normal((3, cfg.channels))
    with torch.no_grad():
        got = loaded.head(torch.from_numpy(x).float()).double().numpy()
    assert np.abs(got - (x @ raw["dense"] + raw["denseb"])).max() < 1e-4
    # a kernel loaded without the flip would not pass: the x4 kernel is not symmetric
    assert not np.allclose(raw["t0"], raw["t0"][::-1, ::-1])


# ---------------------------------------------------------------------------------------------------------
# open_tips' own file and strict errors
# ---------------------------------------------------------------------------------------------------------


def test_own_file_round_trip(tmp_path):
    decoders = random_decoders(64, (0, 1, 2, 3), num_classes=150, seed=21)
    identity = {"width": 64, "depth": 4, "fingerprint": "abc"}
    save_dense_heads(tmp_path / "heads.safetensors", decoders, backbone=identity)
    back, backbone = read_dense_heads_file(tmp_path / "heads.safetensors")
    assert backbone == identity and sorted(back) == sorted(decoders)
    for task in decoders:
        assert back[task].cfg == decoders[task].cfg
        for key, value in decoders[task].state_dict().items():
            assert torch.equal(back[task].state_dict()[key], value)


def _rewrite_zip(src, dst, drop=None, reshape=None, add=None):
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for name in archive.namelist():
            if name == drop:
                continue
            data = archive.read(name)
            if name == reshape:
                buffer = io.BytesIO()
                np.save(buffer, np.load(io.BytesIO(data))[..., :-1])
                data = buffer.getvalue()
            out.writestr(name, data)
        if add:
            buffer = io.BytesIO()
            np.save(buffer, np.zeros(3))
            out.writestr(add, buffer.getvalue())


def test_strict_errors_name_file_and_key(tmp_path):
    decoder = random_decoders(64, (0, 1, 2, 3), seed=2)["normals"]
    good = tmp_path / "good.zip"
    write_scenic_zip(decoder, good)
    member = "decoder/dpt/fusion_blocks_2/PreActResidualConvUnit_1/conv2/kernel.npy"
    _rewrite_zip(good, tmp_path / "missing.zip", drop=member)
    with pytest.raises(
        CheckpointError, match=r"missing\.zip.*fusion_blocks_2/PreActResidualConvUnit_1/conv2"
    ):
        read_scenic_zip(tmp_path / "missing.zip", layers=(0, 1, 2, 3))
    _rewrite_zip(good, tmp_path / "extra.zip", add="decoder/dpt/stray/kernel.npy")
    with pytest.raises(CheckpointError, match=r"extra\.zip: unexpected keys: dpt/stray/kernel"):
        read_scenic_zip(tmp_path / "extra.zip", layers=(0, 1, 2, 3))
    _rewrite_zip(good, tmp_path / "shape.zip", reshape="decoder/dpt/convs_1/kernel.npy")
    with pytest.raises(CheckpointError, match=r"shape\.zip.*dpt\.convs\.1\.weight"):
        read_scenic_zip(tmp_path / "shape.zip", layers=(0, 1, 2, 3))
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match=r"junk\.zip"):
        read_scenic_zip(tmp_path / "junk.zip", layers=(0, 1, 2, 3))
    vision = random_vision(64, 4, 4)
    write_hf_dpt_dir(tmp_path / "hf", {"depth": random_decoders(64, (0, 1, 2, 3))["depth"]}, vision)
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "hf" / "model.safetensors")
    del state["depth_head.fusion_blocks.1.residual_unit.conv1.weight"]
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors.*dpt\.fusion_blocks\.1\.residual_unit\.conv1"
    ):
        read_hf_dpt_dir(tmp_path / "hf")
