"""Fault injection: kill -9 a training process at random moments, mid-save included; every
resume succeeds, no torn checkpoint is ever read, and the run still ends bit-identical."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import torch

from mmtrain.config import check_train_config
from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.train import train
from tests.helpers import assert_same_weights, make_config, weights

OVERRIDES = ["trainer.deterministic=true", "trainer.checkpoint.every_n_steps=1",
             "trainer.checkpoint.keep_last=2", "trainer.checkpoint.keep_best=2", "stages.finetune.epochs=4",
             "stages.finetune.monitor=macro_f1", "trainer.batch_size=16"]


def _train_child(run: str, resume: bool) -> None:
    # Forked from the test process: one thread, so no OpenMP pool is needed after fork.
    torch.set_num_threads(1)
    # A slow disk: each fsync takes 20 ms, so kills land inside saves often enough to count.
    fsync = os.fsync
    os.fsync = lambda fd: (time.sleep(0.02), fsync(fd))[1]
    train(make_config(*OVERRIDES, f"trainer.resume={str(resume).lower()}"), Path(run))


def _start(ctx, run: Path) -> multiprocessing.Process:
    p = ctx.Process(target=_train_child, args=(str(run), True), daemon=True)
    p.start()
    return p


def _kill_mid_save(p: multiprocessing.Process, folder: Path, timeout: float) -> bool:
    """SIGKILL `p` as soon as a checkpoint temp file exists (a save in progress)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.is_alive():
        if any(folder.glob("*/.*.tmp")):
            os.kill(p.pid, signal.SIGKILL)
            return True
    return False


def test_kill_9_at_random_moments_never_loses_or_corrupts_a_checkpoint(tmp_path):
    # Import every component here, once, so that forked children start training at once.
    check_train_config(make_config(*OVERRIDES))
    ctx = multiprocessing.get_context("fork")
    reference = tmp_path / "reference"
    p = ctx.Process(target=_train_child, args=(str(reference), False))
    p.start()
    p.join()
    assert p.exitcode == 0

    run = tmp_path / "killed"
    rng = random.Random(int(time.time()))
    kills = mid_save = 0
    for attempt in range(40):
        p = _start(ctx, run)
        if attempt % 2 == 0:
            hit = _kill_mid_save(p, run / "checkpoints", timeout=120.0)  # hang guard
            mid_save += hit
        else:
            # Short enough that the run cannot finish before the kills are counted.
            time.sleep(rng.uniform(0.05, 0.4))
            hit = p.is_alive()
            if hit:
                os.kill(p.pid, signal.SIGKILL)
        p.join()
        kills += hit
        if not hit:
            assert p.exitcode == 0, f"a resume failed (exit {p.exitcode}) after {kills} kills"
            break
        # Whatever the moment of the kill, every checkpoint on disk reads back whole.
        for ckpt in (run / "checkpoints").glob("*/*.pt"):
            load_checkpoint(ckpt)
        if kills >= 12 and mid_save >= 4:
            break
    print(f"{kills} kills, {mid_save} of them mid-save")
    assert kills >= 10 and mid_save >= 3, (kills, mid_save)
    if p.exitcode != 0:  # the loop stopped on a kill: finish the run
        p = ctx.Process(target=_train_child, args=(str(run), True))
        p.start()
        p.join()
        assert p.exitcode == 0
    assert_same_weights(weights(run / "checkpoints" / "finetune" / "last.pt"),
                        weights(reference / "checkpoints" / "finetune" / "last.pt"))

    # Retention survived the kills too: the last 2 step copies, the top 2 by macro-F1.
    folder = run / "checkpoints" / "finetune"
    assert sorted(p.name for p in folder.glob("step-*.pt")) == ["step-0000039.pt", "step-0000040.pt"]
    top = load_checkpoint(folder / "last.pt")["best"]["top"]
    assert len(top) == 2 and top[0][0] >= top[1][0]
    assert sorted(p.name for p in folder.glob("best-*.pt")) == sorted(name for _, name in top)
    assert load_checkpoint(folder / "best.pt")["metrics"]["macro_f1"] == top[0][0]
    assert top == load_checkpoint(reference / "checkpoints" / "finetune" / "last.pt")["best"]["top"]
    assert not list(folder.glob(".*.tmp"))
