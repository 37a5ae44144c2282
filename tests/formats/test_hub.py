"""Hub ids through a fake Hugging Face cache, every config.json layout, npz architecture records, identified
training resolutions. No network: downloads are replaced by a recorder."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import open_tips
from open_tips.formats.common import CheckpointError
from open_tips.formats.load import inferred_image_size
from open_tips.formats.official import save_official_npz
from open_tips.models import get_config
from tests.helpers import random_official_state, reference_text, reference_vision, rel_err

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def _perturbed(name="tiny", seed=0):
    torch.manual_seed(seed)
    model = open_tips.create_model(name).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def _add_snapshot(cache, repo_id, commit, files: dict, refs=("main",)):
    """A cache entry laid out as huggingface_hub writes it: blobs by hash, snapshot symlinks, refs."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snapshot


def _export_files(model, tmp_path, tag):
    out = tmp_path / f"export-{tag}"
    model.save_pretrained(out)
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "hf-cache"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture()
def downloads(monkeypatch):
    """Records every snapshot_download call; a non-local one fails the test unless a test replaces it."""
    import huggingface_hub

    real = huggingface_hub.snapshot_download
    calls = []

    def recorder(repo_id, **kwargs):
        calls.append(kwargs)
        if not kwargs.get("local_files_only"):
            raise AssertionError("a download was attempted")
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recorder)
    return calls


def _same_outputs(a, b):
    pixels = torch.rand(2, 3, 56, 70)
    with torch.no_grad():
        x, y = a.encode_image(pixels), b.encode_image(pixels)
    return rel_err(x.patch_tokens, y.patch_tokens) < 1e-6 and rel_err(x.cls_web, y.cls_web) < 1e-6


def test_hub_id_resolves_through_cache_refs_and_revisions(tmp_path, cache, downloads):
    main_model, tagged_model = _perturbed(seed=1), _perturbed(seed=2)
    _add_snapshot(cache, "org/tiny-tips", COMMIT_A, _export_files(main_model, tmp_path, "a"))
    _add_snapshot(cache, "org/tiny-tips", COMMIT_B, _export_files(tagged_model, tmp_path, "b"), refs=("v1",))
    loaded = open_tips.load_pretrained("org/tiny-tips")
    assert loaded.cfg.vision.heads == 4 and _same_outputs(loaded, main_model)
    assert _same_outputs(open_tips.load_pretrained("org/tiny-tips", revision="v1"), tagged_model)
    assert _same_outputs(open_tips.load_pretrained("org/tiny-tips", revision=COMMIT_B), tagged_model)
    assert downloads and all(call.get("local_files_only", False) for call in downloads)


def test_offline_missing_id_lists_the_cache(tmp_path, cache, downloads):
    _add_snapshot(cache, "org/tiny-tips", COMMIT_A, _export_files(_perturbed(), tmp_path, "a"))
    with pytest.raises(CheckpointError) as info:
        open_tips.load_pretrained("google/tipsv2-b14")
    message = str(info.value)
    assert "google/tipsv2-b14" in message and "org/tiny-tips" in message and "offline" in message
    assert str(cache) in message and "\n" not in message
    with pytest.raises(CheckpointError, match="nosuchtag"):
        open_tips.load_pretrained("org/tiny-tips", revision="nosuchtag")


def test_cli_missing_hub_id_is_one_line(tmp_path, cache, capsys):
    from PIL import Image

    from open_tips.cli import main

    Image.new("RGB", (20, 20)).save(tmp_path / "x.jpg")
    with pytest.raises(SystemExit) as info:
        main(
            [
                "embed",
                str(tmp_path / "x.jpg"),
                "--checkpoint",
                "google/tipsv2-b14",
                "--output",
                str(tmp_path / "o.npz"),
            ]
        )
    assert info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: google/tipsv2-b14") and "cached models: nothing" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_download_only_when_online(tmp_path, cache, monkeypatch):
    """Online (HF_HUB_OFFLINE unset), a missing id is fetched with the TIPS file patterns; local_files_only
    forbids it like HF_HUB_OFFLINE does."""
    import huggingface_hub

    files = _export_files(_perturbed(seed=5), tmp_path, "dl")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        return str(_add_snapshot(tmp_path / "fetched", repo_id, COMMIT_A, files))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(CheckpointError, match="offline"):
        open_tips.load_pretrained("org/remote")
    assert all(call.get("local_files_only", False) for call in calls)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointError, match="offline"):
        open_tips.load_pretrained("org/remote", local_files_only=True)
    assert all(call.get("local_files_only", False) for call in calls)
    model = open_tips.load_pretrained("org/remote")
    online = [call for call in calls if not call.get("local_files_only", False)]
    assert len(online) == 1 and "tokenizer.model" in online[0]["allow_patterns"]
    assert model.cfg.vision.heads == 4


