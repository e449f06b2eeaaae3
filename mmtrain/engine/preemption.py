"""SIGTERM / SIGINT turned into a request to stop after the current step.

Schedulers (SLURM, Kubernetes, torchrun on a failing peer) send SIGTERM and kill the
process some seconds later (torchrun waits ~30 s). Raising inside a half-done step would
leave nothing to resume from, so the handler only records the signal; the trainer checks
`requested` between steps, saves last.pt and raises `Preempted`. A second Ctrl-C raises
KeyboardInterrupt at once, for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from mmtrain.errors import MmtrainError

# EX_TEMPFAIL from sysexits.h: "try again later". SLURM requeue scripts can test for it.
PREEMPTED_EXIT_CODE = 75


class Preempted(MmtrainError):
    """Training stopped on a signal after saving last.pt; resuming continues the run."""

    exit_code = PREEMPTED_EXIT_CODE


class StopSignal:
    """Context manager: while inside, SIGTERM and SIGINT set `requested` instead of killing."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name

    def __enter__(self) -> "StopSignal":
        # Signal handlers can only be set from the main thread (not in a notebook worker).
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
