"""`python -m tests.stalled_train PHASE MARKER -- <mmtrain train overrides>`: the real CLI,
held in one phase of a run so a test can act on it there (send a signal, start a second
writer). On reaching PHASE it writes MARKER and sleeps; everything else is unchanged.

PHASE: `start-up` (building the data, after the run dir is locked and status.json says
running) or `test` (loading best.pt for the final test evaluation, after the last step).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable


def _stall(marker: Path) -> Callable[..., Any]:
    def stalled(*args: Any, **kwargs: Any) -> Any:
        marker.write_text("here\n")
        time.sleep(600)  # the test's signal or kill ends this
        raise AssertionError("the test never stopped this run")

    return stalled


def main() -> None:
    phase, marker, sep, *overrides = sys.argv[1:]
    assert sep == "--", "usage: python -m tests.stalled_train PHASE MARKER -- OVERRIDES"
    if phase == "start-up":
        import mmtrain.data

        mmtrain.data.build = _stall(Path(marker))
    elif phase == "test":
        import mmtrain.engine.checkpoint

        # train() looks it up when the final test starts; resuming (trainer.py) binds its own.
        mmtrain.engine.checkpoint.load_model_state = _stall(Path(marker))
    else:
        raise SystemExit(f"unknown phase {phase}")
    from mmtrain.cli import main as cli_main

    cli_main(["train", *overrides])


if __name__ == "__main__":
    main()