def _official_hub_repo(folder, cfg, config_json: dict, temperature_tensor: float | None = None, seed=3):
    """An official-layout hub repo: official keys under vision_encoder. / text_encoder., given config.json."""
    vision, text = random_official_state(cfg, seed)
    state = {f"vision_encoder.{k}": v for k, v in vision.items()}
    state.update({f"text_encoder.{k}": v for k, v in text.items()})
    if temperature_tensor is not None:
        state["temperature"] = torch.tensor(temperature_tensor)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_json))
    return vision, text


def _check_against_reference(model, vision, text, heads):
    pixels = torch.rand(2, 3, 56, 84)
    with torch.no_grad():
        ours = model.encode_image(pixels)
        ref = reference_vision(vision, pixels, heads=heads)
        ids = torch.randint(2, 512, (2, 10))
        ids[1, 4:] = 0
        ours_text = model.encode_text(ids, ids == 0)
        ref_text = reference_text(text, ids, (ids == 0).long(), heads=heads)
    assert (
        rel_err(ours.cls_web, ref[:, 0]) < 1e-4
        and rel_err(ours.patch_tokens.flatten(1, 2), ref[:, 2:]) < 1e-4
    )
    assert rel_err(ours_text, ref_text) < 1e-4


def test_flat_original_config_layout(tmp_path, cache, downloads):
    """The original flat config.json: temperature at the top level (no tensor), heads from its fields."""
    flat = {
        "model_type": "tipsv2",
        "embed_dim": 64,
        "vision_fn": "vit_tiny",
        "num_heads": 4,
        "text_num_layers": 2,
        "ffn_layer": "mlp",
        "image_size": 56,
        "temperature": 0.004785,
    }
    vision, text = _official_hub_repo(tmp_path / "flat", get_config("tiny"), flat)
    model = open_tips.load_pretrained(tmp_path / "flat")
    assert model.temperature.item() == pytest.approx(0.004785, rel=1e-6)
    assert model.cfg.vision.heads == 4 and model.cfg.text.heads == 4 and model.cfg.image_size == 56
    _check_against_reference(model, vision, text, heads=4)
    # the same repo through the cache, as a hub id
    files = {p.name: p.read_bytes() for p in (tmp_path / "flat").iterdir()}
    _add_snapshot(cache, "google/tipsv2-tiny", COMMIT_A, files)
    hub = open_tips.load_pretrained("google/tipsv2-tiny")
    assert hub.temperature.item() == pytest.approx(0.004785, rel=1e-6)


def test_flat_config_vision_fn_names_the_heads(tmp_path):
    cfg = get_config("tiny")
    for block in (cfg.vision, cfg.text):
        block.width, block.heads = 768, 12
    cfg.vision.depth = cfg.text.depth = 1
    flat = {"embed_dim": 768, "vision_fn": "vit_base", "temperature_contrastive": 0.0066}
    vision, text = _official_hub_repo(tmp_path / "b", cfg, flat)
    model = open_tips.load_pretrained(tmp_path / "b")
    assert model.cfg.vision.heads == 12 and model.temperature.item() == pytest.approx(0.0066, rel=1e-6)


