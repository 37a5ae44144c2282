"""DINOHead: structure, initialisation, and the weight-normalised prototype layer with its gain fixed at 1."""

import copy

import pytest
import torch
from torch import nn

from open_tips.models.heads import DINOHead


def _linears(head):
    return [m for m in head.mlp.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("nlayers", [1, 2, 3])
def test_shapes_and_mlp_depth(nlayers):
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, nlayers=nlayers)
    assert len(_linears(head)) == nlayers
    assert _linears(head)[-1].out_features == 8
    assert sum(isinstance(m, nn.GELU) for m in head.mlp.modules()) == nlayers - 1
    assert head(torch.randn(5, 16)).shape == (5, 32)
    assert head(torch.randn(2, 7, 16)).shape == (2, 7, 32)  # patch tokens too


def test_initialisation():
    torch.manual_seed(0)
    head = DINOHead(256, out_dim=64, hidden_dim=512, bottleneck_dim=128)
    for linear in _linears(head):  # trunc_normal_(std=0.02), cut at +-2 absolute as in DINOv2, i.e. barely
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert torch.all(linear.bias == 0)
    assert head.last_layer.bias is None


def test_prototypes_stay_unit_norm_and_the_gain_stays_fixed_through_training():
    torch.manual_seed(1)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    gain = head.last_layer.parametrizations.weight.original0
    direction = head.last_layer.parametrizations.weight.original1
    assert torch.all(gain == 1) and not gain.requires_grad and direction.requires_grad
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(32), atol=1e-5)
    trainable = [p for p in head.parameters() if p.requires_grad]
    assert all(p is not gain for p in trainable)
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    for _ in range(3):
        optimizer.zero_grad()
        head(torch.randn(6, 16)).pow(2).sum().backward()
        assert direction.grad is not None and direction.grad.abs().sum() > 0 and gain.grad is None
        optimizer.step()
    assert torch.all(gain == 1)
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(32), atol=1e-5)


def test_outputs_are_cosines_and_scale_free_in_the_prototype_directions():
    torch.manual_seed(2)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(5, 16) * 50
    out = head(x)
    assert out.abs().max().item() <= 1.0 + 1e-5  # unit bottleneck . unit prototype
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.mul_(7.0)
    assert torch.allclose(head(x), out, atol=1e-5)


def test_copy_and_state_dict_round_trip():
    torch.manual_seed(3)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    x = torch.randn(4, 16)
    clone = copy.deepcopy(head)  # the EMA teacher is a deep copy
    assert torch.equal(clone(x), head(x))
    fresh = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(x), head(x))
    assert not fresh.last_layer.parametrizations.weight.original0.requires_grad
