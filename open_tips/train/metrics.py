"""Run logging: a JSON-lines metrics file, TensorBoard scalars, optionally Weights & Biases, and the final
loss-curve picture.

W&B (``logging.wandb=true``) is an optional dependency (``pip install 'open_tips[wandb]'``). ``WANDB_MODE=offline``
(or ``disabled``) is read by wandb itself: offline runs are written under ``RUN_DIR/wandb`` and synced later with
``wandb sync``. The W&B run id is kept in ``RUN_DIR/wandb_id.txt`` so that ``--resume`` continues the same run."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any


class WandbMissingError(ImportError):
    pass


def _start_wandb(run_dir: Path, project: str, name: str | None, config: dict | None):
    try:
        import wandb
    except ImportError as err:
        raise WandbMissingError(
            "logging.wandb=true needs the wandb package: pip install 'open_tips[wandb]' "
            "(or set logging.wandb=false)"
        ) from err
    id_path = run_dir / "wandb_id.txt"
    # Our own id (W&B accepts [a-z0-9]): wandb's id helpers have moved between releases.
    run_id = id_path.read_text().strip() if id_path.is_file() else secrets.token_hex(4)
    id_path.write_text(run_id + "\n")
    return wandb.init(
        project=project,
        name=name or run_dir.resolve().name,
        id=run_id,
        resume="allow",  # the same id after --resume continues the run
        dir=str(run_dir),
        config=config,
    )


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        enabled: bool = True,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "open_tips",
        wandb_name: str | None = None,
        config: dict | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        self.wandb_run = None
        if enabled and wandb:  # first: a missing package fails before anything else starts
            self.wandb_run = _start_wandb(run_dir, wandb_project, wandb_name, config)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but logging must never stop training
                self.writer = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines past the checkpoint's step so the file equals an uninterrupted run's."""
        if not self.enabled or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", -1) < step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
        if self.wandb_run is not None:
            scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: Path, output: Path, num_prototypes: int | None = None) -> Path | None:
    """Loss terms (left) and, when the run logs them, the teacher monitors of the distill / mask heads
    (right: teacher and student entropy against log K, where a flat line at log K means a uniform teacher)."""
    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not records:
        return None
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list, list]:
        points = [(r["step"], r[key]) for r in records if key in r]
        return [p[0] for p in points], [p[1] for p in points]

    keys = sorted({k for r in records for k in r if k.startswith("loss")})
    monitors = [k for k in ("distill", "mask") if any(f"{k}_teacher_entropy" in r for r in records)]
    fig, axes = plt.subplots(1, 2 if monitors else 1, figsize=(13 if monitors else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    for key in keys:
        ax.plot(*series(key), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training losses")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    if monitors:
        ax = axes[0, 1]
        for head, colour in zip(monitors, ("tab:blue", "tab:orange")):
            ax.plot(*series(f"{head}_teacher_entropy"), color=colour, label=f"{head}: teacher entropy")
            ax.plot(
                *series(f"{head}_student_entropy"), color=colour, ls="--", label=f"{head}: student entropy"
            )
            ax.plot(
                *series(f"{head}_teacher_kl_uniform"),
                color=colour,
                ls=":",
                label=f"{head}: KL(mean teacher || U)",
            )
        if num_prototypes:
            ax.axhline(math.log(num_prototypes), color="grey", lw=1, label=f"log K (K = {num_prototypes})")
        ax.set_xlabel("step")
        ax.set_ylabel("nats")
        ax.set_title("self-distillation / MIM teacher monitors")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
