"""Metrics and probes on hand-made inputs whose answers are known."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from open_tips.eval.depth import depth_probe
from open_tips.eval.knn import knn_accuracy
from open_tips.eval.linear import linear_accuracy
from open_tips.eval.metrics import (
    angular_errors,
    confusion_matrix,
    depth_metrics,
    mean_iou,
    recall_at_k,
    topk_accuracy,
)
from open_tips.eval.normals import normals_from_depth
from open_tips.eval.report import compare, write_results
from open_tips.eval.retrieval import retrieval_metrics
from open_tips.eval.segmentation import IGNORE, rasterise_coco, segmentation_probe


def test_miou_known_confusion_and_ignore():
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    # IoU: class0 1/2, class1 2/3, class2 1/1
    assert mean_iou(conf) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert mean_iou(confusion_matrix(target.clamp(max=2), target.clamp(max=2), 3)) == 1.0


def test_recall_perfect_and_random():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(50, 16), dim=-1)
    owner = torch.arange(50).repeat_interleave(2)
    texts = emb[owner] + 0.01 * torch.randn(100, 16)
    perfect = retrieval_metrics(emb, texts, owner)
    assert all(v == 1.0 for v in perfect.values())
    random = retrieval_metrics(emb, torch.randn(100, 16), owner)
    assert random["t2i_R@1"] < 0.15 and random["i2t_R@10"] < 0.7
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.1]])
    positives = torch.tensor([[True, False, False], [True, False, False]])
    assert recall_at_k(sim, positives, (1, 3)) == {"R@1": 0.5, "R@3": 1.0}


def test_topk_and_knn_and_linear():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_accuracy(scores, torch.tensor([2, 0]), (1, 2)) == {"top1": 0.5, "top2": 1.0}
    torch.manual_seed(0)
    centres = torch.randn(4, 32) * 5
    labels = torch.arange(4).repeat(30)
    feats = centres[labels] + torch.randn(120, 32) * 0.1
    assert knn_accuracy(feats[:80], labels[:80], feats[80:], labels[80:], 4, k=5)["top1"] == 1.0
    assert linear_accuracy(feats[:80], labels[:80], feats[80:], labels[80:], 4, epochs=50)["top1"] == 1.0
    shuffled = labels[torch.randperm(120)]
    chance = knn_accuracy(torch.randn(120, 32)[:80], shuffled[:80], torch.randn(40, 32), shuffled[80:], 4)["top1"]
    assert chance < 0.5


def test_depth_and_normal_metrics():
    depth = torch.rand(2, 8, 8) + 1
    exact = depth_metrics(depth, depth)
    assert exact["rmse"] == 0 and exact["delta1"] == 1.0
    assert depth_metrics(depth * 2, depth)["delta1"] == 0.0
    normals = F.normalize(torch.randn(2, 4, 4, 3), dim=-1)
    assert angular_errors(normals, normals)["angular_mean"] == pytest.approx(0, abs=1e-5)
    assert angular_errors(-normals, normals)["angular_mean"] == pytest.approx(180, abs=1e-3)
    flat = normals_from_depth(torch.full((1, 6, 6), 3.0))
    assert torch.allclose(flat, torch.tensor([0.0, 0.0, 1.0]).expand_as(flat))


def _features_from_labels(masks, grid, dim=8, noise=0.0):
    """Patch features that encode the (patch-level) class exactly: one-hot + noise."""
    n = masks.shape[0]
    down = masks[:, ::masks.shape[1] // grid, ::masks.shape[2] // grid][:, :grid, :grid]
    feats = F.one_hot(down.clamp(max=dim - 1), dim).float() + noise * torch.randn(n, grid, grid, dim)
    return {"patch_tokens": feats, "cls_web": feats.mean(dim=(1, 2))}


def test_segmentation_probe_learns_separable_features():
    torch.manual_seed(0)
    blocks = torch.randint(0, 3, (40, 4, 4))
    masks = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 16x16 masks, constant per patch
    feats = _features_from_labels(masks, 4)
    result = segmentation_probe({k: v[:30] for k, v in feats.items()}, masks[:30],
                                {k: v[30:] for k, v in feats.items()}, masks[30:], 3, epochs=60)
    # constant-per-patch labels: only the bilinear upsampling blurs the borders
    assert result["miou"] > 0.8
    random_feats = {"patch_tokens": torch.randn(40, 4, 4, 8), "cls_web": torch.randn(40, 8)}
    poor = segmentation_probe({k: v[:30] for k, v in random_feats.items()}, masks[:30], {k: v[30:] for k, v in random_feats.items()},
                              masks[30:], 3, epochs=20)
    assert poor["miou"] < result["miou"] - 0.3


def test_depth_probe_learns_depth_classes():
    torch.manual_seed(0)
    blocks = torch.randint(0, 4, (40, 4, 4))
    depth = (blocks.float() * 2 + 1).repeat_interleave(4, 1).repeat_interleave(4, 2)
    feats = _features_from_labels(blocks.repeat_interleave(4, 1).repeat_interleave(4, 2), 4)
    result = depth_probe({k: v[:30] for k, v in feats.items()}, depth[:30], {k: v[30:] for k, v in feats.items()}, depth[30:], epochs=60,
                         with_cls=False)
    assert result["rmse"] < 1.2 and result["delta1"] > 0.6


def test_coco_polygon_rasterisation(tmp_path):
    annotation = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 8}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"image_id": 1, "category_id": 9, "iscrowd": 0, "area": 30, "bbox": [0, 0, 6, 6],
             "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
            {"image_id": 1, "category_id": 5, "iscrowd": 0, "area": 4, "bbox": [2, 2, 2, 2],
             "segmentation": [[2, 2, 3, 2, 3, 3, 2, 3]]},
            {"image_id": 1, "category_id": 5, "iscrowd": 1, "area": 4, "bbox": [7, 5, 2, 2],
             "segmentation": {"size": [8, 10], "counts": [5 * 8 + 5 + 8 * 2, 2, 6, 2, 100]}},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotation))
    pairs, names = rasterise_coco(path, tmp_path)
    assert names == ["background", "cat", "dog"]
    mask = pairs[0][1]
    assert mask.shape == (8, 10)
    assert mask[1, 1] == 2 and mask[2, 2] == 1 and mask[7, 9] == 0  # the small cat drawn over the dog
    assert (mask == IGNORE).sum() == 4  # the crowd region from uncompressed RLE


def test_results_and_compare(tmp_path):
    a = {"suite": "builtin", "tasks": {"seg": {"miou": 0.5}, "depth": {"rmse": 1.0}}}
    b = {"suite": "builtin", "tasks": {"seg": {"miou": 0.7}, "depth": {"rmse": 2.0}}}
    write_results(a, tmp_path / "a")
    write_results(b, tmp_path / "b")
    assert "| seg | miou | 0.5000 |" in (tmp_path / "a" / "results.md").read_text()
    table = compare([tmp_path / "a", tmp_path / "b"])
    assert "| seg/miou | 0.5000 | **0.7000** |" in table
    assert "| depth/rmse | **1.0000** | 2.0000 |" in table
    assert math.isfinite(json.loads((tmp_path / "b" / "results.json").read_text())["tasks"]["seg"]["miou"])
    assert np.isclose(0.7, b["tasks"]["seg"]["miou"])
