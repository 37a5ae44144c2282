"""`open-tips eval` end to end on a random tiny checkpoint: the built-in suite, the feature cache,
--compare, COCO-mini, dataset folders, a vision-only model, and the trainer's entry point."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from open_tips.cli import main
from tests.eval.conftest import COCO

COMMON = ["--config", "tiny", "--device", "cpu", "--image-size", "56", "--probe-epochs", "4"]
LOWER = {"rmse", "abs_rel", "angular_mean", "angular_median", "angular_rmse"}


def _check_ranges(results):
    for task, metrics in results["tasks"].items():
        for name, value in metrics.items():
            if name in ("settings", "protocol"):
                continue
            assert isinstance(value, float) and np.isfinite(value), (task, name, value)
            if name in LOWER:
                assert value >= 0, (task, name, value)
            else:
                assert 0.0 <= value <= 1.0, (task, name, value)


def _run(checkpoint, out, *extra):
    return main(["eval", "--checkpoint", str(checkpoint), *COMMON, "--output", str(out), *extra])


def test_eval_builtin_suite_cache_merge_and_compare(checkpoint, tmp_path, capsys):
    out = tmp_path / "builtin"
    sizes = ["--num-train", "24", "--num-test", "16"]
    assert _run(checkpoint, out, *sizes) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "builtin" and results["image_size"] == 56
    assert results["model"]["checkpoint"] == str(checkpoint) and results["model"]["config"] == "tiny"
    assert results["model"]["text"] is True and len(results["model"]["weights"]) == 16
    assert results["preprocessing"]["resolution"] == 56 and "bilinear" in results["preprocessing"]["resample"]
    assert set(results["tasks"]) == {
        "knn",
        "linear",
        "zeroshot_web",
        "zeroshot_synthetic",
        "zeroshot_mean",
        "retrieval_web",
        "retrieval_synthetic",
        "seg",
        "depth",
        "normals",
        "zeroshot_seg",
        "zeroshot_seg_objects",
    }
    assert results["skipped"] == {}
    recalls = {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    assert set(results["tasks"]["retrieval_web"]) == recalls | {"protocol"}
    protocol = results["tasks"]["zeroshot_web"]["protocol"]
    assert (
        protocol["cls"].startswith("web") and protocol["num_templates"] == 9 and protocol["resolution"] == 56
    )
    assert results["tasks"]["zeroshot_seg"]["protocol"]["resample"] == "PIL bicubic"
    _check_ranges(results)
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# Evaluation: builtin suite") and "## Protocol per result" in markdown
    assert (out / "pca.png").stat().st_size > 500 and (out / "zeroshot_seg.png").stat().st_size > 500
    parts = sorted((out / "cache").glob("*/part-*.pt"))
    assert {p.parent.name.rsplit("-", 1)[1] for p in parts} == {"cls", "patch"}
    stamps = [p.stat().st_mtime_ns for p in parts]
    # rerun of two tasks into the same output: cached features, same numbers, the other results kept
    assert _run(checkpoint, out, *sizes, "--tasks", "knn,seg", "--no-pictures") == 0
    again = json.loads((out / "results.json").read_text())
    assert set(again["tasks"]) == set(results["tasks"])
    assert (
        again["tasks"]["knn"] == results["tasks"]["knn"] and again["tasks"]["seg"] == results["tasks"]["seg"]
    )
    assert [p.stat().st_mtime_ns for p in sorted((out / "cache").glob("*/part-*.pt"))] == stamps
    # another protocol setting replaces that task's result only
    assert _run(checkpoint, out, *sizes, "--tasks", "knn", "--knn-k", "5", "--no-pictures") == 0
    merged = json.loads((out / "results.json").read_text())
    assert (
        merged["tasks"]["knn"]["settings"]["k"] == 5 and merged["tasks"]["depth"] == results["tasks"]["depth"]
    )
    other = tmp_path / "other"
    assert _run(checkpoint, other, *sizes, "--tasks", "knn", "--knn-k", "3", "--no-cache") == 0
    assert not (other / "cache").exists()
    capsys.readouterr()
    assert main(["eval", "--compare", str(out), str(other)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| metric | builtin | other |") and "| knn/top1 |" in table
    assert "| *model* |" in table and "| *protocol: knn* |" in table
    # other data (other sizes) into the same output replaces the file instead of merging
    assert (
        _run(checkpoint, out, "--num-train", "20", "--num-test", "12", "--tasks", "knn", "--no-pictures") == 0
    )
    assert set(json.loads((out / "results.json").read_text())["tasks"]) == {"knn"}


def test_eval_cli_errors(checkpoint, tmp_path, capsys):
    assert (
        main(["eval", "--checkpoint", str(checkpoint), "--config", "tiny", "--tasks", "knn,telepathy"]) == 2
    )
    assert "unknown tasks ['telepathy']" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nowhere")]) == 2
    assert main(["eval", "--compare", str(tmp_path / "nothing")]) == 1
    assert main(["eval", "--checkpoint", str(tmp_path / "missing_vision.npz")]) == 2
    capsys.readouterr()
    assert _run(checkpoint, tmp_path / "o", "--suite", "flickr30k") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "suite flickr30k needs --data" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert _run(checkpoint, tmp_path / "o", "--suite", "voc", "--data", str(tmp_path / "empty")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "suite voc at" in err and "expected: JPEGImages/" in err
    assert main(["eval", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("flickr30k", "coco5k", "imagenet", "ade20k", "voc", "pascal-context", "nyuv2"):
        assert f"\n{name}: " in f"\n{listing}"


def test_vision_only_model_text_tasks(checkpoint, tmp_path, capsys):
    folder = tmp_path / "vision_only"
    folder.mkdir()
    shutil.copy(checkpoint, folder / checkpoint.name)
    out = tmp_path / "out"
    sizes = ["--num-train", "12", "--num-test", "8", "--no-pictures"]
    assert _run(folder / checkpoint.name, out, *sizes) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"zeroshot", "retrieval", "zeroshot-seg"} == set(results["skipped"]) and "seg" in results["tasks"]
    assert results["model"]["text"] is False
    capsys.readouterr()
    code = _run(folder / checkpoint.name, out, *sizes, "--tasks", "seg,zeroshot")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "task zeroshot needs text" in err and "Traceback" not in err


def test_trainer_entry_point(model, tmp_path):
    from open_tips.eval.suite import evaluate_builtin

    model.train()
    results = evaluate_builtin(
        model,
        tmp_path / "eval",
        image_size=56,
        device=torch.device("cpu"),
        seed=3,
        num_train=16,
        num_test=12,
        probe_epochs=2,
        linear_epochs=10,
        progress=False,
    )
    assert model.training  # left as it was found
    assert results["dataset"]["seed"] == 3 and (tmp_path / "eval" / "results.json").is_file()
    assert {"seg", "depth", "zeroshot_seg"} <= set(results["tasks"])
    assert {"features", "seg", "depth"} <= set(results["seconds"])


def _builtin_folders(root, count=6):
    """A plain mask + depth + normals folder dataset and a Karpathy JSON written from built-in samples."""
    from open_tips.data.builtin import SHAPE_CLASSES, BuiltinShapes

    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(["background", *SHAPE_CLASSES]) + "\n")
    karpathy = {"images": []}
    for split, seed in (("train", 1), ("val", 2)):
        data = BuiltinShapes(count, 56, seed=seed, with_normals=True)
        for kind in ("images", "masks", "depth", "normals"):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            s = data[i]
            s["image"].save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(s["segmentation"]).save(root / split / "masks" / f"{i:03d}.png")
            Image.fromarray((s["depth"] * 1000).astype(np.uint16)).save(
                root / split / "depth" / f"{i:03d}.png"
            )
            np.save(root / split / "normals" / f"{i:03d}.npy", s["normals"])
            karpathy["images"].append(
                {
                    "filepath": f"{split}/images",
                    "filename": f"{i:03d}.png",
                    "split": "test" if split == "val" else "train",
                    "sentences": [{"raw": c["text"]} for c in s["synthetic_captions"]],
                }
            )
    (root / "karpathy.json").write_text(json.dumps(karpathy))


def test_eval_mask_depth_and_karpathy_folders(checkpoint, tmp_path):
    root = tmp_path / "shapes"
    _builtin_folders(root)
    out = tmp_path / "masks_eval"
    assert _run(checkpoint, out, "--suite", "masks", "--data", str(root)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "masks" and results["num_test"] == 6
    assert {"seg", "zeroshot_seg", "zeroshot_seg_objects"} == set(results["tasks"])
    _check_ranges(results)
    out = tmp_path / "depth_eval"
    assert _run(checkpoint, out, "--data", str(root), "--depth-crop", "none") == 0  # detected: nyuv2
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "nyuv2" and {"depth", "normals"} == set(results["tasks"])
    assert results["dataset"]["depth_crop"] is None
    _check_ranges(results)
    out = tmp_path / "karpathy_eval"
    assert _run(checkpoint, out, "--data", str(root / "karpathy.json"), "--split", "test") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "karpathy"
    assert set(results["tasks"]) == {"retrieval_web", "retrieval_synthetic", "retrieval_mean"}
    _check_ranges(results)


def test_eval_image_folder(checkpoint, tmp_path):
    root = tmp_path / "imagefolder"
    colours = {"red_thing": (220, 30, 30), "blue_thing": (30, 30, 220)}
    for split in ("train", "val"):
        for name, colour in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), tuple(min(255, c + 8 * i) for c in colour)).save(
                    root / split / name / f"{i}.jpg"
                )
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                *COMMON,
                "--data",
                str(root),
                "--output",
                str(out),
                "--tasks",
                "knn,linear,zeroshot",
                "--knn-k",
                "3",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "imagefolder"
    assert results["tasks"]["knn"]["top1"] == 1.0  # two flat colours: even random features separate them
    assert {"linear", "zeroshot_web", "zeroshot_mean"} <= set(results["tasks"])


@pytest.mark.skipif(not COCO.is_dir(), reason=f"COCO-mini not found at {COCO}")
def test_eval_coco_mini(checkpoint, tmp_path):
    out = tmp_path / "coco"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                *COMMON,
                "--data",
                str(COCO),
                "--max-images",
                "10",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "coco" and results["num_train"] == 10 and results["num_test"] == 10
    assert {
        "retrieval_web",
        "retrieval_synthetic",
        "seg",
        "zeroshot_seg",
        "zeroshot_seg_objects",
        "knn",
        "linear",
        "zeroshot_web",
    } <= set(results["tasks"])
    assert results["skipped"] == {}  # depth and normals are not COCO tasks
    assert _run(checkpoint, out, "--data", str(COCO), "--tasks", "depth") == 2
    assert results["tasks"]["retrieval_web"]["protocol"]["images"] == 10
    assert results["dataset"]["test_split"] == "val2017"
    _check_ranges(results)
    assert (out / "zeroshot_seg.png").is_file()


def _karpathy_from_coco(root, tmp_path):
    """COCO-mini's val captions as a Karpathy ``dataset_coco.json`` (2014 file names, as in the real file),
    the images reachable as ``val2017/`` beside it (the suite maps the 2014 names to the 2017 ones)."""
    captions = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    by_image = {}
    for ann in captions["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    images = []
    for i, image in enumerate(sorted(captions["images"], key=lambda im: im["id"])):
        images.append(
            {
                "filepath": "val2014",
                "filename": f"COCO_val2014_{image['id']:012d}.jpg",
                "imgid": i,
                "split": "test" if i < 40 else "val",
                "cocoid": image["id"],
                "sentences": [{"raw": c, "tokens": c.lower().split()} for c in by_image[image["id"]]],
            }
        )
    folder = tmp_path / "coco_karpathy"
    folder.mkdir()
    (folder / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    (folder / "val2017").symlink_to(root / "val2017", target_is_directory=True)
    return folder, images[:40]


@pytest.mark.skipif(not COCO.is_dir(), reason=f"COCO-mini not found at {COCO}")
def test_coco_mini_as_karpathy_retrieval_end_to_end(checkpoint, model, tmp_path):
    from open_tips.eval.features import extract_features, text_features
    from open_tips.eval.retrieval import positives_from_captions, retrieval_metrics
    from open_tips.inference.zeroshot import image_embedding

    folder, test_images = _karpathy_from_coco(COCO, tmp_path)
    out = tmp_path / "coco5k"
    assert _run(checkpoint, out, "--suite", "coco5k", "--data", str(folder)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "coco5k" and results["num_test"] == 40
    assert results["dataset"]["captions"] == sum(len(im["sentences"]) for im in test_images)
    assert "5000" in results["dataset"]["warning"]
    assert set(results["tasks"]) == {"retrieval_web", "retrieval_synthetic", "retrieval_mean"}
    _check_ranges(results)
    for metrics in results["tasks"].values():
        for direction in ("i2t", "t2i"):
            assert metrics[f"{direction}_R@1"] <= metrics[f"{direction}_R@5"] <= metrics[f"{direction}_R@10"]
    # the same numbers computed here from the pieces: the suite paired every image with its captions
    paths = [COCO / "val2017" / f"{im['cocoid']:012d}.jpg" for im in test_images]
    features = extract_features(model, paths, 56, progress=False)
    captions = [[" ".join(s["raw"].split()) for s in im["sentences"]] for im in test_images]
    texts, _, positives = positives_from_captions(captions)
    text = text_features(model, texts)
    for which in ("web", "synthetic", "mean"):
        expected = retrieval_metrics(
            image_embedding(features.cls_web, features.cls_synthetic, which), text, positives=positives
        )
        got = results["tasks"][f"retrieval_{which}"]
        assert all(abs(got[k] - v) < 1e-6 for k, v in expected.items()), which
