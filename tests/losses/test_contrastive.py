"""Contrastive losses against float64 loops, their extremes, gradients and autocast behaviour."""

import math

import pytest
import torch

from open_tips.losses import clip_loss, gather_with_grad, siglip_loss
from tests.losses import _reference as ref


@pytest.mark.parametrize("temperature", [1.0, 0.3, 0.05])
def test_clip_loss_matches_loop(temperature):
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    got = clip_loss(image, text, temperature)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(ref.clip(image.numpy(), text.numpy(), temperature), abs=1e-5)


def test_clip_loss_accepts_a_one_element_temperature_tensor_and_it_gets_gradient():
    torch.manual_seed(1)
    image, text = torch.randn(6, 4), torch.randn(6, 4)
    log_t = torch.tensor([math.log(0.2)], requires_grad=True)  # FSDP2-style 1-element parameter
    loss = clip_loss(image, text, log_t.exp())
    assert loss.shape == ()
    assert loss.item() == pytest.approx(ref.clip(image.numpy(), text.numpy(), 0.2), abs=1e-5)
    loss.backward()
    assert log_t.grad is not None and log_t.grad.abs().item() > 0


def test_clip_loss_is_symmetric_in_its_two_directions():
    torch.manual_seed(2)
    image, text = torch.randn(7, 5), torch.randn(7, 5)
    assert clip_loss(image, text, 0.1).item() == pytest.approx(clip_loss(text, image, 0.1).item(), abs=1e-6)


def test_clip_loss_extremes():
    torch.manual_seed(3)
    x = torch.randn(16, 32)
    assert clip_loss(x, 5 * x, 0.01).item() < 1e-3  # perfect alignment (scale-free), sharp temperature
    same = torch.ones(16, 32)
    assert clip_loss(same, same, 0.07).item() == pytest.approx(math.log(16), abs=1e-5)  # no information
    # random high-dimensional pairs: cosines ~ 0, so every row is near-uniform over the batch
    random = clip_loss(torch.randn(8, 4096), torch.randn(8, 4096), 1.0).item()
    assert random == pytest.approx(math.log(8), abs=0.05)


def test_clip_loss_gradient_pulls_pairs_together():
    torch.manual_seed(4)
    image = torch.randn(6, 8, requires_grad=True)
    text = torch.randn(6, 8)
    before = clip_loss(image, text, 0.2)
    before.backward()
    with torch.no_grad():
        stepped = image - 0.5 * image.grad
    assert clip_loss(stepped, text, 0.2).item() < before.item()


def test_siglip_loss_matches_loop():
    torch.manual_seed(5)
    image, text = torch.randn(4, 6), torch.randn(4, 6)
    for temperature, bias in ((0.5, -1.0), (0.1, -10.0), (1.0, 0.0)):
        got = siglip_loss(image, text, temperature, bias)
        assert got.item() == pytest.approx(
            ref.siglip(image.numpy(), text.numpy(), temperature, bias), abs=1e-5
        )


def test_siglip_bias_and_temperature_get_gradient():
    torch.manual_seed(6)
    image, text = torch.randn(5, 6), torch.randn(5, 6)
    bias = torch.tensor([-10.0], requires_grad=True)
    temperature = torch.tensor([0.1], requires_grad=True)
    siglip_loss(image, text, temperature, bias).backward()
    # with b = -10 almost every pair, positives included, is predicted negative: raising b helps
    assert bias.grad.item() < 0
    assert temperature.grad is not None and temperature.grad.abs().item() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        clip_loss(torch.randn(4, 3), torch.randn(5, 3), 0.1)
    with pytest.raises(ValueError):
        siglip_loss(torch.randn(4, 3), torch.randn(4, 2), 0.1, 0.0)


def test_logits_stay_float32_under_bf16_autocast():
    torch.manual_seed(7)
    image, text = torch.randn(8, 64), torch.randn(8, 64)
    reference = clip_loss(image, text, 0.005)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = clip_loss(image, text, 0.005)
        got_sig = siglip_loss(image, text, 0.005, -10.0)
    assert got.dtype == torch.float32
    # bf16 cosines at T = 0.005 would move logits by ~1; float32 ones agree to rounding
    assert got.item() == pytest.approx(reference.item(), abs=1e-4)
    assert got_sig.item() == pytest.approx(siglip_loss(image, text, 0.005, -10.0).item(), abs=1e-4)


def test_gather_with_grad_is_identity_without_distribution():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
