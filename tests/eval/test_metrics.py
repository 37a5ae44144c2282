"""Metric functions on hand-made inputs whose answers are known."""

import math

import pytest
import torch
import torch.nn.functional as F

from open_tips.eval.metrics import (
    IGNORE,
    accuracy,
    angular_error_degrees,
    angular_errors,
    confusion_matrix,
    depth_metrics,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
    recall_at_k,
    topk_accuracy,
)


def test_confusion_matrix_and_miou_known_values():
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE, IGNORE])
    pred = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]  # the two ignored pixels are not counted
    # IoU: class 0 = 1 / (1 + 1 + 0) = 1/2, class 1 = 2 / (2 + 1) = 2/3, class 2 = 1
    assert per_class_iou(conf).tolist() == pytest.approx([0.5, 2 / 3, 1.0])
    assert mean_iou(conf) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert pixel_accuracy(conf) == pytest.approx(4 / 5)


def test_miou_perfect_absent_classes_and_ignore_only():
    labels = torch.tensor([[0, 1], [1, 3]])
    assert mean_iou(confusion_matrix(labels, labels, 5)) == 1.0  # classes 2 and 4 absent: left out, not 0
    # a class predicted but absent from the truth counts with IoU 0
    assert mean_iou(confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 0]), 3)) == pytest.approx(0.25)
    assert math.isnan(mean_iou(confusion_matrix(torch.tensor([1]), torch.tensor([IGNORE]), 3)))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([7]), torch.tensor([0]), 3)


def test_topk_accuracy_known_values():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(scores, labels, (1, 2, 5)) == pytest.approx(
        {"top1": 1 / 3, "top2": 2 / 3, "top5": 1.0}
    )
    assert accuracy(scores.argmax(1), labels) == pytest.approx(1 / 3)


def test_recall_at_k_known_values_and_pessimistic_ties():
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.1]])
    positives = torch.tensor([[True, False, False], [True, False, False]])
    assert recall_at_k(sim, positives, (1, 2, 3)) == {"R@1": 0.5, "R@2": 0.5, "R@3": 1.0}
    # several positives: the best-ranked one counts
    assert recall_at_k(sim, torch.tensor([[True, False, True], [False, False, True]]), (1, 2)) == {
        "R@1": 0.0,
        "R@2": 0.5,
    }
    # constant similarities (collapsed features) must not score perfectly
    flat = torch.zeros(4, 4)
    assert recall_at_k(flat, torch.eye(4, dtype=torch.bool), (1, 4)) == {"R@1": 0.0, "R@4": 1.0}


def test_depth_metrics_exact_and_known():
    depth = torch.rand(2, 8, 8) + 1
    exact = depth_metrics(depth, depth)
    assert exact == {"rmse": 0.0, "delta1": 1.0, "abs_rel": 0.0}
    doubled = depth_metrics(depth * 2, depth)
    assert doubled["delta1"] == 0.0 and doubled["abs_rel"] == pytest.approx(1.0)
    assert depth_metrics(depth + 0.5, depth)["rmse"] == pytest.approx(0.5)
    # invalid (zero) target pixels are left out, whatever is predicted there
    target = depth.clone()
    target[:, :4] = 0
    pred = depth.clone()
    pred[:, :4] = 100
    assert depth_metrics(pred, target)["rmse"] == 0.0


def test_angular_errors_identical_opposite_and_known_angle():
    normals = F.normalize(torch.randn(2, 4, 4, 3), dim=-1)
    same = angular_errors(normals, normals)
    assert same["angular_mean"] == pytest.approx(0, abs=1e-9) and same["angular_rmse"] == pytest.approx(
        0, abs=1e-9
    )
    assert same["within_11.25"] == 1.0
    assert angular_errors(normals, normals * 3)["angular_mean"] == pytest.approx(
        0, abs=1e-4
    )  # length is ignored
    assert angular_errors(-normals, normals)["angular_mean"] == pytest.approx(180, abs=1e-6)
    tilted = torch.tensor([[0.0, math.sin(math.radians(20)), math.cos(math.radians(20))]])
    assert float(angular_error_degrees(tilted, torch.tensor([[0.0, 0.0, 1.0]]))) == pytest.approx(20)
    errors = angular_errors(tilted.expand(10, 3), torch.tensor([[0.0, 0.0, 1.0]]).expand(10, 3))
    assert errors["within_11.25"] == 0.0 and errors["within_22.5"] == 1.0
    # zero-length targets are invalid
    target = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert angular_errors(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), target)[
        "angular_mean"
    ] == pytest.approx(0)
