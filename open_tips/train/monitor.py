"""Watches the teacher monitors logged by the distill / mask terms and warns once when a head is stuck.

Uniform: teacher entropy >= 97 % of log K (the loss sits at log K and shapes nothing). Collapsed: every row
of the batch has the same most likely prototype (``prototypes_used`` <= 1), or the teacher is nearly one-hot
(entropy <= 10 % of log K) with its mean far from uniform.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger("open_tips.train")

_ADVICE = {
    "uniform": "keep batch norm in the heads (loss.head_norm=batch), lower loss.teacher_temp (e.g. 0.04) or "
    "use fewer prototypes (loss.head_out_dim)",
    "collapsed": "keep centring on (loss.centering=center or sinkhorn), raise loss.teacher_temp or "
    "loss.center_momentum's update rate",
}


class CollapseWatch:
    def __init__(self, num_prototypes: int, patience: int = 5) -> None:
        self.log_k = math.log(num_prototypes)
        self.patience = max(int(patience), 1)
        self.streak: dict[tuple[str, str], int] = {}
        self.warned: set[tuple[str, str]] = set()

    def state(self, entropy: float, kl_uniform: float, prototypes_used: float | None = None) -> str | None:
        if entropy >= 0.97 * self.log_k:
            return "uniform"
        if prototypes_used is not None and prototypes_used <= 1.0:
            return "collapsed"
        if entropy <= 0.1 * self.log_k and kl_uniform >= 0.5 * self.log_k:
            return "collapsed"
        return None

    def update(self, step: int, metrics: dict[str, float]) -> list[str]:
        """Feed one log step's metrics; returns the warnings issued now (each (head, state) once)."""
        messages = []
        for head in ("distill", "mask"):
            entropy = metrics.get(f"{head}_teacher_entropy")
            if entropy is None:
                continue
            state = self.state(
                entropy,
                metrics.get(f"{head}_teacher_kl_uniform", 0.0),
                metrics.get(f"{head}_prototypes_used"),
            )
            for kind in ("uniform", "collapsed"):
                key = (head, kind)
                self.streak[key] = self.streak.get(key, 0) + 1 if state == kind else 0
                if self.streak[key] >= self.patience and key not in self.warned:
                    self.warned.add(key)
                    message = (
                        f"step {step}: the {head} teacher has been {kind} for {self.streak[key]} log steps "
                        f"(entropy {entropy:.2f}, log K {self.log_k:.2f}); the {head} loss no longer shapes "
                        f"the features. Try: {_ADVICE[kind]}."
                    )
                    log.warning(message)
                    messages.append(message)
        return messages
