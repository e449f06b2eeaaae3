"""Exact resume: a run restarted from any checkpoint ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.errors import CheckpointError
from mmtrain.train import train
from tests.trainer_utils import assert_same_weights, make_config, weights, one_thread  # noqa: F401 (autouse fixture)

# every_n_steps=1 and keep_last=99: a copy of last.pt after every step, i.e. every
# state a crash could leave behind. 128 samples / 32 = 4 steps an epoch; 1 + 2 epochs.
SAVE_ALL = ["trainer.deterministic=true", "trainer.checkpoint.every_n_steps=1",
            "trainer.checkpoint.keep_last=99"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted")
    train(make_config(*SAVE_ALL), run)
    return run


def _resume_from(snapshot: Path, run: Path) -> Path:
    """A fresh run dir holding `snapshot` as its last.pt, resumed to the end."""
    stage = snapshot.parent.name
    (run / "checkpoints" / stage).mkdir(parents=True)
    shutil.copy(snapshot, run / "checkpoints" / stage / "last.pt")
    train(make_config(*SAVE_ALL, "trainer.resume=true"), run)
    return run


def test_resume_mid_epoch_and_at_stage_boundary_is_bit_identical(reference, tmp_path):
    snapshots = sorted((reference / "checkpoints" / "finetune").glob("step-*.pt"))
    assert len(snapshots) == 8  # 2 epochs x 4 steps
    boundary = reference / "checkpoints" / "pretrain" / "step-0000004.pt"
    assert load_checkpoint(boundary)["position"]["epoch"] == 1  # pretraining had just ended
    seed = random.randrange(10**6)
    mid_epoch = [s for s in snapshots if load_checkpoint(s)["position"]["step"] != 0]
    picked = random.Random(seed).choice(mid_epoch)
    end = weights(reference / "checkpoints" / "finetune" / "last.pt")
    for snapshot in (boundary, picked):
        run = _resume_from(snapshot, tmp_path / snapshot.stem)
        resumed = load_checkpoint(run / "checkpoints" / "finetune" / "last.pt")
        assert_same_weights(resumed["model"], end)
        reference_last = load_checkpoint(reference / "checkpoints" / "finetune" / "last.pt")
        assert resumed["metrics"] == reference_last["metrics"], f"seed {seed}, {snapshot.name}"
        assert resumed["position"] == reference_last["position"]


def test_resume_refuses_a_checkpoint_of_another_model(reference, tmp_path):
    snapshot = reference / "checkpoints" / "finetune" / "step-0000006.pt"
    (tmp_path / "checkpoints" / "finetune").mkdir(parents=True)
    shutil.copy(snapshot, tmp_path / "checkpoints" / "finetune" / "last.pt")
    with pytest.raises(CheckpointError, match=r"model.fusion.dim: 16 in the checkpoint, 32 now"):
        train(make_config(*SAVE_ALL, "trainer.resume=true", "model.fusion.dim=32"), tmp_path)


def test_checkpoints_hold_no_pickled_objects(reference):
    # weights_only=True is the only way checkpoints are read; it refuses arbitrary objects.
    ckpt = torch.load(reference / "checkpoints" / "finetune" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "position"} <= ckpt.keys()
