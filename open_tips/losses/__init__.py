"""Training losses, one module each."""

from open_tips.losses.contrastive import clip_loss, gather_with_grad, siglip_loss
from open_tips.losses.dino import DINOLoss, sinkhorn_knopp
from open_tips.losses.ibot import IBOTPatchLoss
from open_tips.losses.koleo import koleo_loss
from open_tips.losses.sparc import sparc_alignment_weights, sparc_loss

__all__ = [
    "DINOLoss",
    "IBOTPatchLoss",
    "clip_loss",
    "gather_with_grad",
    "koleo_loss",
    "siglip_loss",
    "sinkhorn_knopp",
    "sparc_alignment_weights",
    "sparc_loss",
]
