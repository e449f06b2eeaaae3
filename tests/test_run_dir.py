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
    with pytest.raises(ConfigError, match="fewer than trainer.batch_size=64 x trainer.accumulate_grad_batches=1"):
        train_in_process(tmp_path / "run", TINY + ["data.n_train=10"])


def test_resuming_into_a_new_run_dir_brings_the_best_checkpoints_and_finishes(tmp_path):
    source = tmp_path / "a"
    first = train_in_process(source, TINY)
    before = {p.name: p.read_bytes() for p in (source / "checkpoints" / "finetune").glob("*.pt")}
    # The source's last.pt is at the end of its last stage: the new run tests the same best.pt.
    summary = train_in_process(tmp_path / "b", TINY + [f"trainer.resume={source}"])
    assert (tmp_path / "b" / "checkpoints" / "finetune" / "best.pt").is_file()
    assert summary["test"] == first["test"]
    assert {p.name: p.read_bytes() for p in (source / "checkpoints" / "finetune").glob("*.pt")} == before


def test_resume_refuses_other_data_or_batch_settings(tmp_path):
    from mmtrain.errors import CheckpointError

    source = tmp_path / "a"
    train_in_process(source, TINY + ["stages.finetune.epochs=0"])
    with pytest.raises(CheckpointError, match=r"another config \(1 differences: data.n_train: 512"):
        train_in_process(tmp_path / "b", TINY + ["data.n_train=256", f"trainer.resume={source}"])
    with pytest.raises(CheckpointError, match="trainer.batch_size: 64 in the checkpoint, 32 now"):
        train_in_process(tmp_path / "c", TINY + ["trainer.batch_size=32", f"trainer.resume={source}"])
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_a_refused_start_leaves_the_existing_run_status_alone(tmp_path):
    from tests.conftest import run_cli

    run_dir = tmp_path / "run"
    out = run_cli(["train", *TINY, "stages.pretrain.epochs=0", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr
    status = (run_dir / "status.json").read_text()
    out = run_cli(["train", *TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 2 and "already holds checkpoints" in out.stderr
    assert (run_dir / "status.json").read_text() == status
    assert not (run_dir / "error.txt").exists()


def test_eval_defaults_to_the_precision_and_batch_size_training_used(tmp_path):
    from mmtrain.eval import evaluate_checkpoint

    summary = train_in_process(tmp_path / "run", TINY + ["stages.pretrain.epochs=0",
                                                         "trainer.precision=bf16-mixed"])
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "finetune" / "best.pt", device="cpu")
    assert result["metrics"] == summary["test"]  # bf16 on both sides: the very same figures
    fp32 = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "finetune" / "best.pt", device="cpu",
                               precision="32")
    assert fp32["metrics"]["loss"] != summary["test"]["loss"]
