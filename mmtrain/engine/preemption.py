"""SIGTERM / SIGINT: stop in any phase, ending in a truthful status and exit code 75.

Schedulers (SLURM, Kubernetes, torchrun on a failing peer) send SIGTERM and kill the
process some seconds later (torchrun waits ~30 s). `mmtrain train` holds one `StopSignal`
from start to end. Inside the training loop (`deferred()`) a signal is only recorded:
raising inside a half-done step would leave nothing to resume from, so the trainer checks
`requested` between steps, saves last.pt and raises `Preempted`. Anywhere else (start-up,
the final test, writing the results) nothing is lost by stopping at once, so the handler
raises `Stopped` there, a BaseException like KeyboardInterrupt, which no `except
Exception` on the way can swallow. A second Ctrl-C while deferred raises KeyboardInterrupt
at once, for a user who does not want to wait.

DataLoader workers ignore both signals (`data.loader.ignore_stop_signals`): a
signal to the whole process group must not kill them under the main process, which
decides when to stop.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Iterator

from mmtrain.errors import MmtrainError

# EX_TEMPFAIL from sysexits.h: "try again later". SLURM requeue scripts can test for it.
PREEMPTED_EXIT_CODE = 75


class Preempted(MmtrainError):
    """Stopped on a signal; running the printed command again continues (or restarts) the run."""

    exit_code = PREEMPTED_EXIT_CODE


class Stopped(BaseException):
    """A signal outside the training loop, raised where the program happens to be."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


def resume_command(run_dir: Path) -> str:
    """The overrides that continue `run_dir`, quoted for a shell and for Hydra's parser."""
    path = str(run_dir)
    if re.fullmatch(r"[A-Za-z0-9_./:@+-]+", path):
        return f"trainer.resume=true hydra.run.dir={path}"
    quoted = '"' + path.replace('"', '\\"') + '"'  # Hydra's quoted string, then the shell's
    return f"trainer.resume=true {shlex.quote('hydra.run.dir=' + quoted)}"


class StopSignal:
    """Context manager: while inside, SIGTERM and SIGINT stop the program as described above."""

    # The last signal any StopSignal of this process caught: a sweep running its jobs one
    # after the other in this process must not start the next job after a stop.
    received: str | None = None

    def __init__(self) -> None:
        self.requested: str | None = None
        self._deferring = 0
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    @property
    def active(self) -> bool:
        return bool(self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked loader worker before its worker_init_fn ran
            return
        name = signal.Signals(signum).name
        StopSignal.received = name
        if self._deferring:
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = name
        elif self.requested is None:
            # Once: a second signal must not cut short the status write of the first.
            self.requested = name
            raise Stopped(name)

    def hold(self) -> None:
        """From now until the context exits, a signal is only recorded (the run is writing
        its final status)."""
        self._deferring += 1

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within, a signal is only recorded in `requested`, for the caller to act on."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

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
        self._deferring = 0
