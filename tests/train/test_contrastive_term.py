"""The contrastive term of the objective, where CLS1 meets the web caption and CLS2 the synthetic one: the mean of
the two CLIP (or SigLIP) losses against the float64 reference, with gradient to every input and the temperature."""

from __future__ import annotations

import math

import pytest
import torch

from open_tips.models.vision import ImageEmbeddings
from open_tips.train.terms import ContrastiveTerm, StepViews
from tests.losses import _reference as ref

TIPS_PAIRS = [("cls_web", "web"), ("cls_synthetic", "synthetic")]


def _views(web_img, syn_img, web_txt, syn_txt) -> StepViews:
    patches = torch.zeros(web_img.shape[0], 1, 1, web_img.shape[1])
    views = StepViews(global_crops=torch.zeros(web_img.shape[0], 3, 14, 14), masks=None, num_local=0)
    views.contrast = ImageEmbeddings(web_img, syn_img, patches)
    views.text = {"web": web_txt, "synthetic": syn_txt}
    return views


def test_dual_pairs_are_the_mean_and_everything_gets_gradient() -> None:
    torch.manual_seed(8)
    web_img, syn_img, web_txt, syn_txt = (torch.randn(6, 8, requires_grad=True) for _ in range(4))
    log_t = torch.tensor(math.log(0.1), requires_grad=True)
    term = ContrastiveTerm(TIPS_PAIRS)
    assert term.needs == {"contrastive", "text:web", "text:synthetic"}
    out = term(_views(web_img, syn_img, web_txt, syn_txt), log_t.exp())
    assert set(out) == {"loss", "loss_web", "loss_synthetic"}
    assert out["loss_web"].item() == pytest.approx(
        ref.clip(web_img.detach().numpy(), web_txt.detach().numpy(), 0.1), abs=1e-5
    )
    assert out["loss_synthetic"].item() == pytest.approx(
        ref.clip(syn_img.detach().numpy(), syn_txt.detach().numpy(), 0.1), abs=1e-5
    )
    assert out["loss"].item() == pytest.approx(
        0.5 * (out["loss_web"] + out["loss_synthetic"]).item(), abs=1e-7
    )
    out["loss"].backward()
    assert log_t.grad is not None and log_t.grad.abs() > 0
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (web_img, syn_img, web_txt, syn_txt))


def test_sigmoid_kind_learns_its_bias() -> None:
    torch.manual_seed(9)
    web_img, syn_img, web_txt, syn_txt = (torch.randn(4, 8) for _ in range(4))
    term = ContrastiveTerm(TIPS_PAIRS, kind="sigmoid")
    with torch.no_grad():
        term.siglip_bias.fill_(-2.0)
    out = term(_views(web_img, syn_img, web_txt, syn_txt), torch.tensor(0.1))
    expected = 0.5 * (
        ref.siglip(web_img.numpy(), web_txt.numpy(), 0.1, -2.0)
        + ref.siglip(syn_img.numpy(), syn_txt.numpy(), 0.1, -2.0)
    )
    assert out["loss"].item() == pytest.approx(expected, abs=1e-5)
    out["loss"].backward()
    assert term.siglip_bias.grad is not None and term.siglip_bias.grad.abs().item() > 0


def test_single_pair_logs_only_the_loss() -> None:
    torch.manual_seed(10)
    web_img, syn_img, web_txt, syn_txt = (torch.randn(5, 8) for _ in range(4))
    out = ContrastiveTerm([("cls_web", "synthetic")])(
        _views(web_img, syn_img, web_txt, syn_txt), torch.tensor(0.2)
    )
    assert set(out) == {"loss"}
    assert out["loss"].item() == pytest.approx(ref.clip(web_img.numpy(), syn_txt.numpy(), 0.2), abs=1e-5)
