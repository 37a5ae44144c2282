"""The built-in procedural dataset: determinism, ground truth consistent with the pixels, captions."""

import numpy as np
import pytest
from torch.utils.data import DataLoader

from open_tips.data.builtin import (
    COLOURS,
    MIN_VISIBLE,
    SHAPE_CLASSES,
    BuiltinShapes,
    BuiltinShapesStream,
    generate_samples,
)


def _same(a: dict, b: dict) -> bool:
    return (
        np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        and np.array_equal(a["segmentation"], b["segmentation"])
        and np.array_equal(a["depth"], b["depth"])
        and a["web_caption"] == b["web_caption"]
        and a["synthetic_captions"] == b["synthetic_captions"]
    )


def test_deterministic_from_seed_and_index():
    a, b, c = BuiltinShapes(8, 64, seed=1), BuiltinShapes(8, 64, seed=1), BuiltinShapes(8, 64, seed=2)
    assert all(_same(a[i], b[i]) for i in range(8))
    assert all(_same(a[i], a[i]) for i in (3, 0, 3))  # order of access does not matter
    assert not any(_same(a[i], c[i]) for i in range(8))
    assert _same(a[-1], a[7])
    with pytest.raises(IndexError):
        a[8]
    # the same samples as a stream, and split without overlap across 2 ranks x 2 workers
    assert all(_same(x, a[i]) for i, x in enumerate(generate_samples(seed=1, image_size=64, stop=8)))
    keys = []
    for rank in range(2):
        stream = BuiltinShapesStream(10, 64, seed=1, rank=rank, world_size=2)
        keys += [s["__key__"] for s in DataLoader(stream, batch_size=None, num_workers=2)]
    assert sorted(keys) == sorted(BuiltinShapes(10, 64, seed=1)[i]["__key__"] for i in range(10))


def test_image_format_and_sizes():
    sample = BuiltinShapes(1, 80, seed=0, with_normals=True)[0]
    assert sample["image"].mode == "RGB" and sample["image"].size == (80, 80)
    assert sample["segmentation"].shape == (80, 80) and sample["segmentation"].dtype == np.uint8
    assert sample["depth"].shape == (80, 80) and sample["depth"].dtype == np.float32
    normals = sample["normals"]
    assert normals.shape == (80, 80, 3) and np.allclose(np.linalg.norm(normals, axis=-1), 1, atol=1e-5)
    assert np.allclose(normals[sample["segmentation"] > 0], (0, 0, 1))
    assert "normals" not in BuiltinShapes(1, 80)[0]
    for bad in (dict(image_size=8), dict(caption_noise=1.5), dict(num_samples=0)):
        with pytest.raises(ValueError):
            BuiltinShapes(**{"num_samples": 4, **bad})


def test_ground_truth_matches_the_pixels():
    palette = {tuple(v) for v in COLOURS.values()}
    data = BuiltinShapes(60, 96, seed=3)
    for i in range(60):
        s = data[i]
        seg, depth, image = s["segmentation"], s["depth"], np.asarray(s["image"])
        shape_pixels = seg > 0
        # every shape pixel has one of the flat shape colours; the background is textured noise
        colours = {tuple(p) for p in image[shape_pixels][:: max(1, int(shape_pixels.sum()) // 50)]}
        assert colours <= palette
        assert s["labels"] == sorted(set(np.unique(seg).tolist()) - {0})
        assert s["main_label"] in s["labels"]
        assert depth[shape_pixels].max() < depth[~shape_pixels].min() if (~shape_pixels).any() else True
        assert np.all((depth >= 1.0) & (depth <= 10.0))
        objects = sorted(s["objects"], key=lambda o: o["order"])
        # drawn later = nearer; an occluder is nearer than what it hides
        assert [o["depth"] for o in objects] == sorted((o["depth"] for o in objects), reverse=True)
        for obj in objects:
            for behind in obj["in_front_of"]:
                assert behind < obj["order"]
                assert next(o for o in objects if o["order"] == behind)["depth"] > obj["depth"]
        # each described object's visible pixels carry its depth and class
        for obj in objects:
            at_depth = np.isclose(depth, obj["depth"])
            assert abs(at_depth.mean() - obj["visible"]) < 1e-6
            assert np.all(seg[at_depth] == SHAPE_CLASSES.index(obj["class"]) + 1)
        main = max(objects, key=lambda o: o["visible"])
        assert SHAPE_CLASSES.index(main["class"]) + 1 == s["main_label"]


def test_captions_describe_the_scene():
    data = BuiltinShapes(60, 96, seed=4, caption_noise=0.0)
    for i in range(60):
        s = data[i]
        short, detailed = (c["text"] for c in s["synthetic_captions"])
        assert [c["template"] for c in s["synthetic_captions"]] == ["short", "detailed"]
        for obj in s["objects"]:
            assert f"{obj['colour']} {obj['class']}" in short
            assert f"{obj['colour']} {obj['class']}" in detailed
        # every labelled class is described, unless its object is hidden down to a sliver
        described = {o["class"] for o in s["objects"]}
        for label in s["labels"]:
            if SHAPE_CLASSES[label - 1] not in described:
                assert (s["segmentation"] == label).mean() <= MIN_VISIBLE
        if len(s["objects"]) >= 2:
            assert " is left of the " in detailed
        if any(o["in_front_of"] for o in s["objects"]):
            assert "in front of the" in detailed
        # with no noise the web caption names the largest object, with its true colour
        main = SHAPE_CLASSES[s["main_label"] - 1]
        assert main in s["web_caption"]
    noisy = BuiltinShapes(300, 32, seed=5, caption_noise=1.0)
    web = [noisy[i]["web_caption"] for i in range(300)]
    assert sum(not any(c in w for c in SHAPE_CLASSES) for w in web) > 10  # some say nothing about the content
    assert any(w.startswith(("IMG_", "stock photo", "free download")) or "IMG_" in w for w in web)
