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
            if name == "settings":
                continue
            assert isinstance(value, float) and np.isfinite(value), (task, name, value)
            if name in LOWER:
                assert value >= 0, (task, name, value)
            else:
                assert 0.0 <= value <= 1.0, (task, name, value)


def test_eval_builtin_suite_cache_and_compare(checkpoint, tmp_path, capsys):
    out = tmp_path / "builtin"
    args = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        *COMMON,
        "--num-train",
        "24",
        "--num-test",
        "16",
        "--output",
        str(out),
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert (
        results["suite"] == "builtin" and results["image_size"] == 56 and results["model"] == str(checkpoint)
    )
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
    assert set(results["tasks"]["retrieval_web"]) == {
        f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)
    }
    assert {"top1", "top5"} <= set(results["tasks"]["knn"]) and {"miou", "pixel_accuracy"} <= set(
        results["tasks"]["seg"]
    )
    assert {"rmse", "delta1", "abs_rel"} <= set(results["tasks"]["depth"])
    assert {"angular_mean", "angular_rmse", "within_11.25"} <= set(results["tasks"]["normals"])
    _check_ranges(results)
    assert (out / "results.md").read_text().startswith("# Evaluation: builtin suite")
    assert (out / "pca.png").stat().st_size > 500 and (out / "zeroshot_seg.png").stat().st_size > 500
    cached = sorted((out / "cache").glob("*.pt"))
    assert len(cached) == 3  # train, test, test value tokens
    stamps = [p.stat().st_mtime_ns for p in cached]
    # a second run reads the cached features and gives the same numbers
    assert main([*args, "--tasks", "knn,seg", "--no-pictures"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert set(again["tasks"]) == {"knn", "seg"} and again["tasks"]["knn"] == results["tasks"]["knn"]
    assert again["tasks"]["seg"] == results["tasks"]["seg"]
    assert [p.stat().st_mtime_ns for p in sorted((out / "cache").glob("*.pt"))] == stamps
    other = tmp_path / "other"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                *COMMON,
                "--num-train",
                "24",
                "--num-test",
                "16",
                "--output",
                str(other),
                "--tasks",
                "knn",
                "--knn-k",
                "5",
                "--no-cache",
            ]
        )
        == 0
    )
    assert not (other / "cache").exists()
    assert json.loads((other / "results.json").read_text())["tasks"]["knn"]["settings"]["k"] == 5
    capsys.readouterr()
    assert main(["eval", "--compare", str(out), str(other)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| metric | builtin | other |") and "| knn/top1 |" in table


def test_eval_cli_errors(checkpoint, tmp_path, capsys):
    assert (
        main(["eval", "--checkpoint", str(checkpoint), "--config", "tiny", "--tasks", "knn,telepathy"]) == 2
    )
    assert "unknown tasks ['telepathy']" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "nowhere")]) == 2
    assert main(["eval", "--compare", str(tmp_path / "nothing")]) == 1
    assert main(["eval", "--checkpoint", str(tmp_path / "missing_vision.npz")]) == 2


def test_vision_only_model_skips_text_tasks(checkpoint, tmp_path):
    folder = tmp_path / "vision_only"
    folder.mkdir()
    shutil.copy(checkpoint, folder / checkpoint.name)
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(folder / checkpoint.name),
                *COMMON,
                "--num-train",
                "16",
                "--num-test",
                "12",
                "--output",
                str(out),
                "--tasks",
                "knn,zeroshot,retrieval,zeroshot-seg",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"knn"}
    assert set(results["skipped"]) == {"zeroshot", "retrieval", "zeroshot-seg"}
    assert (out / "pca.png").is_file() and not (out / "zeroshot_seg.png").exists()


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
    assert results["seed"] == 3 and (tmp_path / "eval" / "results.json").is_file()
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


def test_eval_dataset_folders(checkpoint, tmp_path):
    root = tmp_path / "shapes"
    _builtin_folders(root)
    out = tmp_path / "folder_eval"
    assert (
        main(["eval", "--checkpoint", str(checkpoint), *COMMON, "--data", str(root), "--output", str(out)])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "segmentation+depth" and results["segmentation_layout"] == "masks"
    assert {"seg", "depth", "normals", "zeroshot_seg", "zeroshot_seg_objects"} <= set(results["tasks"])
    assert set(results["skipped"]) == {"knn", "linear", "zeroshot", "retrieval"}
    _check_ranges(results)
    out = tmp_path / "karpathy_eval"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(checkpoint),
                *COMMON,
                "--data",
                str(root / "karpathy.json"),
                "--output",
                str(out),
                "--tasks",
                "retrieval",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) == {"retrieval_web", "retrieval_synthetic"}
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
    assert set(results["skipped"]) == {"depth", "normals"}
    assert results["num_retrieval_images"] == 10
    _check_ranges(results)
    assert (out / "zeroshot_seg.png").is_file()
