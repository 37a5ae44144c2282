"""DINO loss: teacher centering/sharpening, pairs of crops, centre EMA, Sinkhorn-Knopp, where gradients go."""

import numpy as np
import pytest
import torch

from open_tips.losses import DINOLoss, sinkhorn_knopp
from tests.losses import _reference as ref


def test_teacher_probs_are_centred_sharpened_and_without_gradient():
    torch.manual_seed(0)
    loss_fn = DINOLoss(out_dim=7)
    loss_fn.center.copy_(torch.randn(1, 7))
    logits = torch.randn(4, 7, requires_grad=True)
    probs = loss_fn.softmax_center_teacher(logits, 0.04)
    assert not probs.requires_grad and probs.dtype == torch.float32
    center = loss_fn.center[0].numpy()
    for b in range(4):
        expected = ref.softmax((logits[b].detach().numpy().astype(np.float64) - center) / 0.04)
        assert np.allclose(probs[b].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("n_teacher,n_student", [(1, 1), (1, 6), (2, 3)])
def test_loss_matches_loop_for_any_number_of_crops(n_teacher, n_student):
    torch.manual_seed(n_teacher * 10 + n_student)
    loss_fn = DINOLoss(out_dim=5, student_temp=0.1)
    teacher = [loss_fn.softmax_center_teacher(torch.randn(3, 5), 0.05) for _ in range(n_teacher)]
    students = [torch.randn(3, 5) for _ in range(n_student)]
    got = loss_fn(students, teacher)
    terms = [
        np.mean([ref.cross_entropy(t[b].numpy().astype(np.float64), s[b].numpy(), 0.1) for b in range(3)])
        for s in students
        for t in teacher
    ]
    assert got.item() == pytest.approx(np.mean(terms), abs=1e-5)


def test_ignore_diagonal_skips_same_index_pairs():
    torch.manual_seed(1)
    loss_fn = DINOLoss(out_dim=6)
    teacher = [loss_fn.softmax_center_teacher(torch.randn(4, 6), 0.04) for _ in range(2)]
    students = [torch.randn(4, 6) for _ in range(3)]
    got = loss_fn(students, teacher, ignore_diagonal=True)
    kept = [(0, 1), (1, 0), (2, 0), (2, 1)]  # (student, teacher); (0, 0) and (1, 1) skipped
    expected = np.mean([loss_fn([students[s]], [teacher[t]]).item() for s, t in kept])
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert abs(got.item() - loss_fn(students, teacher).item()) > 1e-4
    with pytest.raises(ValueError):
        loss_fn(students[:1], teacher[:1], ignore_diagonal=True)


def test_student_gets_gradient_teacher_and_center_do_not():
    torch.manual_seed(2)
    loss_fn = DINOLoss(out_dim=8)
    teacher_logits = torch.randn(4, 8, requires_grad=True)
    probs = loss_fn.softmax_center_teacher(teacher_logits, 0.04)
    leaky = probs.clone().requires_grad_(True)  # even a teacher tensor that requires grad gets none
    students = [torch.randn(4, 8, requires_grad=True) for _ in range(2)]
    loss_fn(students, [leaky]).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)
    assert leaky.grad is None and teacher_logits.grad is None
    assert not loss_fn.center.requires_grad and loss_fn.center.grad is None


def test_loss_is_lowest_when_the_student_matches_the_teacher():
    torch.manual_seed(3)
    loss_fn = DINOLoss(out_dim=10, student_temp=0.1)
    probs = loss_fn.softmax_center_teacher(torch.randn(3, 10), 0.5)  # no underflow to log(0)
    matched = torch.log(probs) * 0.1  # student softmax(logits / 0.1) == teacher probs
    entropy = -(probs * torch.log(probs)).sum(-1).mean()
    assert loss_fn([matched], [probs]).item() == pytest.approx(entropy.item(), abs=1e-5)
    assert loss_fn([matched + 0.3 * torch.randn(3, 10)], [probs]).item() > entropy.item()


def test_center_update_is_an_ema_of_all_rows_and_forward_leaves_it_alone():
    torch.manual_seed(4)
    loss_fn = DINOLoss(out_dim=5, center_momentum=0.9)
    assert loss_fn.center.shape == (1, 5)
    loss_fn.center.fill_(0.2)
    logits = torch.randn(2, 3, 5, requires_grad=True)  # any leading shape: all rows count
    loss_fn([torch.randn(6, 5)], [loss_fn.softmax_center_teacher(logits.reshape(6, 5), 0.04)])
    assert torch.all(loss_fn.center == 0.2)
    loss_fn.update_center(logits)
    expected = 0.9 * 0.2 + 0.1 * logits.detach().reshape(6, 5).double().mean(0)
    assert np.allclose(loss_fn.center[0].numpy(), expected.numpy(), atol=1e-6)
    assert not loss_fn.center.requires_grad
    before = loss_fn.center.clone()
    loss_fn.update_center(torch.empty(0, 5))  # no rows: nothing to average, centre kept
    assert torch.equal(loss_fn.center, before)
    assert "center" in loss_fn.state_dict()


def test_sinkhorn_matches_dinov2_algorithm_and_balances_prototypes():
    torch.manual_seed(5)
    logits = torch.randn(12, 4).tanh()  # head outputs are cosines in [-1, 1]
    got = sinkhorn_knopp(logits, 0.05, n_iterations=3)
    assert np.allclose(got.numpy(), ref.sinkhorn(logits.numpy(), 0.05, 3), atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(12), atol=1e-5)
    balanced = sinkhorn_knopp(logits, 0.05, n_iterations=200)
    assert torch.allclose(balanced.sum(0), torch.full((4,), 3.0), atol=1e-3)  # N / K per prototype
    loss_fn = DINOLoss(out_dim=4)
    assert torch.equal(loss_fn.sinkhorn_knopp_teacher(logits, 0.05), got)


def test_sinkhorn_is_stable_at_sharp_temperatures():
    # cosine logits at T = 0.01: exp(1 / 0.01) overflows float32 unless the max is taken out first
    torch.manual_seed(6)
    logits = torch.rand(6, 5) * 2 - 1
    logits[torch.arange(6), torch.randint(0, 5, (6,))] = 1.0
    out = sinkhorn_knopp(logits, 0.01)
    assert torch.isfinite(out).all() and torch.allclose(out.sum(-1), torch.ones(6), atol=1e-5)
    assert np.allclose(out.numpy(), ref.sinkhorn(logits.numpy(), 0.01, 3), atol=1e-5)
