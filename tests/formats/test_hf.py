"""HF-format directories: parity with transformers' Tipsv2Model both ways (tiny random configs)."""

import json

import pytest
import torch
from safetensors.torch import save_file

import open_tips
from tests.helpers import rel_err

transformers = pytest.importorskip("transformers")


def _hf_model(swiglu: bool, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.Tipsv2Config(
        text_config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=300,
            max_position_embeddings=24,
        ),
        vision_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=56,
            patch_size=14,
            use_swiglu_ffn=swiglu,
            mlp_ratio=2.75 if swiglu else 3,
        ),
        temperature_init_value=0.02,
    )
    model = transformers.Tipsv2Model(cfg).eval()
    with torch.no_grad():  # move every parameter off its init value so that each one matters
        for name, param in model.named_parameters():
            if name == "temperature":
                continue
            if param.ndim == 1 and ("norm" in name or "lambda" in name):
                param.copy_(1 + 0.3 * torch.randn_like(param))
            else:
                param.copy_(0.05 * torch.randn_like(param))
    return model


def _compare(ours, hf, sizes=((56, 56), (70, 98), (84, 42))):
    for height, width in sizes:
        pixels = torch.rand(2, 3, height, width)
        with torch.no_grad():
            hf_tokens = hf.vision_model(pixel_values=pixels).last_hidden_state
            mine = ours.encode_image(pixels)
        assert rel_err(mine.cls_web, hf_tokens[:, 0]) < 1e-4
        assert rel_err(mine.cls_synthetic, hf_tokens[:, 1]) < 1e-4
        assert rel_err(mine.patch_tokens.flatten(1, 2), hf_tokens[:, 2:]) < 1e-4
    ids = torch.randint(1, 300, (3, 16))
    ids[0, 7:] = 0
    ids[2, 2:] = 0
    with torch.no_grad():
        hf_text = hf.text_model(input_ids=ids, attention_mask=(ids != 0).long()).pooler_output
        mine_text = ours.encode_text(ids, ids == 0)
    assert rel_err(mine_text, hf_text) < 1e-4
    assert ours.temperature.item() == pytest.approx(hf.temperature.item(), rel=1e-6)


@pytest.mark.parametrize("swiglu", [False, True])
def test_load_hf_directory(tmp_path, swiglu):
    hf = _hf_model(swiglu)
    hf.save_pretrained(tmp_path / "hf")
    ours = open_tips.load_pretrained(tmp_path / "hf")
    assert ours.cfg.vision.heads == 4 and ours.cfg.vision.swiglu == swiglu
    assert ours.cfg.vision.mlp_hidden == (120 if swiglu else 192)
    _compare(ours, hf)


@pytest.mark.parametrize("swiglu", [False, True])
def test_save_pretrained_loads_in_transformers(tmp_path, swiglu):
    ours = open_tips.create_model("tiny-swiglu" if swiglu else "tiny").eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(0.05 * torch.randn_like(param))
    ours.save_pretrained(tmp_path / "out")
    hf = transformers.Tipsv2Model.from_pretrained(tmp_path / "out").eval()
    _compare(ours, hf)
    reloaded = open_tips.load_pretrained(tmp_path / "out")
    assert reloaded.cfg.image_size == ours.cfg.image_size
    _compare(reloaded, hf)


def test_hf_internal_key_names_are_read(tmp_path):
    """Older releases stored transformers' own module names; they are mapped back to the official ones."""
    hf = _hf_model(swiglu=True, seed=3)
    folder = tmp_path / "internal"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if "position_ids" not in k}
    assert any(".attention.q_proj." in k for k in state)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf.config.to_dict()))
    ours = open_tips.load_pretrained(folder)
    _compare(ours, hf)


def test_missing_temperature_uses_config_value(tmp_path):
    hf = _hf_model(swiglu=False)
    hf.save_pretrained(tmp_path / "hf")
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del state["temperature"]  # as in the published hub files
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    ours = open_tips.load_pretrained(tmp_path / "hf")
    assert ours.temperature.item() == pytest.approx(0.02, rel=1e-6)


def test_corrupt_safetensors_named(tmp_path):
    hf = _hf_model(swiglu=False)
    hf.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(open_tips.CheckpointError, match="model.safetensors"):
        open_tips.load_pretrained(tmp_path / "hf")
