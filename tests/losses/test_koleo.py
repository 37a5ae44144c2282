"""KoLeo against a float64 loop, its direction of preference, invariances and edge cases."""

import pytest
import torch

from open_tips.losses import koleo_loss
from tests.losses import _reference as ref


def test_matches_loop():
    torch.manual_seed(0)
    for shape in ((6, 4), (10, 16)):
        x = torch.randn(*shape)
        assert koleo_loss(x).item() == pytest.approx(ref.koleo(x.numpy()), abs=1e-5)


def test_clustered_features_cost_more_than_spread_ones_and_scale_does_not_matter():
    torch.manual_seed(1)
    x = torch.randn(8, 4)
    clustered = torch.randn(1, 4) + 0.01 * torch.randn(8, 4)
    assert koleo_loss(clustered) > koleo_loss(x) + 1.0
    assert koleo_loss(3.0 * x).item() == pytest.approx(koleo_loss(x).item(), abs=1e-5)


def test_gradient_step_spreads_nearest_neighbours():
    torch.manual_seed(2)
    x = torch.randn(8, 3, requires_grad=True)
    loss = koleo_loss(x)
    loss.backward()
    assert x.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = x - 0.05 * x.grad
    assert koleo_loss(stepped).item() < loss.item()


def test_edge_cases():
    single = torch.randn(1, 4, requires_grad=True)
    out = koleo_loss(single)
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError):
        koleo_loss(torch.randn(2, 3, 4))
    duplicates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert torch.isfinite(koleo_loss(duplicates))  # zero distance: eps keeps the log finite
