"""Stop signals in every phase of `mmtrain train`: each ends in a truthful status.json and
exit code 75, and the command printed on the stop, run as printed, continues the run."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.engine.preemption import PREEMPTED_EXIT_CODE, Preempted, resume_command
from mmtrain.engine.trainer import Trainer
from mmtrain.train import train
from tests.helpers import PER_SAMPLE, PYTHON, ROOT, TINY, cli_env, make_config, run_cli, tree_digest


def start(args: list[str]) -> subprocess.Popen:
    """A training process in a session of its own, so the test can signal its whole group."""
    return subprocess.Popen([PYTHON, *args], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stalled(phase: str, marker: Path, overrides: list[str]) -> subprocess.Popen:
    return start(["-m", "tests.stalled_train", phase, str(marker), "--", *overrides])


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    # A hang guard only: a slow machine just takes longer to get there.
    deadline = time.monotonic() + 600  # a hang guard only: a busy machine may be slow
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not path.exists():
        proc.kill()
        raise AssertionError(f"{path.name} never appeared:\n{proc.communicate()[0][-3000:]}")


def stop(proc: subprocess.Popen, group: bool = False) -> str:
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=600)[0]  # a hang guard only
    assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    return output


def printed_resume(output: str) -> list[str]:
    found = re.search(r"continue with (trainer\.resume=true .*)$", output, re.MULTILINE)
    assert found, output[-3000:]
    return shlex.split(found.group(1))


def status(run: Path) -> str:
    return json.loads((run / "status.json").read_text())["status"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # three launches of the CLI: generous for a busy machine
def test_sigterm_to_the_process_group_with_loader_workers_saves_and_the_printed_command_resumes(tmp_path):
    run = tmp_path / "run"
    # 64 steps an epoch, so the signal lands inside the first one even on an idle machine.
    data = ["data.n_train=1024", "trainer.batch_size=16", "trainer.num_workers=2", "stages.finetune.epochs=1"]
    proc = start(["-m", "mmtrain", "train", *TINY, *PER_SAMPLE, *data, "trainer.checkpoint.every_n_steps=1",
                  f"hydra.run.dir={run}"])
    last = run / "checkpoints" / "finetune" / "last.pt"
    wait_for(last, proc)
    # What schedulers and `kill -- -PGID` do: the loader workers get the signal too.
    output = stop(proc, group=True)
    assert "stopped by SIGTERM" in output and "DataLoader worker" not in output, output[-3000:]
    assert status(run) == "interrupted"
    position = load_checkpoint(last)["position"]
    assert position["epoch"] == 0 and 1 <= position["step"] <= 64, position

    # A resume that would change the data is refused and leaves the run as it was.
    before = tree_digest(run)
    out = run_cli(["train", "trainer.resume=true", f"hydra.run.dir={run}", "data.n_train=512"], tmp_path)
    assert out.returncode == 2 and "data.n_train: 1024 in the checkpoint, 512 now" in out.stderr, out.stderr
    assert tree_digest(run) == before

    # The command printed on the stop, without the run's overrides, continues it to the end.
    out = run_cli(["train", *printed_resume(output)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert status(run) == "completed"
    assert load_checkpoint(last)["position"]["epoch"] == 1
    assert "trainer.num_workers=2" in (run / ".hydra" / "overrides.yaml").read_text()


def test_sigterm_during_start_up_ends_interrupted_with_nothing_to_resume(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "building-data"
    proc = stalled("start-up", marker, [*TINY, f"hydra.run.dir={run}"])
    wait_for(marker, proc)
    output = stop(proc)
    assert "stopped by SIGTERM before anything was trained" in output, output[-3000:]
    assert status(run) == "interrupted"
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_during_the_final_test_ends_interrupted_and_the_printed_command_tests(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "testing"
    proc = stalled("test", marker, [*TINY, "test=true", f"hydra.run.dir={run}"])
    wait_for(marker, proc)
    output = stop(proc)
    assert status(run) == "interrupted" and not (run / "metrics.json").exists()

    out = run_cli(["train", *printed_resume(output)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert status(run) == "completed"
    assert "accuracy" in json.loads((run / "metrics.json").read_text())["test"]


def test_a_signal_after_the_last_step_stops_the_run_and_resuming_goes_to_the_test(tmp_path, monkeypatch):
    validate = Trainer.validate
    seen = []

    def signal_in_the_last_validation(self, stage):
        seen.append(stage.name)
        if len(seen) == 2:  # finetune's 2nd epoch: every step is done
            os.kill(os.getpid(), signal.SIGTERM)
        return validate(self, stage)

    monkeypatch.setattr(Trainer, "validate", signal_in_the_last_validation)
    run = tmp_path / "run"
    with pytest.raises(Preempted, match="after the last step"):
        train(make_config(*PER_SAMPLE, "test=true"), run)
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "finetune" / "last.pt")["position"]["epoch"] == 2
    assert not (run / "metrics.json").exists()
    summary = train(make_config(*PER_SAMPLE, "test=true", "trainer.resume=true"), run)
    assert "accuracy" in summary["test"]


@pytest.mark.parametrize("path", ["/runs/a-1_2.3/x", "/runs/with space/x", "/runs/it's/x",
                                  '/runs/say "hi"/x', "/runs/a=b,c/x", "/runs/ü/x"])
def test_the_printed_resume_command_names_the_run_dir_exactly_through_shell_and_hydra(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    words = shlex.split(resume_command(Path(path)))
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(words)}
    assert parsed == {"trainer.resume": True, "hydra.run.dir": path}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_to_a_sweep_stops_it_without_starting_its_next_job(tmp_path):
    sweep, marker = tmp_path / "sweep", tmp_path / "building-data"
    # Every job would stall in start-up: a job started after the stop would hang the sweep.
    proc = stalled("start-up", marker, ["-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    wait_for(marker, proc)
    output = stop(proc)
    assert status(sweep / "0") == "interrupted" and "#1 :" in output  # Hydra went on to job 1...
    assert not (sweep / "1" / "status.json").exists(), output[-3000:]  # ...which did not start


_KEEPS_AN_ITERATOR = """
import torch
from mmtrain.data.loader import make_loader

class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 32
    def __getitem__(self, i):
        return {"image": torch.zeros(1), "text": torch.ones(3, dtype=torch.long), "text_lengths": torch.tensor(3)}

loader = make_loader(Pairs(), 4, train=True, num_workers=2)
KEPT = iter(loader)  # as a kept traceback holds the step loop's frame, or a notebook a variable
next(KEPT)
del loader
print("leaving", flush=True)
"""


def test_a_process_exits_while_an_iterator_outlives_its_loader_with_workers_that_ignore_sigterm():
    # multiprocessing's exit hook SIGTERMs daemonic children and joins them: the workers ignore
    # SIGTERM (they must survive a group signal), so without mmtrain's own exit hook the
    # process waited forever (it hung the whole test suite after its last test once).
    proc = subprocess.run([PYTHON, "-c", _KEEPS_AN_ITERATOR], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=300)  # a hang guard only
    assert proc.returncode == 0 and proc.stdout.strip() == "leaving", proc.stderr[-2000:]
