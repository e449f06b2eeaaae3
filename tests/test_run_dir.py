"""Run dirs and resume: nothing overwritten, an empty run dir starts fresh.

Bit-exact resume equivalence is proven in test_trainer_resume.py."""

from __future__ import annotations

import pytest

from mmtrain.errors import ConfigError
from tests.conftest import TINY, train_in_process


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


def test_a_training_split_smaller_than_one_batch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="fewer than trainer.batch_size=64"):
        train_in_process(tmp_path / "run", TINY + ["data.n_train=10"])
