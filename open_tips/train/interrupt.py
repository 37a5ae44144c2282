"""Stopping a run on SIGINT / SIGTERM: finish the current step, save a checkpoint, exit without a traceback.

``GracefulStop`` replaces the SIGINT and SIGTERM handlers while training (main thread only). The first signal
sets a flag that the loop reads at the end of each optimisation step (``requested(ctx)``, agreed over all
ranks, so every rank stops at the same step and takes part in the checkpoint's collectives); a second signal
raises KeyboardInterrupt at once (stop without saving). DataLoader workers ignore both signals
(``ignore_stop_signals`` as their ``worker_init_fn``): Ctrl-C reaches the whole process group, and a worker
killed mid-batch would make the main process fail instead of saving.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Shell convention for "killed by signal N": 128 + N.
EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as SIGINT does, inside the block (main thread only): a run stopped
    while it starts up unwinds (and cleans up) instead of dying where it stands. ``GracefulStop`` takes both
    signals over for the training steps and gives them back to this."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class GracefulStop:
    """Context manager; ``signal_name`` is "SIGINT" / "SIGTERM" once one arrived, else None."""

    def __init__(self, verbose: bool = True) -> None:
        self.verbose = verbose
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        if self.verbose:
            print(
                f"\n{self.signal_name} received: stopping after this step and saving a checkpoint "
                "(send it again to stop at once, without saving)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def requested(self, ctx) -> bool:
        """True on every rank as soon as any rank got a signal (one small all-reduce per step when
        distributed)."""
        return not ctx.all_true(self.signal_name is None)


__all__ = ["EXIT_CODES", "GracefulStop", "ignore_stop_signals", "stop_signals_interrupt"]
