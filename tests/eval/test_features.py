"""Feature extraction: shapes, the shared trunk for value-trick tokens, and the on-disk cache keyed by
checkpoint, dataset and size."""

import os

import torch
from PIL import Image

from open_tips.eval.features import (
    cache_paths,
    dataset_fingerprint,
    encode_both,
    extract_features,
    model_fingerprint,
    to_pixels,
)


def _images(n=5, size=40):
    return [Image.new("RGB", (size, size + 8 * i), (40 * i, 200 - 30 * i, 90)) for i in range(n)]


def test_shared_trunk_matches_separate_forwards(model):
    pixels = torch.rand(2, 3, 56, 42)
    plain, value = encode_both(model, pixels, value_trick=True)
    with torch.no_grad():
        reference = model.encode_image(pixels)
        reference_value = model.vision.forward_value_trick(pixels)
    assert torch.allclose(plain.patch_tokens, reference.patch_tokens, atol=1e-6)
    assert torch.allclose(plain.cls_synthetic, reference.cls_synthetic, atol=1e-6)
    assert torch.allclose(value.patch_tokens, reference_value.patch_tokens, atol=1e-6)
    assert plain.patch_tokens.shape == (2, 4, 3, 64)


def test_extract_features_shapes_and_model_state(model):
    model.train()
    features = extract_features(model, _images(), 60, batch_size=2, value_trick=True, progress=False)
    assert model.training, "the caller's training mode is restored"
    assert len(features) == 5 and features.dim == 64 and features.grid == (4, 4)  # 60 px -> 56 = 4 patches
    assert (
        features.value_tokens.shape == features.patch_tokens.shape and features.cls_web.dtype == torch.float32
    )
    pixels = torch.stack([to_pixels(im, 56) for im in _images()])
    with torch.no_grad():
        direct = model.eval().encode_image(pixels)
    assert torch.allclose(features.cls_web, direct.cls_web, atol=1e-5)
    subset = features.subset([4, 0])
    assert torch.equal(subset.patch_tokens[1], features.patch_tokens[0]) and subset.value_tokens.shape[0] == 2
    assert extract_features(model, _images(2), 56, progress=False).value_tokens is None


def test_feature_cache_reuse_and_invalidation(model, checkpoint, tmp_path, monkeypatch):
    calls = []
    original = model.vision.prepare_tokens
    monkeypatch.setattr(model.vision, "prepare_tokens", lambda *a, **k: calls.append(1) or original(*a, **k))
    images = _images(3)
    model_key = model_fingerprint(checkpoint, "tiny")
    data_key = dataset_fingerprint("toy", 3)
    common = {"cache_dir": tmp_path, "model_key": model_key, "dataset_key": data_key, "progress": False}
    folders = cache_paths(tmp_path, model_key, data_key, 56, 3)
    first = extract_features(model, images, 56, **common)
    assert len(calls) == 1 and (folders["cls"] / "part-00000.pt").is_file()
    assert (folders["patch"] / "part-00000.pt").is_file() and not folders["value"].exists()
    again = extract_features(model, images, 56, **common)
    assert len(calls) == 1 and torch.equal(again.patch_tokens, first.patch_tokens)  # read from the cache
    cls_only = extract_features(model, images, 56, patches=False, **common)  # served by the cls entry
    assert (
        len(calls) == 1
        and torch.equal(cls_only.cls_web, first.cls_web)
        and cls_only.patch_tokens.numel() == 0
    )
    with_value = extract_features(
        model, images, 56, value_trick=True, **common
    )  # value tokens not cached yet
    assert len(calls) == 2 and with_value.value_tokens is not None
    extract_features(model, images, 56, value_trick=True, **common)
    assert len(calls) == 2
    extract_features(model, images, 84, **common)  # another size: another entry
    assert len(calls) == 3
    # a re-written checkpoint (new mtime) or another dataset identity gets new entries
    stat = os.stat(checkpoint)
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model_fingerprint(checkpoint, "tiny") != model_key
    assert dataset_fingerprint("toy", 4) != data_key
    # a damaged cache entry is recomputed, not fatal
    (folders["cls"] / "part-00000.pt").write_bytes(b"garbage")
    extract_features(model, images, 56, **common)
    assert len(calls) == 4


def test_interrupted_extraction_resumes_from_its_parts(model, tmp_path, monkeypatch, caplog):
    images = _images(7)
    common = {"cache_dir": tmp_path, "model_key": "m", "dataset_key": "d", "progress": False, "batch_size": 1}
    reference = extract_features(model, images, 56, progress=False)
    seen = []
    original = model.encode_image

    def failing(pixels):
        seen.append(pixels.shape[0])
        if len(seen) == 5:  # dies in the third part of two images each
            raise KeyboardInterrupt
        return original(pixels)

    monkeypatch.setattr(model, "encode_image", failing)
    try:
        extract_features(model, images, 56, shard_size=2, **common)
    except KeyboardInterrupt:
        pass
    folders = cache_paths(tmp_path, "m", "d", 56, 7)
    assert sorted(p.name for p in folders["cls"].iterdir()) == ["part-00000.pt", "part-00001.pt"]
    seen.clear()
    import logging

    with caplog.at_level(logging.INFO, logger="open_tips.eval.features"):
        resumed = extract_features(model, images, 56, shard_size=2, **common)
    assert len(seen) == 3  # images 4..6 only
    assert "2 of 4 parts from the cache" in caplog.text and "ETA" in caplog.text
    assert torch.allclose(resumed.cls_web, reference.cls_web, atol=1e-5)
    assert torch.allclose(resumed.patch_tokens, reference.patch_tokens, atol=1e-5)


def test_dataset_fingerprint_tracks_files(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"1")
    before = dataset_fingerprint("x", files=[path])
    path.write_bytes(b"22")
    assert dataset_fingerprint("x", files=[path]) != before
