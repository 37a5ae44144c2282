"""Every suite on a fixture written here in its exact on-disk layout, with known answers: a perfect-feature
model (tests/eval/oracle.py) gives R@1 = 1, top-1 = 1 and mIoU = 1, so a wrong label mapping, a lost ignore
label or a mispaired image shows up as a number below 1."""

import json

import numpy as np
import pytest
from PIL import Image

from open_tips.eval.metrics import IGNORE
from open_tips.eval.registry import EvalError, get_suite
from open_tips.eval.suite import EvalOptions, evaluate, find_suite
from tests.eval.oracle import OracleModel, picture

OPTIONS = dict(image_size=56, probe_epochs=40, progress=False, pictures=False, device="cpu")


def _blocks(rng, classes: list[int], grid: int = 4) -> np.ndarray:
    """[grid, grid] patch classes in horizontal stripes: bilinear upsampling of per-patch scores (what
    the protocols do) is then exact at every class boundary, as it is not where three classes meet."""
    return np.repeat(rng.choice(classes, size=(grid, 1)), grid, axis=1)


def _save_jpeg(image: Image.Image, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=100, subsampling=0)


# ------------------------------------------------------------------------------------------- retrieval


def test_flickr30k_layout_perfect_retrieval(tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for i in range(8):
        name = f"{1000 + i}.jpg"
        _save_jpeg(picture(_blocks(rng, [0, 1]), item=i), tmp_path / "flickr30k-images" / name)
        split = "test" if i < 6 else "train"
        sentences = [{"raw": f"item{i} caption number {j}", "tokens": []} for j in range(5)]
        images.append({"filename": name, "split": split, "sentences": sentences, "imgid": i})
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    assert find_suite(tmp_path).name == "flickr30k"
    results = evaluate(OracleModel(), "flickr30k", tmp_path, tmp_path / "out", options=EvalOptions(**OPTIONS))
    assert set(results["tasks"]) == {"retrieval_web", "retrieval_synthetic", "retrieval_mean"}
    for metrics in results["tasks"].values():
        assert metrics["i2t_R@1"] == 1.0 and metrics["t2i_R@1"] == 1.0
        assert metrics["protocol"]["images"] == 6 and metrics["protocol"]["captions"] == 30
    assert results["tasks"]["retrieval_web"]["protocol"]["cls"].startswith("web")
    assert results["tasks"]["retrieval_mean"]["protocol"]["cls"].startswith("mean")
    assert results["dataset"]["split"] == "test" and "warning" in results["dataset"]  # 6, not 1000
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["model"]["name"] == "oracle" and saved["preprocessing"]["resolution"] == 56
    # a caption paired with the wrong image is a miss
    images[0]["sentences"][0]["raw"] = "item1 moved here"
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images}))
    shuffled = evaluate(OracleModel(), "flickr30k", tmp_path, options=EvalOptions(**OPTIONS))
    assert shuffled["tasks"]["retrieval_web"]["t2i_R@1"] == pytest.approx(29 / 30)
    # missing image files: one clear error
    (tmp_path / "flickr30k-images" / "1003.jpg").unlink()
    with pytest.raises(EvalError, match="1 of 6 images not found"):
        evaluate(OracleModel(), "flickr30k", tmp_path, options=EvalOptions(**OPTIONS))


# ---------------------------------------------------------------------------------------- classification


