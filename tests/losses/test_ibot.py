"""iBOT / iBOT++ patch loss: masked-token averaging, all-token averaging, edge cases and gradients."""

import numpy as np
import pytest
import torch

from open_tips.losses import IBOTPatchLoss
from tests.losses import _reference as ref


def _setup(seed, batch=3, tokens=6, dim=5):
    torch.manual_seed(seed)
    loss_fn = IBOTPatchLoss(out_dim=dim, student_temp=0.1)
    student = torch.randn(batch, tokens, dim, requires_grad=True)
    teacher = loss_fn.softmax_center_teacher(torch.randn(batch, tokens, dim), 0.05)
    per_token = np.array(
        [
            [
                ref.cross_entropy(
                    teacher[b, n].numpy().astype(np.float64), student[b, n].detach().numpy(), 0.1
                )
                for n in range(tokens)
            ]
            for b in range(batch)
        ]
    )
    return loss_fn, student, teacher, per_token


def test_masked_mean_per_image_then_over_all_images():
    loss_fn, student, teacher, per_token = _setup(0)
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, [1, 3]] = True
    masks[2, [0, 2, 4, 5]] = True  # image 1 has no masked token: counts as zero (iBOT, DINOv2)
    got = loss_fn(student, teacher, masks)
    expected = np.sum([per_token[0, [1, 3]].mean(), per_token[2, [0, 2, 4, 5]].mean()]) / 3
    # the other rule (over masked images only) is 3/2 of this here
    assert abs(got.item() * 1.5 - expected * 1.5 / 1.0) < 1e-4 and abs(got.item() - expected * 1.5) > 1e-3
    assert got.item() == pytest.approx(expected, abs=1e-5)
    # per-image weighting: not the mean over all masked tokens pooled together
    assert abs(got.item() - per_token[masks.numpy()].mean()) > 1e-4


def test_ibot_plus_plus_averages_all_tokens_and_differs_from_ibot():
    loss_fn, student, teacher, per_token = _setup(1)
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[:, :2] = True
    all_tokens = loss_fn(student, teacher, masks, all_tokens=True)
    assert all_tokens.item() == pytest.approx(per_token.mean(), abs=1e-5)
    assert loss_fn(student, teacher, None).item() == pytest.approx(per_token.mean(), abs=1e-5)
    assert abs(all_tokens.item() - loss_fn(student, teacher, masks).item()) > 1e-4


def test_gradient_reaches_only_masked_tokens_in_ibot_and_all_in_ibot_plus_plus():
    loss_fn, student, teacher, _ = _setup(2)
    teacher = teacher.clone().requires_grad_(True)
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, [1, 3]] = True
    loss_fn(student, teacher, masks).backward()
    grad_norm = student.grad.abs().sum(-1)
    assert (grad_norm[masks] > 0).all() and (grad_norm[~masks] == 0).all()
    assert teacher.grad is None  # teacher targets are constants
    student.grad = None
    loss_fn(student, teacher, masks, all_tokens=True).backward()
    assert (student.grad.abs().sum(-1) > 0).all()


def test_no_masked_token_gives_zero_with_a_graph():
    loss_fn, student, teacher, _ = _setup(3)
    none = loss_fn(student, teacher, torch.zeros(3, 6, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() == 0


def test_mask_shape_is_checked():
    loss_fn, student, teacher, _ = _setup(4)
    with pytest.raises(ValueError):
        loss_fn(student, teacher, torch.ones(3, 5, dtype=torch.bool))


def test_center_update_over_patch_tokens_and_any_input_shape():
    torch.manual_seed(5)
    loss_fn = IBOTPatchLoss(out_dim=4, center_momentum=0.8)
    assert loss_fn.center.shape == (1, 1, 4)
    logits = torch.randn(2, 5, 4)
    loss_fn.update_center(logits)
    assert np.allclose(
        loss_fn.center.reshape(-1).numpy(), 0.2 * logits.reshape(-1, 4).mean(0).numpy(), atol=1e-6
    )
    assert not loss_fn.center.requires_grad
    flat = logits.reshape(10, 4)  # e.g. only the masked tokens, flattened
    probs = loss_fn.softmax_center_teacher(flat, 0.05)
    assert probs.shape == (10, 4)
    assert torch.allclose(probs, loss_fn.softmax_center_teacher(logits, 0.05).reshape(10, 4), atol=1e-7)
    assert torch.allclose(probs, torch.softmax((flat - loss_fn.center.reshape(-1)) / 0.05, -1), atol=1e-6)
