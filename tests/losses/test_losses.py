"""Each loss against a direct computation on small tensors, edge cases, and where gradients flow."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from open_tips.losses import (
    DINOLoss,
    DualContrastiveLoss,
    IBOTPatchLoss,
    clip_loss,
    koleo_loss,
    siglip_loss,
    sparc_alignment_weights,
    sparc_loss,
)
from open_tips.models.heads import DINOHead


def _np_log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_clip_loss_matches_direct_computation():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    temperature = 0.3
    got = clip_loss(image, text, temperature)
    a = image.numpy() / np.linalg.norm(image.numpy(), axis=1, keepdims=True)
    b = text.numpy() / np.linalg.norm(text.numpy(), axis=1, keepdims=True)
    logits = a @ b.T / temperature
    expected = 0.0
    for i in range(5):
        expected += -_np_log_softmax(logits[i])[i] / 10 - _np_log_softmax(logits[:, i])[i] / 10
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_clip_loss_extremes():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    assert clip_loss(x, x.clone(), 0.01).item() < 1e-3  # perfect alignment, sharp temperature
    same = torch.ones(16, 32)
    assert clip_loss(same, same, 0.07).item() == pytest.approx(math.log(16), rel=1e-5)  # no information


def test_siglip_loss_matches_direct_computation():
    torch.manual_seed(1)
    image, text = torch.randn(4, 6), torch.randn(4, 6)
    got = siglip_loss(image, text, 0.5, -1.0)
    a = F.normalize(image, dim=-1)
    b = F.normalize(text, dim=-1)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            expected -= math.log(1 / (1 + math.exp(-z * (float(a[i] @ b[j]) / 0.5 - 1.0))))
    assert got.item() == pytest.approx(expected / 4, rel=1e-5)


def test_dual_contrastive_is_the_mean_and_temperature_gets_gradient():
    torch.manual_seed(2)
    web_img, syn_img, web_txt, syn_txt = (torch.randn(6, 8, requires_grad=True) for _ in range(4))
    log_t = torch.tensor(math.log(0.1), requires_grad=True)
    out = DualContrastiveLoss()(web_img, syn_img, web_txt, syn_txt, log_t.exp())
    assert out["loss"].item() == pytest.approx(0.5 * (out["loss_web"] + out["loss_synthetic"]).item())
    assert out["loss_web"].item() == pytest.approx(clip_loss(web_img, web_txt, 0.1).item(), rel=1e-5)
    out["loss"].backward()
    assert log_t.grad is not None and log_t.grad.abs() > 0
    assert all(t.grad is not None for t in (web_img, syn_img, web_txt, syn_txt))


def test_dino_loss_direct_centering_and_no_teacher_gradient():
    torch.manual_seed(3)
    loss_fn = DINOLoss(out_dim=7, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.fill_(0.2)
    teacher_logits = torch.randn(4, 7)
    students = [torch.randn(4, 7, requires_grad=True) for _ in range(3)]
    probs = loss_fn.softmax_center_teacher(teacher_logits, 0.04)
    assert not probs.requires_grad
    expected_probs = F.softmax((teacher_logits - 0.2) / 0.04, dim=-1)
    assert torch.allclose(probs, expected_probs, atol=1e-6)
    got = loss_fn(students, [probs])
    expected = sum(
        (-(expected_probs * F.log_softmax(s / 0.1, dim=-1)).sum(-1)).mean() for s in students) / 3
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    got.backward()
    assert all(s.grad is not None for s in students)
    loss_fn.update_center(teacher_logits)
    assert torch.allclose(loss_fn.center, 0.9 * 0.2 + 0.1 * teacher_logits.mean(0, keepdim=True), atol=1e-6)
    assert not loss_fn.center.requires_grad
    # ignore_diagonal drops same-index pairs
    both = loss_fn(students[:2], [probs, probs], ignore_diagonal=True)
    manual = 0.5 * (loss_fn([students[0]], [probs]) + loss_fn([students[1]], [probs]))
    assert both.item() == pytest.approx(manual.item(), rel=1e-5)


def test_ibot_masked_vs_all_tokens():
    torch.manual_seed(4)
    loss_fn = IBOTPatchLoss(out_dim=5)
    student = torch.randn(2, 6, 5, requires_grad=True)
    teacher = loss_fn.softmax_center_teacher(torch.randn(2, 6, 5), 0.05)
    masks = torch.zeros(2, 6, dtype=torch.bool)
    masks[0, [1, 3]] = True  # image 1 has no masked token: excluded from the iBOT mean
    per_token = -(teacher * F.log_softmax(student / 0.1, dim=-1)).sum(-1)
    got = loss_fn(student, teacher, masks)
    assert got.item() == pytest.approx(per_token[0, [1, 3]].mean().item(), rel=1e-5)
    all_tokens = loss_fn(student, teacher, masks, all_tokens=True)
    assert all_tokens.item() == pytest.approx(per_token.mean().item(), rel=1e-5)
    assert abs(all_tokens.item() - got.item()) > 1e-4
    got.backward()
    assert student.grad[1].abs().sum() == 0 and student.grad[0, 1].abs().sum() > 0  # only masked tokens
    none = loss_fn(student, teacher, torch.zeros(2, 6, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


def _sparc_direct(patches, tokens, padding, temperature):
    batch_losses = []
    for b in range(patches.shape[0]):
        valid = [i for i in range(tokens.shape[1]) if not padding[b, i]]
        p, t = patches[b].numpy(), tokens[b].numpy()
        sim = t @ p.T
        weights = np.zeros_like(sim)
        for i in range(sim.shape[0]):
            row = (sim[i] - sim[i].min()) / (sim[i].max() - sim[i].min() + 1e-8)
            row[row < 1.0 / p.shape[0]] = 0
            weights[i] = row / (row.sum() + 1e-8)
        grouped = weights @ p
        grouped /= np.linalg.norm(grouped, axis=1, keepdims=True)
        tn = t / np.linalg.norm(t, axis=1, keepdims=True)
        logits = tn[valid] @ grouped[valid].T / temperature
        t2v = -np.diag(_np_log_softmax(logits, axis=1))
        v2t = -np.diag(_np_log_softmax(logits.T, axis=1))
        batch_losses.append(np.mean(0.5 * (t2v + v2t)))
    return float(np.mean(batch_losses))


def test_sparc_matches_direct_computation_and_ignores_padding():
    torch.manual_seed(5)
    patches = torch.randn(3, 9, 8, requires_grad=True)
    tokens = torch.randn(3, 6, 8, requires_grad=True)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, 4:] = True
    padding[2, 1:] = True  # a single valid token
    got = sparc_loss(patches, tokens, padding, 0.2)
    assert got.item() == pytest.approx(_sparc_direct(patches.detach(), tokens.detach(), padding, 0.2), rel=1e-4)
    # values under padding change nothing
    other = tokens.detach().clone()
    other[padding] = torch.randn(int(padding.sum()), 8) * 10
    assert sparc_loss(patches, other, padding, 0.2).item() == pytest.approx(got.item(), rel=1e-6)
    got.backward()
    assert patches.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0
    assert tokens.grad[padding].abs().sum() == 0


def test_sparc_weights_sparse_and_normalised():
    torch.manual_seed(6)
    weights = sparc_alignment_weights(torch.randn(2, 16, 4), torch.randn(2, 5, 4))
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5), atol=1e-5)
    assert (weights == 0).any()  # below 1/P zeroed
    assert (weights >= 0).all()


def test_koleo_direct_and_spread_preference():
    torch.manual_seed(7)
    x = torch.randn(6, 4)
    xn = F.normalize(x, dim=-1)
    d = torch.cdist(xn, xn) + torch.eye(6) * 10
    expected = -torch.log(d.min(dim=1).values + 1e-8).mean()
    assert koleo_loss(x).item() == pytest.approx(expected.item(), rel=1e-4)
    clustered = torch.randn(1, 4) + 0.01 * torch.randn(6, 4)
    assert koleo_loss(clustered) > koleo_loss(x)


def test_dino_head_weight_norm_and_shapes():
    torch.manual_seed(8)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, nlayers=3)
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 32)
    weight = head.last_layer.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(32), atol=1e-5)  # unit-norm prototypes
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    out.sum().backward()
    assert head.last_layer.parametrizations.weight.original1.grad is not None
