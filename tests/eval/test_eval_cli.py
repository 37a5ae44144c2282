"""`open-tips eval` end to end on a random tiny checkpoint: built-in suite, COCO-mini, --compare."""

import json
from pathlib import Path

import pytest

from open_tips.cli import main
from tests.helpers import make_tiny_checkpoint

COCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-mini"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _in_unit_range(results):
    for task, metrics in results["tasks"].items():
        for name, value in metrics.items():
            if name in ("rmse", "abs_rel", "angular_rmse", "angular_mean", "weight_decay"):
                assert value >= 0
            else:
                assert 0.0 <= value <= 1.0, (task, name, value)


def test_eval_builtin_suite_and_compare(checkpoint, tmp_path, capsys):
    out = tmp_path / "builtin"
    assert main(["eval", "--checkpoint", str(checkpoint), "--config", "tiny", "--device", "cpu",
                 "--num-train", "40", "--num-test", "30", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["tasks"]) >= {"knn", "linear", "zeroshot_web", "zeroshot_synthetic", "zeroshot_mean",
                                     "retrieval_web", "retrieval_synthetic", "seg", "depth", "normals",
                                     "zeroshot_seg"}
    assert set(results["tasks"]["retrieval_web"]) == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    _in_unit_range(results)
    assert (out / "results.md").read_text().startswith("# Evaluation: builtin suite")
    assert (out / "pictures.png").stat().st_size > 500
    assert list((out / "cache").glob("*.pt")), "features are cached"
    # a second run reuses the cache and gives the same numbers
    assert main(["eval", "--checkpoint", str(checkpoint), "--config", "tiny", "--device", "cpu",
                 "--num-train", "40", "--num-test", "30", "--output", str(out), "--tasks", "knn,seg"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["tasks"]["knn"] == results["tasks"]["knn"]
    capsys.readouterr()
    write_other = tmp_path / "other"
    assert main(["eval", "--checkpoint", str(checkpoint), "--config", "tiny", "--device", "cpu",
                 "--num-train", "40", "--num-test", "30", "--output", str(write_other), "--tasks", "knn"]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(out), str(write_other)]) == 0
    table = capsys.readouterr().out
    assert "| knn/top1 |" in table and "builtin" in table and "other" in table


def test_eval_coco_mini(checkpoint, tmp_path):
    out = tmp_path / "coco"
    assert main(["eval", "--checkpoint", str(checkpoint), "--config", "tiny", "--device", "cpu",
                 "--data", str(COCO), "--image-size", "56", "--max-images", "24", "--output", str(out),
                 "--tasks", "retrieval,seg,zeroshot-seg,knn"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"retrieval_web", "retrieval_synthetic", "seg", "zeroshot_seg", "knn"} <= set(results["tasks"])
    _in_unit_range(results)


def test_unknown_task_rejected(checkpoint):
    with pytest.raises(SystemExit, match="unknown tasks"):
        main(["eval", "--checkpoint", str(checkpoint), "--config", "tiny", "--tasks", "knn,telepathy"])
