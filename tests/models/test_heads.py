"""DINOHead: structure, initialisation, and the weight-normalised prototype layer with its gain fixed at 1."""

import copy

import pytest
import torch
from torch import nn

from open_tips.models.heads import BatchNormAcrossRanks, DINOHead


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


def test_batch_norm_matches_torch_batchnorm_in_training_mode_and_ignores_eval():
    from open_tips.models.heads import BatchNormAcrossRanks

    torch.manual_seed(0)
    ours, reference = BatchNormAcrossRanks(6), nn.BatchNorm1d(6, track_running_stats=False)
    weight, bias = torch.rand(6) + 0.5, torch.randn(6)
    with torch.no_grad():
        for module in (ours, reference):
            module.weight.copy_(weight)
            module.bias.copy_(bias)
    x = (torch.randn(40, 6) * 3 + 5).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    torch.testing.assert_close(ours(x), reference(x_ref), rtol=1e-5, atol=1e-5)
    (ours(x) ** 3).sum().backward()
    (reference(x_ref) ** 3).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    # Patch tokens [B, N, C] are normalised over every token of the batch; eval mode changes nothing,
    # since the EMA teacher (always in eval) must use its own batch's statistics.
    tokens = torch.randn(3, 5, 6) + 2
    ours.eval()
    torch.testing.assert_close(ours(tokens).reshape(15, 6), reference(tokens.reshape(15, 6)))


def test_batch_norm_head_spreads_nearly_parallel_inputs():
    # The failure it fixes: inputs in a narrow cone (pairwise cosine ~0.95, as the tiny preset's CLS tokens
    # start) give nearly parallel bottleneck vectors without batch norm, and spread ones with it.
    torch.manual_seed(0)
    common = torch.randn(1, 32) * 4
    x = common + torch.randn(64, 32)
    cos_in = torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1).mean()
    assert cos_in > 0.9

    def bottleneck_cos(norm):
        torch.manual_seed(1)
        head = DINOHead(32, out_dim=128, hidden_dim=64, bottleneck_dim=16, norm=norm)
        z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
        return (z @ z.T).mean().item()

    assert bottleneck_cos("none") > 0.8
    assert bottleneck_cos("batch") < 0.3
    with pytest.raises(ValueError, match="head norm"):
        DINOHead(32, norm="layer")


def _bn_loss(norm: BatchNormAcrossRanks, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((norm(x) ** 3) * w).sum()  # a non-linear loss, so gradients through the statistics matter


def _bn_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 16, generator=g, dtype=torch.float64), torch.randn(
        8, 3, 16, generator=g, dtype=torch.float64
    )


def _bn_rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    norm = BatchNormAcrossRanks(16).double()
    x, w = _bn_data()
    part = slice(rank * 4, (rank + 1) * 4)
    local = x[part].clone().requires_grad_(True)
    _bn_loss(norm, local, w[part]).backward()
    weight_grad = norm.weight.grad.clone()
    dist.all_reduce(weight_grad)
    queue.put((rank, local.grad, weight_grad))
    dist.destroy_process_group()


def test_batch_norm_across_two_ranks_equals_one_process_exactly():
    """The statistics are all-reduced with autograd: each rank's input gradient (which includes the other
    rank's loss through the shared mean and variance) and the summed parameter gradient equal one process
    on the whole batch, in float64 to rounding."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_bn_rank, args=(rank, port, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    results = sorted((queue.get(timeout=120) for _ in procs), key=lambda item: item[0])
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    norm = BatchNormAcrossRanks(16).double()
    x, w = _bn_data()
    x.requires_grad_(True)
    _bn_loss(norm, x, w).backward()
    two_rank_input_grad = torch.cat([results[0][1], results[1][1]])
    assert torch.allclose(two_rank_input_grad, x.grad, rtol=0, atol=1e-12)
    assert torch.allclose(results[0][2], norm.weight.grad, rtol=0, atol=1e-12)
    # without the cross-rank reduction the gradients would differ (rank-local statistics)
    local = BatchNormAcrossRanks(16).double()
    half = x.detach()[:4].clone().requires_grad_(True)
    _bn_loss(local, half, w[:4]).backward()
    assert not torch.allclose(half.grad, x.grad[:4], atol=1e-3)
