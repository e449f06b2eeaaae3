"""An interrupted run, resumed, ends exactly where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch

from mmtrain.engine import trainer as trainer_module
from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.errors import ConfigError
from tests.conftest import TINY, train_in_process

EXACT = TINY + ["trainer.deterministic=true", "trainer.checkpoint.every_n_steps=1",
                "stages.pretrain.epochs=2", "stages.finetune.epochs=2", "model.fusion.dropout=0.2"]


class Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, steps: int) -> None:
    """Make the trainer die (like a kill) right after its `steps`-th checkpoint save."""
    real_save = trainer_module.Trainer._save
    calls = {"n": 0}

    def save(self, kind, ctx, pos, metrics):
        real_save(self, kind, ctx, pos, metrics)
        if kind == "last":
            calls["n"] += 1
            if calls["n"] == steps:
                raise Interrupt

    monkeypatch.setattr(trainer_module.Trainer, "_save", save)


def _final_weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "finetune" / "last.pt")["model"]


@pytest.mark.parametrize("interrupt_at", [5, 19])  # mid-epoch in pretraining; in fine-tuning
def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, monkeypatch, interrupt_at):
    full = train_in_process(tmp_path / "full", EXACT)

    with monkeypatch.context() as m:
        _interrupt_after(m, interrupt_at)
        with pytest.raises(Interrupt):
            train_in_process(tmp_path / "cut", EXACT)
    resumed = train_in_process(tmp_path / "cut", EXACT + ["trainer.resume=true"])

    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["test"] == full["test"]


def test_a_fresh_run_never_overwrites_a_run_dir_with_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, TINY + ["stages.pretrain.epochs=0"])
    before = (run_dir / "checkpoints" / "finetune" / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train_in_process(run_dir, TINY)
    assert (run_dir / "checkpoints" / "finetune" / "best.pt").read_bytes() == before


def test_resume_true_in_an_empty_run_dir_starts_from_scratch(tmp_path):
    result = train_in_process(tmp_path / "run", TINY + ["trainer.resume=true", "stages.pretrain.epochs=0"])
    assert result["test"]["accuracy"] > 0