def test_imagenet_layout_zeroshot_knn_linear(tmp_path):
    rng = np.random.default_rng(1)
    synsets = ["n01440764", "n01443537", "n01484850"]
    for split, count in (("train", 4), ("val", 3)):
        for label, synset in enumerate(synsets):
            for j in range(count):
                _save_jpeg(
                    picture(_blocks(rng, [0]), item=label), tmp_path / split / synset / f"{split}_{j}.JPEG"
                )
    mapping = "\n".join(f"{s} class{i}, other name" for i, s in enumerate(synsets))
    (tmp_path / "LOC_synset_mapping.txt").write_text(mapping + "\n")
    assert find_suite(tmp_path).name == "imagenet"
    results = evaluate(OracleModel(), "imagenet", tmp_path, options=EvalOptions(**OPTIONS))
    assert results["dataset"]["class_names"] == "LOC_synset_mapping.txt"
    for key in ("zeroshot_web", "zeroshot_synthetic", "zeroshot_mean", "knn", "linear"):
        assert results["tasks"][key]["top1"] == 1.0, key
    assert results["tasks"]["zeroshot_web"]["protocol"]["num_templates"] == 9
    # a capped split keeps every class (evenly spaced), not the first class only
    capped = evaluate(
        OracleModel(), "imagenet", tmp_path, tasks=["zeroshot"], options=EvalOptions(**OPTIONS, max_images=3)
    )
    assert capped["num_test"] == 3 and capped["tasks"]["zeroshot_web"]["top1"] == 1.0
    # without a train folder kNN cannot run: skipped by default, an error when asked for
    import shutil

    shutil.rmtree(tmp_path / "train")
    default = evaluate(OracleModel(), "imagenet", tmp_path, options=EvalOptions(**OPTIONS))
    assert set(default["skipped"]) == {"knn", "linear"} and "zeroshot_web" in default["tasks"]
    with pytest.raises(EvalError, match="task knn cannot run on suite imagenet"):
        evaluate(OracleModel(), "imagenet", tmp_path, tasks=["knn"], options=EvalOptions(**OPTIONS))


# ------------------------------------------------------------------------------------------ segmentation


def _write_seg_pair(rng, image_path, mask_path, classes, stored, palette=False, border=False):
    """Image coloured by class, mask storing ``stored[class]``; ``border``: a 255 line across the mask."""
    blocks = _blocks(rng, classes)
    _save_jpeg(picture(blocks, item=0), image_path)
    mask = np.kron(np.vectorize(lambda c: stored[c])(blocks), np.ones((14, 14))).astype(np.uint8)
    if border:
        mask[20, :] = IGNORE
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    out = Image.fromarray(mask)
    if palette:
        out = out.convert("P")
        out.putpalette(sum(([i, 255 - i, (7 * i) % 256] for i in range(256)), []))
    out.save(mask_path)
    return blocks


