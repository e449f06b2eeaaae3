"""Run dirs and resume: nothing overwritten, an empty run dir starts fresh.

Bit-exact resume equivalence is proven in test_trainer_resume.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.errors import ConfigError
from mmtrain.train import train
from tests.helpers import (TINY, TINY_TESTED, assert_same_weights, cli_env, make_config, mmtrain_exe, run_cli,
                           train_in_process, tree_digest, weights)
from tests.test_trainer_signals import stalled, stop, wait_for


def test_a_fresh_run_never_overwrites_a_run_dir_with_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    train_in_process(run_dir, TINY_TESTED + ["stages.pretrain.epochs=0"])
    before = (run_dir / "checkpoints" / "finetune" / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train_in_process(run_dir, TINY_TESTED)
    assert (run_dir / "checkpoints" / "finetune" / "best.pt").read_bytes() == before


def test_resume_true_in_an_empty_run_dir_starts_from_scratch(tmp_path):
    result = train_in_process(tmp_path / "run", TINY_TESTED + ["trainer.resume=true", "stages.pretrain.epochs=0"])
    assert result["test"]["accuracy"] > 0


def test_a_training_split_smaller_than_one_batch_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="fewer than trainer.batch_size=64 x trainer.accumulate_grad_batches=1"):
        train_in_process(tmp_path / "run", TINY_TESTED + ["data.n_train=10"])


def test_resuming_into_a_new_run_dir_brings_the_best_checkpoints_and_finishes(tmp_path):
    source = tmp_path / "a"
    first = train_in_process(source, TINY_TESTED)
    before = {p.name: p.read_bytes() for p in (source / "checkpoints" / "finetune").glob("*.pt")}
    # The source's last.pt is at the end of its last stage: the new run tests the same best.pt.
    summary = train_in_process(tmp_path / "b", TINY_TESTED + [f"trainer.resume={source}"])
    assert (tmp_path / "b" / "checkpoints" / "finetune" / "best.pt").is_file()
    assert summary["test"] == first["test"]
    assert {p.name: p.read_bytes() for p in (source / "checkpoints" / "finetune").glob("*.pt")} == before


def test_resume_refuses_other_data_or_batch_settings(tmp_path):
    from mmtrain.errors import CheckpointError

    source = tmp_path / "a"
    train_in_process(source, TINY_TESTED + ["stages.finetune.epochs=0"])
    with pytest.raises(CheckpointError, match=r"another config \(1 differences: data.n_train: 512"):
        train_in_process(tmp_path / "b", TINY_TESTED + ["data.n_train=256", f"trainer.resume={source}"])
    with pytest.raises(CheckpointError, match="trainer.batch_size: 64 in the checkpoint, 32 now"):
        train_in_process(tmp_path / "c", TINY_TESTED + ["trainer.batch_size=32", f"trainer.resume={source}"])
    assert not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)  # launches of the CLI: generous for a busy machine
def test_a_refused_start_leaves_every_byte_of_the_existing_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli(["train", *TINY, "stages.finetune.epochs=0", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr
    before = tree_digest(run_dir)
    assert ".hydra/overrides.yaml" in before and "train.log" in before
    # Another config into the same dir, then resumes that would change the model.
    for args in (["stages.finetune.epochs=1"], ["trainer.resume=true", "model.fusion.dim=32"],
                 ["trainer.resume=true", "model/fusion=sum"]):
        out = run_cli(["train", *TINY, *args, f"hydra.run.dir={run_dir}"], tmp_path)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert tree_digest(run_dir) == before, args


@pytest.mark.slow
@pytest.mark.timeout(900)  # launches of the CLI: generous for a busy machine
def test_a_second_writer_is_refused_while_the_first_holds_the_run_dir(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "building-data"
    first = stalled("start-up", marker, [*TINY, f"hydra.run.dir={run_dir}"])
    wait_for(marker, first)  # the first writer holds the lock and is building its data
    before = tree_digest(run_dir)
    out = run_cli(["train", *TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"is being written by another mmtrain process (pid {first.pid})" in out.stderr
    assert out.stderr.strip().endswith("(nothing was written)"), "one line, nothing appended"
    assert tree_digest(run_dir) == before
    stop(first)


@pytest.mark.slow
@pytest.mark.timeout(900)  # launches of the CLI: generous for a busy machine
def test_two_launches_in_the_same_second_get_a_run_dir_each(tmp_path):
    args = ["train", *TINY, "stages.pretrain.epochs=0", "stages.finetune.epochs=0"]
    launches = [subprocess.Popen(mmtrain_exe() + args, cwd=tmp_path, env=cli_env(), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs
    runs = sorted((tmp_path / "outputs" / "synthetic").iterdir())
    assert len(runs) == 2, runs
    assert all(json.loads((r / "status.json").read_text())["status"] == "completed" for r in runs)


def _adopt_and_die(source: str, target: str) -> None:
    """Resume `source` into `target`, SIGKILLed in the middle of copying a checkpoint."""
    import shutil

    def die(dst) -> None:
        dst.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def torn_stream(src, dst, length=0):
        dst.write(src.read(1000))
        die(dst)

    def torn_file(src, dst, **kwargs):
        with open(src, "rb") as f, open(dst, "wb") as out:
            out.write(f.read(1000))
            die(out)

    torch.set_num_threads(1)
    # Whichever way the copy goes (file objects, or copyfile as copytree does).
    shutil.copyfileobj, shutil.copyfile = torn_stream, torn_file
    train(make_config(f"trainer.resume={source}"), Path(target))


def test_a_resume_killed_while_copying_the_source_checkpoints_can_be_retried(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    train(make_config(), source)
    child = multiprocessing.get_context("fork").Process(target=_adopt_and_die, args=(str(source), str(target)))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not list(target.glob("checkpoints/*/*.pt")), "a half-adopted checkpoint is in sight"
    (target / ".status.json.x1y2.tmp").write_text("torn")  # and a status write the kill cut short

    out = run_cli(["train", f"trainer.resume={source}", f"hydra.run.dir={target}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("best.pt", "last.pt"):
        a, b = source / "checkpoints" / "finetune" / name, target / "checkpoints" / "finetune" / name
        assert b.read_bytes() == a.read_bytes(), name  # the source had finished: nothing trained since
    assert not [p for p in target.rglob("*") if p.name.endswith(".tmp")]


def test_eval_defaults_to_the_precision_and_batch_size_training_used(tmp_path):
    from mmtrain.eval import evaluate_checkpoint

    summary = train_in_process(tmp_path / "run", TINY_TESTED + ["stages.pretrain.epochs=0",
                                                         "trainer.precision=bf16-mixed"])
    result = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "finetune" / "best.pt", device="cpu")
    assert result["metrics"] == summary["test"]  # bf16 on both sides: the very same figures
    fp32 = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "finetune" / "best.pt", device="cpu",
                               precision="32")
    assert fp32["metrics"]["loss"] != summary["test"]["loss"]


def test_resuming_a_foreign_run_dir_whose_saved_config_names_other_callables_is_refused(tmp_path):
    # A run dir from elsewhere: its .hydra/config.yaml is what a resume starts from, so it is
    # untrusted input like a checkpoint's config (the checkpoint itself is never read here).
    from omegaconf import OmegaConf

    from tests.helpers import compose

    source = tmp_path / "downloaded_run"
    (source / ".hydra").mkdir(parents=True)
    (source / "checkpoints" / "finetune").mkdir(parents=True)
    (source / "checkpoints" / "finetune" / "last.pt").write_bytes(b"never read")
    victim = tmp_path / "victim"
    saved = OmegaConf.to_container(compose(TINY_TESTED))
    saved["optimizer"] = {"_target_": "os.makedirs", "name": str(victim)}
    (source / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    out = run_cli(["train", f"trainer.resume={source}", f"hydra.run.dir={tmp_path / 'new'}"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    line = out.stderr.strip()
    assert "\n" not in line and "optimizer" in line and "os.makedirs" in line, line
    assert not victim.exists() and not (tmp_path / "new" / "checkpoints").exists()
    assert (source / "checkpoints" / "finetune" / "last.pt").read_bytes() == b"never read"


def test_a_lone_last_pt_resumed_into_a_new_run_dir_ranks_its_stage_afresh(tmp_path):
    """A .pt file on its own comes without the best checkpoints its ranking names: the
    new run ranks only the epochs it validates itself, and still trains exactly on."""
    save_all = ["trainer.deterministic=true", "trainer.checkpoint.every_n_steps=1",
                "trainer.checkpoint.keep_last=99", "trainer.checkpoint.keep_best=2"]
    source = tmp_path / "a"
    train(make_config(*save_all), source)
    lone = tmp_path / "lone.pt"
    # Mid-way through finetune's 2nd epoch: its 1st epoch is ranked (best-epoch001.pt in the source).
    lone.write_bytes((source / "checkpoints" / "finetune" / "step-0000010.pt").read_bytes())
    assert [n for _, n in load_checkpoint(lone)["best"]["top"]] == ["best-epoch001.pt"]

    summary = train(make_config(*save_all, f"trainer.resume={lone}"), tmp_path / "b")
    folder = tmp_path / "b" / "checkpoints" / "finetune"
    assert [n for _, n in summary["stages"]["finetune"]["best"]["top"]] == ["best-epoch002.pt"]
    assert summary["stages"]["finetune"]["best"]["epoch"] == 2
    assert sorted(p.name for p in folder.glob("best*.pt")) == ["best-epoch002.pt", "best.pt"]
    assert_same_weights(weights(folder / "last.pt"), weights(source / "checkpoints" / "finetune" / "last.pt"))
