"""Official .npz layout: parity with the official semantics, inference of the architecture, errors."""

import numpy as np
import pytest
import torch

import open_tips
from open_tips.formats.common import CheckpointError
from open_tips.models import get_config
from tests.helpers import reference_text, reference_vision, rel_err, write_official_npz

SIZES = [(56, 56), (70, 70), (84, 56), (42, 98), (112, 112)]


@pytest.mark.parametrize("name", ["tiny", "tiny-swiglu"])
def test_official_npz_matches_reference_semantics(tmp_path, name):
    cfg = get_config(name)
    vision_path, vision_state, text_state = write_official_npz(tmp_path, cfg, seed=1)
    model = open_tips.load_pretrained(vision_path, config=name)
    torch.manual_seed(0)
    for height, width in SIZES:
        pixels = torch.rand(2, 3, height, width)
        with torch.no_grad():
            ours = model.encode_image(pixels)
            ref = reference_vision(vision_state, pixels, heads=cfg.vision.heads)
        grid = (height // 14, width // 14)
        assert ours.patch_tokens.shape == (2, *grid, cfg.vision.width)
        assert rel_err(ours.cls_web, ref[:, 0]) < 1e-4
        assert rel_err(ours.cls_synthetic, ref[:, 1]) < 1e-4
        assert rel_err(ours.patch_tokens.reshape(2, -1, cfg.vision.width), ref[:, 2:]) < 1e-4

    ids = torch.randint(2, cfg.text.vocab_size, (3, 12))
    ids[0, 5:] = 0
    ids[1, 1:] = 0  # a single token
    paddings = ids == 0
    with torch.no_grad():
        ours_text = model.encode_text(ids, paddings)
        ref_text = reference_text(text_state, ids, paddings.long(), heads=cfg.text.heads)
    assert rel_err(ours_text, ref_text) < 1e-4
    assert model.temperature.item() == pytest.approx(0.0123, rel=1e-6)


def test_mask_token_replaces_patches(tmp_path):
    cfg = get_config("tiny")
    vision_path, vision_state, _ = write_official_npz(tmp_path, cfg, seed=2)
    model = open_tips.load_pretrained(vision_path, config="tiny")
    pixels = torch.rand(2, 3, 56, 56)
    masks = torch.rand(2, 16) < 0.5
    with torch.no_grad():
        ours = model.vision.forward_tokens(pixels, masks)
        ref = reference_vision(vision_state, pixels, heads=4, masks=masks)
        unmasked = model.vision.forward_tokens(pixels)
    assert rel_err(ours, ref) < 1e-4
    assert rel_err(ours, unmasked) > 1e-3


def test_architecture_inferred_from_file(tmp_path):
    cfg = get_config("tiny-swiglu")
    vision_path, _, _ = write_official_npz(tmp_path, cfg)
    model = open_tips.load_pretrained(vision_path)  # no override: width 64 -> 1 head by the 64-dim rule
    assert model.cfg.vision.swiglu and model.cfg.vision.mlp_hidden == 176
    assert model.cfg.vision.depth == 2 and model.cfg.vision.pos_grid == 4
    assert model.cfg.text.vocab_size == 512 and model.cfg.text.depth == 2
    # the text file given instead of the vision file finds its sibling
    model_from_text = open_tips.load_pretrained(tmp_path / "tips_test_text.npz", config="tiny-swiglu")
    assert model_from_text.text is not None


def test_released_geometry_inferred_for_b14_v2(tmp_path):
    """A B/14 v2-shaped vision file (32x32 grid) is recognised without any config."""
    cfg = get_config("tipsv2-b14")
    cfg.vision.depth = 1
    cfg.text = None
    vision_path, _, _ = write_official_npz(tmp_path, cfg)
    model = open_tips.load_pretrained(vision_path)
    assert (model.cfg.vision.width, model.cfg.vision.heads, model.cfg.vision.pos_grid) == (768, 12, 32)
    assert model.text is None
    with pytest.raises(RuntimeError, match="no text tower"):
        model.encode_text(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool))


def test_save_npz_round_trip(tmp_path):
    model = open_tips.create_model("tiny")
    model.save_npz(tmp_path / "mine")
    loaded = open_tips.load_pretrained(tmp_path / "mine_vision.npz", config="tiny")
    pixels = torch.rand(1, 3, 56, 84)
    with torch.no_grad():
        assert torch.allclose(
            model.encode_image(pixels).patch_tokens, loaded.encode_image(pixels).patch_tokens, atol=1e-6
        )
    assert loaded.temperature.item() == pytest.approx(model.temperature.item(), rel=1e-6)


def _error_of(path, **kw):
    with pytest.raises(CheckpointError) as info:
        open_tips.load_pretrained(path, **kw)
    return str(info.value)


def test_errors_name_file_and_key(tmp_path):
    cfg = get_config("tiny")
    vision_path, vision_state, _ = write_official_npz(tmp_path, cfg)
    arrays = {k: v.numpy() for k, v in vision_state.items()}

    missing = dict(arrays)
    del missing["blocks.1.ls2.gamma"]
    np.savez(tmp_path / "missing_vision.npz", **missing)
    message = _error_of(tmp_path / "missing_vision.npz", config="tiny")
    assert "missing_vision.npz" in message and "blocks.1.ls2.gamma" in message and "missing" in message

    extra = dict(arrays, **{"blocks.0.attn.extra": np.zeros(3, np.float32)})
    np.savez(tmp_path / "extra_vision.npz", **extra)
    message = _error_of(tmp_path / "extra_vision.npz", config="tiny")
    assert "unexpected" in message and "blocks.0.attn.extra" in message

    shaped = dict(arrays, **{"norm.weight": np.ones(65, np.float32)})
    np.savez(tmp_path / "shape_vision.npz", **shaped)
    message = _error_of(tmp_path / "shape_vision.npz", config="tiny")
    assert "norm.weight" in message and "(65,)" in message and "shape_vision.npz" in message


def test_truncated_and_pickled_files_refused(tmp_path):
    cfg = get_config("tiny")
    vision_path, _, _ = write_official_npz(tmp_path, cfg)
    data = vision_path.read_bytes()
    truncated = tmp_path / "cut_vision.npz"
    truncated.write_bytes(data[: len(data) // 2])
    assert "cut_vision.npz" in _error_of(truncated)

    pickled = tmp_path / "pickle_vision.npz"
    np.savez(pickled, cls_token=np.array([{"a": 1}], dtype=object))
    message = _error_of(pickled)
    assert "pickle_vision.npz" in message

    garbage = tmp_path / "garbage_vision.npz"
    garbage.write_bytes(b"not a zip file at all")
    assert "garbage_vision.npz" in _error_of(garbage)

    with pytest.raises(FileNotFoundError):
        open_tips.load_pretrained(tmp_path / "absent_vision.npz")