def test_ade20k_layout_label_mapping_and_perfect_miou(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "ADEChallengeData2016"
    stored = {c: c + 1 for c in range(5)}  # class k is stored as k + 1; 0 = "other"
    # one class per image (plus an "other" patch below): a linear probe with bilinearly upsampled logits
    # is exact only away from class boundaries (test_voc_* covers boundaries)
    for split, count in (("training", 10), ("validation", 5)):
        for i in range(count):
            blocks = _write_seg_pair(
                rng,
                root / "images" / split / f"ADE_{i}.jpg",
                root / "annotations" / split / f"ADE_{i}.png",
                [i % 5],
                stored,
            )
    # the last validation image: its top-left patch shows class 3, its mask says 0 ("other" -> ignored)
    last, last_image = (
        root / "annotations" / "validation" / "ADE_4.png",
        root / "images" / "validation" / "ADE_4.jpg",
    )
    raw = np.asarray(Image.open(last)).copy()
    raw[:14, :14] = 0
    Image.fromarray(raw).save(last)
    shown = blocks.copy()
    shown[0, 0] = 3
    _save_jpeg(picture(shown, item=0), last_image)
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i + 1}\t0.1\t1\t1\tclass{i}, synonym" for i in range(150)]
    (root / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    assert find_suite(tmp_path).name == "ade20k" and find_suite(root).name == "ade20k"
    data = get_suite("ade20k").load(root, EvalOptions(**OPTIONS))
    mask = data.test.masks[4]
    assert (mask[:14, :14] == IGNORE).all() and (mask[14:, 14:] == 4).all()  # 0 -> ignore, 5 -> 4
    assert sorted(int(data.test.masks[i][20, 20]) for i in range(5)) == [0, 1, 2, 3, 4]
    assert data.seg_names[:2] == ["class0", "class1"] and len(data.seg_names) == 150
    results = evaluate(OracleModel(), "ade20k", root, options=EvalOptions(**OPTIONS))
    assert (
        results["tasks"]["seg"]["miou"] == 1.0 and results["tasks"]["seg"]["protocol"]["num_classes"] == 150
    )
    assert results["tasks"]["zeroshot_seg"]["miou"] == 1.0
    assert "zeroshot_seg_objects" not in results["tasks"]  # no background class in ADE150
    assert results["dataset"]["labels"] == "0 (other) -> ignore, 1..150 -> 0..149"


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_voc_layout_palette_ignore_background(tmp_path, mode):
    rng = np.random.default_rng(3)
    root = tmp_path / "VOCdevkit" / "VOC2012"
    stored = {c: c for c in range(4)}
    for split, names in (
        ("train", [f"2007_{i:06d}" for i in range(6)]),
        ("val", [f"2008_{i:06d}" for i in range(3)]),
    ):
        (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            _write_seg_pair(
                rng,
                root / "JPEGImages" / f"{name}.jpg",
                root / "SegmentationClass" / f"{name}.png",
                [0, 1, 2, 3],
                stored,
                palette=True,
                border=True,
            )
    _save_jpeg(picture(_blocks(rng, [1]), 0), root / "JPEGImages" / "unlisted.jpg")  # not in val.txt
    assert Image.open(root / "SegmentationClass" / "2008_000000.png").mode == "P"
    (root / "classes.txt").write_text("background\nclass1\nclass2\nclass3\n")
    assert find_suite(tmp_path / "VOCdevkit").name == "voc"
    options = EvalOptions(
        **OPTIONS, zeroshot_mode=mode, zeroshot_size=56, zeroshot_window=28, zeroshot_stride=14
    )
    results = evaluate(OracleModel(), "voc", tmp_path / "VOCdevkit", options=options)
    assert results["num_test"] == 3 and results["num_train"] == 6
    # stripes: bilinear upsampling of the linear logits blurs the class boundaries a little (exact in ADE)
    assert results["tasks"]["seg"]["miou"] > 0.85 and results["tasks"]["seg"]["pixel_accuracy"] > 0.95
    assert results["tasks"]["zeroshot_seg"]["miou"] == 1.0  # "background" prompted as class 0
    assert results["tasks"]["zeroshot_seg_objects"]["miou"] == 1.0
    assert results["tasks"]["zeroshot_seg"]["protocol"]["mode"].startswith(mode)
    assert results["tasks"]["zeroshot_seg_objects"]["protocol"]["background"] == "ignore"
    # objects only prompted, background where the best cosine is low (whole mode: the score is the cosine;
    # slide mode thresholds window-averaged softmax probabilities, another scale)
    for threshold, perfect in ((0.5, True), (-1.0, False)) if mode == "whole" else ():
        options = EvalOptions(
            **OPTIONS, zeroshot_mode=mode, zeroshot_background="threshold", zeroshot_threshold=threshold
        )
        scored = evaluate(
            OracleModel(), "voc", tmp_path / "VOCdevkit", tasks=["zeroshot-seg"], options=options
        )
        assert (scored["tasks"]["zeroshot_seg"]["miou"] == 1.0) is perfect
        assert scored["tasks"]["zeroshot_seg"]["settings"]["threshold"] == threshold


def test_voc_builtin_names_and_pascal_context_variants(tmp_path):
    rng = np.random.default_rng(4)
    voc = get_suite("voc")
    for suite, masks, sets in (("pascal-context", "SegmentationClassContext", "SegmentationContext"),):
        root = tmp_path / "VOC2010"
        for split in ("train", "val"):
            (root / "ImageSets" / sets).mkdir(parents=True, exist_ok=True)
            (root / "ImageSets" / sets / f"{split}.txt").write_text(f"{split}_a\n")
            _write_seg_pair(
                rng,
                root / "JPEGImages" / f"{split}_a.jpg",
                root / masks / f"{split}_a.png",
                [0, 1, 59],
                {0: 0, 1: 1, 59: 59},
            )
        assert find_suite(tmp_path).name == suite
        full = get_suite("pascal-context").load(tmp_path, EvalOptions(**OPTIONS))
        reduced = get_suite("pascal-context59").load(tmp_path, EvalOptions(**OPTIONS))
        assert len(full.seg_names) == 60 and full.seg_names[0] == "background" and full.background
        assert len(reduced.seg_names) == 59 and not reduced.background
        raw = full.test.masks[0]
        assert set(np.unique(raw)) <= {0, 1, 59}
        assert (reduced.test.masks[0] == np.where(raw == 0, IGNORE, raw - 1)).all()
        assert reduced.seg_names[58] == "wood" and full.seg_names[59] == "wood"
    assert voc.name == "voc"


# ------------------------------------------------------------------------------------------------- depth


def test_nyuv2_layout_crop_png_npy_and_normals(tmp_path):
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        for i in range(3):
            _save_jpeg(
                picture(_blocks(rng, [0, 1, 2], grid=4), 0, scale=14).resize((640, 480)),
                tmp_path / split / "rgb" / f"{i}.jpg",
            )
            depth = rng.uniform(0.5, 9.0, (480, 640))
            (tmp_path / split / "depth").mkdir(parents=True, exist_ok=True)
            if i == 0:
                np.save(tmp_path / split / "depth" / f"{i}.npy", depth.astype(np.float32))
            else:
                Image.fromarray((depth * 1000).astype(np.uint16)).save(
                    tmp_path / split / "depth" / f"{i}.png"
                )
    assert find_suite(tmp_path).name == "nyuv2"
    data = get_suite("nyuv2").load(tmp_path, EvalOptions(**OPTIONS))
    assert data.info["depth_crop"].startswith("eigen") and data.test.normals is None
    assert abs(float(data.test.depth[1].mean()) - 4.75) < 0.2  # millimetres -> metres
    valid = data.test.valid[0]
    assert valid.shape == (480, 640) and valid[45:471, 41:601].all() and valid.sum() == 426 * 560
    from open_tips.eval.context import Context

    ctx = Context(OracleModel(), data, EvalOptions(**OPTIONS))
    target = ctx.targets("test", "depth")
    assert target.shape == (3, 56, 56) and (target[:, 0, :] == 0).all() and (target[:, 28, 28] > 0).all()
    assert (ctx.targets("train", "depth")[:, 0, :] > 0).all()  # the crop is for evaluation only
    results = evaluate(OracleModel(), "nyuv2", tmp_path, options=EvalOptions(**OPTIONS))
    assert {"rmse", "delta1", "abs_rel"} <= set(results["tasks"]["depth"]) and results["skipped"] == {
        "normals": "no surface normals"
    }
    with pytest.raises(EvalError, match="task normals cannot run on suite nyuv2: no surface normals"):
        evaluate(OracleModel(), "nyuv2", tmp_path, tasks=["normals"], options=EvalOptions(**OPTIONS))
    for split in ("train", "test"):
        (tmp_path / split / "normals").mkdir()
        for i in range(3):
            normal = np.zeros((480, 640, 3), np.float32)
            normal[..., 2] = 1.0
            np.save(tmp_path / split / "normals" / f"{i}.npy", normal)
    with_normals = evaluate(
        OracleModel(), "nyuv2", tmp_path, tasks=["normals"], options=EvalOptions(**OPTIONS)
    )
    assert with_normals["tasks"]["normals"]["angular_mean"] < 5.0


# ------------------------------------------------------------------------------------ registry, errors


def test_text_tasks_on_vision_only_model():
    options = EvalOptions(**OPTIONS, num_train=8, num_test=6)
    default = evaluate(OracleModel(text=False), "builtin", tasks=None, options=options)
    assert {"zeroshot", "retrieval", "zeroshot-seg"} <= set(default["skipped"]) and "knn" in default["tasks"]
    with pytest.raises(EvalError, match="task retrieval needs text"):
        evaluate(OracleModel(text=False), "builtin", tasks=["knn", "retrieval"], options=options)
    with pytest.raises(EvalError, match="suite flickr30k needs --data"):
        evaluate(OracleModel(), "flickr30k", options=options)
    with pytest.raises(EvalError, match="unknown suite"):
        evaluate(OracleModel(), "nonsense", options=options)
    with pytest.raises(EvalError, match="has no task depth"):
        evaluate(OracleModel(), "coco5k", "/", tasks=["depth"], options=options)


def test_a_new_suite_is_one_registration(tmp_path):
    from open_tips.eval.dataset import EvalData, Split
    from open_tips.eval.registry import Suite, register_suite, suites

    def load(root, options):
        images = [picture(np.zeros((4, 4), int), item=i) for i in range(5)]
        return EvalData("toy", test=Split(images, "toy-key", captions=[[f"item{i}"] for i in range(5)]))

    register_suite(Suite("toy-test-suite", load, ("retrieval",), needs_root=False))
    try:
        results = evaluate(OracleModel(), "toy-test-suite", options=EvalOptions(**OPTIONS))
        assert results["tasks"]["retrieval_web"]["i2t_R@1"] == 1.0
    finally:
        from open_tips.eval import registry

        registry._SUITES.pop("toy-test-suite")
    assert "toy-test-suite" not in suites()
