"""A NaN in the loss: the step is skipped with a warning; K in a row stop the run clearly."""

from __future__ import annotations

import logging

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.errors import MmtrainError
from mmtrain.tasks.classification import ClassificationTask
from mmtrain.train import train
from tests.helpers import PER_SAMPLE, make_config


def _nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """Make the classification loss NaN on the given training_step calls (None: always)."""
    original = ClassificationTask.training_step
    seen = {"n": 0}

    def training_step(self, model, batch):
        out = original(self, model, batch)
        seen["n"] += 1
        if calls is None or seen["n"] in calls:
            out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(ClassificationTask, "training_step", training_step)


def test_nan_loss_skips_the_step_and_training_goes_on(tmp_path, monkeypatch, caplog):
    _nan_on_calls(monkeypatch, {3})
    with caplog.at_level(logging.WARNING, logger="mmtrain"):
        train(make_config(*PER_SAMPLE), tmp_path)
    assert "non-finite gradient at step 3 of stage finetune: step skipped" in caplog.text
    last = load_checkpoint(tmp_path / "checkpoints" / "finetune" / "last.pt")
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    # 2 epochs x 4 steps, one skipped: AdamW took 7 steps.
    steps = {int(s["step"]) for s in last["optimizer"]["state"].values()}
    assert steps == {7}


def test_nan_loss_k_times_in_a_row_stops_with_the_step_number(tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, None)
    with pytest.raises(MmtrainError, match=r"3 non-finite gradients in a row up to step 3 of stage finetune"):
        train(make_config(*PER_SAMPLE, "trainer.max_nonfinite_steps=3"), tmp_path)