def test_nested_config_layout_temperature_and_heads(tmp_path):
    """transformers' nested Tipsv2Config: temperature_init_value when the weights hold none; heads from
    vision_config / text_config (4, where the width alone would give 1)."""
    nested = {
        "model_type": "tipsv2",
        "temperature_init_value": 0.0123,
        "vision_config": {"hidden_size": 64, "num_attention_heads": 4, "image_size": 56},
        "text_config": {"hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 32},
    }
    vision, text = _official_hub_repo(tmp_path / "nested", get_config("tiny"), nested)
    model = open_tips.load_pretrained(tmp_path / "nested")
    assert model.temperature.item() == pytest.approx(0.0123, rel=1e-6)
    assert model.cfg.text.max_len == 32 and model.cfg.image_size == 56
    _check_against_reference(model, vision, text, heads=4)
    # a temperature tensor in the weights wins over the config value, as in transformers
    vision, text = _official_hub_repo(tmp_path / "both", get_config("tiny"), nested, temperature_tensor=0.03)
    assert open_tips.load_pretrained(tmp_path / "both").temperature.item() == pytest.approx(0.03, rel=1e-6)


def test_missing_temperature_warns(tmp_path):
    _official_hub_repo(tmp_path / "none", get_config("tiny"), {"embed_dim": 64, "num_heads": 4})
    with pytest.warns(UserWarning, match="no temperature"):
        open_tips.load_pretrained(tmp_path / "none")


def test_bad_config_values_named(tmp_path):
    _official_hub_repo(tmp_path / "bad", get_config("tiny"), {"num_heads": 4, "temperature": -1})
    with pytest.raises(CheckpointError, match=r"config.json.*temperature"):
        open_tips.load_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json"):
        open_tips.load_pretrained(tmp_path / "bad")


def test_vision_only_reads_no_text(tmp_path):
    model = _perturbed()
    model.save_pretrained(tmp_path / "m")
    vision = open_tips.load_pretrained(tmp_path / "m", vision_only=True)
    assert vision.text is None and _same_outputs(vision, model)
    model.save_npz(tmp_path / "n")
    (tmp_path / "n_text.npz").write_bytes(b"broken: never opened with vision_only")
    assert open_tips.load_pretrained(tmp_path / "n_vision.npz", vision_only=True).text is None


def test_npz_round_trip_keeps_head_counts(tmp_path):
    """HF -> npz -> HF: a 4-head width-64 model comes back with 4 heads and the same outputs (the npz
    carries an open_tips_config record because the width alone implies 1 head)."""
    model = _perturbed()
    model.save_pretrained(tmp_path / "hf")
    hf = open_tips.load_pretrained(tmp_path / "hf")
    hf.save_npz(tmp_path / "x")
    back = open_tips.load_pretrained(tmp_path / "x_vision.npz")
    assert back.cfg.vision.heads == 4 and back.cfg.text.heads == 4 and back.cfg.image_size == 56
    assert _same_outputs(back, model)
    back.save_pretrained(tmp_path / "hf2")
    assert (
        json.loads((tmp_path / "hf2" / "config.json").read_text())["vision_config"]["num_attention_heads"]
        == 4
    )
    with pytest.raises(CheckpointError, match="cannot record"):
        save_official_npz(model, tmp_path / "y", metadata=False)
    assert not (tmp_path / "y_vision.npz").exists()


def test_standard_architecture_npz_has_no_record(tmp_path):
    cfg = get_config("tiny")
    for block in (cfg.vision, cfg.text):
        block.heads = 1  # the standard count for width 64
    cfg.image_size = 56  # what the geometry (the registry's tiny) implies
    model = open_tips.create_model(cfg)
    paths = model.save_npz(tmp_path / "std")
    with np.load(paths[0]) as archive:
        assert "open_tips_config" not in archive.files  # the official key set only
    cfg.image_size = 112  # a resolution the weights do not imply is recorded
    with np.load(open_tips.create_model(cfg).save_npz(tmp_path / "other")[0]) as archive:
        assert "open_tips_config" in archive.files
    assert open_tips.load_pretrained(tmp_path / "other_vision.npz").cfg.image_size == 112


def test_v1_default_image_size_from_identified_model(tmp_path):
    """TIPS v1 files hold a 16x16 grid (224 px) but the HR models were trained at 448: the file name or the
    geometry identifies the released model and its resolution."""
    assert inferred_image_size(get_config("tips-v1-g14-lr"), "tips_oss_g14_lowres_vision.npz") == 224
    assert inferred_image_size(get_config("tips-v1-g14-hr"), "tips_oss_g14_highres_vision.npz") == 448
    assert inferred_image_size(get_config("tips-v1-l14-hr"), "renamed_vision.npz") == 448
    assert inferred_image_size(get_config("tipsv2-b14"), None) == 448
    # end to end on an S/14 HR-shaped vision file (zeros, compressed: small on disk)
    cfg = get_config("tips-v1-s14-hr")
    zeros = {
        k: np.zeros(tuple(v.shape), np.float32)
        for k, v in open_tips.create_model(cfg).vision.state_dict().items()
    }
    np.savez_compressed(tmp_path / "tips_oss_s14_highres_distilled_vision.npz", **zeros)
    model = open_tips.load_pretrained(tmp_path / "tips_oss_s14_highres_distilled_vision.npz")
    assert model.cfg.image_size == 448 and model.cfg.name == "tips-v1-s14-hr" and model.cfg.vision.heads == 6
