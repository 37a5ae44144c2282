"""SPARC: alignment weights and the per-pair token-level InfoNCE against a float64 loop, padding, invariances,
and where gradients flow."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from open_tips.losses import sparc_alignment_weights, sparc_loss
from tests.losses import _reference as ref


def _inputs(seed, batch=3, patches=9, length=6, dim=8):
    torch.manual_seed(seed)
    return (
        torch.randn(batch, patches, dim, requires_grad=True),
        torch.randn(batch, length, dim, requires_grad=True),
        torch.zeros(batch, length, dtype=torch.bool),
    )


@pytest.mark.parametrize("temperature", [1.0, 0.2, 0.05])
def test_matches_loop_with_padding(temperature):
    patches, tokens, padding = _inputs(0)
    padding[0, 4:] = True
    padding[2, 1:] = True  # a single valid token
    got = sparc_loss(patches, tokens, padding, temperature)
    expected = ref.sparc(patches.detach().numpy(), tokens.detach().numpy(), padding.numpy(), temperature)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_matches_loop_with_a_custom_threshold():
    patches, tokens, padding = _inputs(1)
    padding[1, 3:] = True
    for threshold in (0.0, 0.5):
        got = sparc_loss(patches, tokens, padding, 0.3, threshold=threshold)
        expected = ref.sparc(
            patches.detach().numpy(), tokens.detach().numpy(), padding.numpy(), 0.3, threshold
        )
        assert got.item() == pytest.approx(expected, abs=1e-5)


def test_padded_values_change_nothing_not_even_gradients():
    patches, tokens, padding = _inputs(2)
    padding[0, 2:] = True
    padding[1, 5:] = True
    loss = sparc_loss(patches, tokens, padding, 0.1)
    loss.backward()
    grad_patches = patches.grad.clone()
    other = tokens.detach().clone()
    other[padding] = torch.randn(int(padding.sum()), 8) * 100
    other[0, 3] = float("nan")  # even nan under padding
    other.requires_grad_(True)
    patches.grad = None
    again = sparc_loss(patches, other, padding, 0.1)
    assert again.item() == pytest.approx(loss.item(), abs=1e-6)
    again.backward()
    assert torch.isfinite(other.grad).all() and other.grad[padding].abs().sum() == 0
    assert torch.allclose(patches.grad, grad_patches, atol=1e-6)
    assert torch.allclose(other.grad[~padding], tokens.grad[~padding], atol=1e-6)


def test_single_valid_token_gives_zero_and_fully_padded_samples_are_left_out():
    patches, tokens, padding = _inputs(3)
    padding[:, 1:] = True  # one valid token each: its own pair is the only candidate
    assert sparc_loss(patches, tokens, padding, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1] = True  # no valid token at all
    both = sparc_loss(patches, tokens, padding, 0.1)
    keep = torch.tensor([0, 2])
    assert torch.isfinite(both)
    assert both.item() == pytest.approx(
        sparc_loss(patches[keep], tokens[keep], padding[keep], 0.1).item(), abs=1e-6
    )
    all_padded = sparc_loss(patches, tokens, torch.ones(3, 6, dtype=torch.bool), 0.1)
    assert all_padded.item() == 0.0 and all_padded.requires_grad


def test_invariant_to_patch_order_and_to_moving_a_token_with_its_padding_flag():
    patches, tokens, padding = _inputs(4)
    padding[0, 4:] = True
    loss = sparc_loss(patches, tokens, padding, 0.2).item()
    perm_p = torch.randperm(9)
    assert sparc_loss(patches[:, perm_p], tokens, padding, 0.2).item() == pytest.approx(loss, abs=1e-5)
    perm_t = torch.randperm(6)
    assert sparc_loss(patches, tokens[:, perm_t], padding[:, perm_t], 0.2).item() == pytest.approx(
        loss, abs=1e-5
    )


def test_aligned_tokens_score_better_than_random_ones_and_bounded_by_log_length():
    torch.manual_seed(5)
    patches = F.one_hot(torch.arange(6), 16).float()[None].repeat(2, 1, 1)  # 6 orthogonal patches
    aligned = patches.clone()  # token i is patch i
    padding = torch.zeros(2, 6, dtype=torch.bool)
    good = sparc_loss(patches, aligned, padding, 0.05).item()
    assert good < 1e-3
    random = sparc_loss(patches, torch.randn(2, 6, 16), padding, 1.0).item()
    assert random > good and random <= math.log(6) + 0.7  # unit-cosine logits at T=1 stay near log L


def test_gradients_reach_patches_tokens_temperature_and_flow_through_the_weights():
    patches, tokens, padding = _inputs(6)
    padding[2, 3:] = True
    log_t = torch.tensor([math.log(0.1)], requires_grad=True)
    sparc_loss(patches, tokens, padding, log_t.exp()).backward()
    assert patches.grad.abs().sum() > 0 and tokens.grad[~padding].abs().sum() > 0
    assert log_t.grad is not None and log_t.grad.abs() > 0

    # The same loss with the weights detached gives a different token gradient: ours is not detached.
    p, t = patches.detach().clone().requires_grad_(True), tokens.detach().clone().requires_grad_(True)
    weights = sparc_alignment_weights(p, t).detach()
    grouped = F.normalize(weights @ p, dim=-1)
    unit_t = F.normalize(t, dim=-1)
    valid = ~padding
    logits = (unit_t @ grouped.transpose(1, 2) / 0.1).masked_fill(~valid[:, None, :], -1e30)
    logits_v = (unit_t @ grouped.transpose(1, 2) / 0.1).transpose(1, 2).masked_fill(~valid[:, None, :], -1e30)
    per = -0.5 * (
        logits.log_softmax(-1).diagonal(dim1=1, dim2=2) + logits_v.log_softmax(-1).diagonal(dim1=1, dim2=2)
    )
    detached = (torch.where(valid, per, 0).sum(-1) / valid.sum(-1)).mean()
    assert detached.item() == pytest.approx(sparc_loss(patches, tokens, padding, 0.1).item(), abs=1e-5)
    detached.backward()
    assert not torch.allclose(t.grad, tokens.grad, atol=1e-4)


def test_alignment_weights_are_sparse_non_negative_and_normalised():
    torch.manual_seed(7)
    patches, tokens = torch.randn(2, 16, 4), torch.randn(2, 5, 4)
    weights = sparc_alignment_weights(patches, tokens)
    assert weights.shape == (2, 5, 16)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5), atol=1e-6)
    assert (weights >= 0).all()
    normalised = (tokens @ patches.transpose(1, 2)) - (tokens @ patches.transpose(1, 2)).amin(
        -1, keepdim=True
    )
    normalised = normalised / normalised.amax(-1, keepdim=True)
    assert torch.equal(weights == 0, normalised < 1 / 16)  # exactly the entries below 1/P are dropped
    for b in range(2):
        for i in range(5):
            sim = tokens[b, i].double() @ patches[b].double().T
            row = (sim - sim.min()) / (sim.max() - sim.min() + 1e-8)
            row = torch.where(row < 1 / 16, 0, row)
            assert torch.allclose(weights[b, i].double(), row / row.sum(), atol=1e-6)
    # a token equally similar to every patch has an all-zero row, not nan
    flat = sparc_alignment_weights(patches, torch.zeros(2, 1, 4))
    assert torch.equal(flat, torch.zeros(2, 1, 16))


def test_float32_under_bf16_autocast_and_shape_checks():
    patches, tokens, padding = _inputs(8)
    reference = sparc_loss(patches, tokens, padding, 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sparc_loss(patches, tokens, padding, 0.05)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(reference.item(), abs=1e-5)
    with pytest.raises(ValueError):
        sparc_loss(patches, tokens, padding[:, :3], 0.1)
    with pytest.raises(ValueError):
        sparc_loss(patches[0], tokens, padding, 0.1)


def test_reference_is_independent_of_the_implementation():
    # sanity check of the loop itself on a case worked by hand: one token, one valid pair -> 0
    p = np.eye(3)[None]
    t = np.array([[[1.0, 0.0, 0.0]]])
    assert ref.sparc(p, t, np.zeros((1, 1), dtype=bool), 0.1) == pytest.approx(0.0)
