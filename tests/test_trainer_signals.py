"""SIGTERM (preemption) finishes the step, saves last.pt and exits 75; resuming completes."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.engine.preemption import PREEMPTED_EXIT_CODE
from mmtrain.train import train
from tests.trainer_utils import PER_SAMPLE, PYTHON, ROOT, TINY, cli_env, make_config, one_thread  # noqa: F401 (autouse fixture)


def test_sigterm_saves_last_pt_and_exits_with_the_preemption_code(tmp_path):
    run = tmp_path / "run"
    # 64 steps an epoch, so the signal lands inside the first one even on an idle machine.
    data = ["data.n_train=1024", "trainer.batch_size=16"]
    overrides = [*TINY, *PER_SAMPLE, *data, "trainer.checkpoint.every_n_steps=1", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([PYTHON, "-m", "mmtrain", "train", *overrides], cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run / "checkpoints" / "finetune" / "last.pt"
    deadline = time.monotonic() + 600  # a hang guard only: a busy machine may be slow
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last.exists(), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    # The position below shows that it stopped after the step in flight; the timeout only
    # guards against a hang (a clock would fail a correct run on a busy machine).
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-2000:]
    assert "stopped by SIGTERM" in output and "trainer.resume=true" in output
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    position = load_checkpoint(last)["position"]
    assert position["epoch"] == 0 and 1 <= position["step"] <= 64, position

    # The saved state resumes where it stopped and runs to the end.
    train(make_config(*PER_SAMPLE, *data, "trainer.resume=true"), run)
    assert load_checkpoint(last)["position"]["epoch"] == 2
