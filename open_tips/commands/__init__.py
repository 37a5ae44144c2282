"""open_tips.commands: one module per `open-tips` sub-command, each with ``register(subparsers)``.

A command stops on a user mistake by raising ``CommandError`` with a message that names the file, key or flag
and says what to do; ``open_tips.cli.main`` prints it as one line and exits non-zero (``--debug`` shows the
traceback). Kept free of heavy imports: ``open-tips --help`` imports this package.
"""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing command failure: printed as ``open-tips COMMAND: error: MESSAGE``, exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_device(name: str | None, source: str = "--device") -> None:
    """Raises CommandError when ``name`` is not a device torch knows or one this machine does not have, before
    any model is loaded or file written (``auto`` and None pass: the command picks one)."""
    if name is None or name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CommandError(f"{source} {name}: not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"{source} {name}: no CUDA GPU is available here; use {source} cpu") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(
                f"{source} {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise CommandError(f"{source} {name}: MPS is not available here; use {source} cpu")
    elif device.type != "cpu":
        raise CommandError(f"{source} {name}: unsupported device type; use cpu, cuda, cuda:N or mps")


__all__ = ["CommandError", "check_device"]
