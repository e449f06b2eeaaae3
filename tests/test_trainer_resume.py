"""Exact resume: a run restarted from any checkpoint ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.errors import CheckpointError
from mmtrain.train import train
from tests.helpers import assert_same_weights, make_config

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


# Every kind of place a run can stop: (snapshot, its position {stage_index, epoch, step}).
# Global steps 1-4 are pretraining's one epoch; 5-12 fine-tuning's two.
POSITIONS = {
    "stage boundary": ("pretrain/step-0000004.pt", (0, 1, 0)),   # pretraining has just ended
    "a stage's first step": ("finetune/step-0000005.pt", (1, 0, 1)),
    "epoch boundary": ("finetune/step-0000008.pt", (1, 1, 0)),
    "mid-epoch": ("finetune/step-0000010.pt", (1, 1, 2)),
    "the last step but one": ("finetune/step-0000011.pt", (1, 1, 3)),
}


def test_every_step_left_a_snapshot(reference):
    assert len(list((reference / "checkpoints" / "finetune").glob("step-*.pt"))) == 8  # 2 epochs x 4 steps


@pytest.mark.parametrize("where", POSITIONS)
def test_resume_from_any_position_is_bit_identical(reference, tmp_path, where):
    name, position = POSITIONS[where]
    snapshot = reference / "checkpoints" / name
    saved = load_checkpoint(snapshot)["position"]
    assert (saved["stage_index"], saved["epoch"], saved["step"]) == position
    run = _resume_from(snapshot, tmp_path / "run")
    resumed = load_checkpoint(run / "checkpoints" / "finetune" / "last.pt")
    reference_last = load_checkpoint(reference / "checkpoints" / "finetune" / "last.pt")
    assert_same_weights(resumed["model"], reference_last["model"])
    assert resumed["metrics"] == reference_last["metrics"]
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
