"""Out of memory in a step: last.pt saved at the last finished step, one actionable line."""

from __future__ import annotations

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.errors import ConfigError
from mmtrain.tasks.classification import ClassificationTask
from mmtrain.train import train
from tests.helpers import PER_SAMPLE, make_config


def test_out_of_memory_saves_last_pt_and_says_what_to_change(tmp_path, monkeypatch):
    original, calls = ClassificationTask.training_step, {"n": 0}

    def training_step(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 3:  # what the CUDA caching allocator raises
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "training_step", training_step)
    with pytest.raises(ConfigError, match=r"out of memory at step 3 of stage finetune with "
                                          r"trainer.batch_size=32: lower it and raise "
                                          r"trainer.accumulate_grad_batches"):
        train(make_config(*PER_SAMPLE), tmp_path)
    position = load_checkpoint(tmp_path / "checkpoints" / "finetune" / "last.pt")["position"]
    assert position == {"stage_index": 0, "epoch": 0, "step": 2, "global_step": 2}
