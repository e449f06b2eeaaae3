"""What a run says while it runs (a line per stage start and per epoch, a labelled final
table), what metrics.json names, early stopping (exact across a resume) and +debug=fast."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.engine.threads import default_num_threads
from mmtrain.errors import ConfigError
from mmtrain.train import print_summary, train
from tests.helpers import assert_same_weights, make_config, weights

# 4 steps an epoch. min_delta=1.0: no accuracy change counts as an improvement after the
# first epoch, so patience=2 stops the 6-epoch stage at epoch 3, deterministically.
EARLY_STOP = ["stages.finetune.epochs=6", "stages.finetune.patience=2", "stages.finetune.min_delta=1.0",
              "trainer.deterministic=true", "trainer.checkpoint.every_n_steps=1",
              "trainer.checkpoint.keep_last=99"]


def _lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


def test_each_stage_and_epoch_gets_one_line_and_the_table_labels_every_figure(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="mmtrain")
    summary = train(make_config("test=true", "stages.finetune.freeze=[image_encoder]",
                                "+stages.finetune.lr_scale={text_encoder: 0.1}"), tmp_path)

    starts = _lines(caplog, "starts: task")
    assert len(starts) == 2
    assert "[finetune] stage 2/2 starts: task ClassificationTask, 2 epochs x 4 steps x 32 samples" in starts[1]
    assert "frozen: image_encoder" in starts[1] and "lr 0.0020 (text_encoder x0.1)" in starts[1] and "monitor accuracy (max)" in starts[1]
    epochs = _lines(caplog, "] epoch ")
    assert [line.split(" | ")[0] for line in epochs] == ["[pretrain] epoch 1/1", "[finetune] epoch 1/2",
                                                          "[finetune] epoch 2/2"]
    first, second = epochs[1], epochs[2]
    val = summary["stages"]["finetune"]["val"]
    assert f"val accuracy {val['accuracy']:.4f}" in second  # the monitor first, the figure logged
    assert "train loss " in first and "samples/s" in first and "elapsed, stage ETA 0:00:" in first
    assert "accuracy improved, best so far" in first  # the first validation is always the best so far
    best = summary["stages"]["finetune"]["best"]
    improved = best["epoch"] == 2
    assert ("accuracy improved" in second) == improved, second
    assert _lines(caplog, "finished in ") and "test accuracy" in _lines(caplog, "finished in ")[0]

    # The final table says where each figure comes from: split, epoch, checkpoint.
    out = capsys.readouterr().out
    assert "finetune/val (last epoch 2" in out and "test (finetune/best.pt, epoch " in out
    if not improved:
        assert re.search(rf"finetune/val \(best, epoch {best['epoch']}\)\s+accuracy\s+{best['value']:.4f}", out)


def test_metrics_json_names_checkpoints_that_exist(tmp_path):
    train(make_config("test=true"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for stage in ("pretrain", "finetune"):
        best = metrics["stages"][stage]["best"]
        assert Path(best["checkpoint"]).is_file()
        folder = tmp_path / "checkpoints" / stage
        assert all((folder / name).is_file() for _, name in best["top"]), best["top"]  # keep_best=1: best.pt
        assert best["metrics"][best["metric"]] == best["value"]
    assert Path(metrics["test_checkpoint"]).is_file()


def test_early_stopping_ends_the_stage_and_survives_a_resume_exactly(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mmtrain")
    reference = tmp_path / "reference"
    summary = train(make_config(*EARLY_STOP), reference)
    finetune = summary["stages"]["finetune"]
    assert finetune["last_epoch"] == 3 and finetune["best"]["stopped_epoch"] == 3
    assert "[finetune] early stop at epoch 3/6: accuracy has not improved for 2 epochs" in \
        _lines(caplog, "early stop at")[0]
    last = load_checkpoint(reference / "checkpoints" / "finetune" / "last.pt")
    assert last["position"]["epoch"] == 6  # saved as finished: a resume goes on, not back in

    # Resumed after epoch 2 (one epoch without improvement already counted): stops at 3 too.
    snapshot = reference / "checkpoints" / "finetune" / "step-0000012.pt"
    assert load_checkpoint(snapshot)["position"]["epoch"] == 2
    run = tmp_path / "resumed"
    (run / "checkpoints" / "finetune").mkdir(parents=True)
    shutil.copy(snapshot, run / "checkpoints" / "finetune" / "last.pt")
    resumed = train(make_config(*EARLY_STOP, "trainer.resume=true"), run)
    assert resumed["stages"]["finetune"]["last_epoch"] == 3
    assert_same_weights(weights(run / "checkpoints" / "finetune" / "last.pt"),
                        weights(reference / "checkpoints" / "finetune" / "last.pt"))
    assert load_checkpoint(run / "checkpoints" / "finetune" / "last.pt")["position"] == last["position"]


@pytest.mark.parametrize("override, message", [
    ("stages.finetune.patience=0", "stages.finetune.patience=0 must be >= 1"),
    ("stages.finetune.min_delta=-1", "stages.finetune.min_delta=-1.0 must be >= 0"),
    ("trainer.num_threads=0", "trainer.num_threads=0 must be >= 1"),
])
def test_bad_early_stop_and_thread_settings_are_refused_at_start(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train(make_config(override), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_debug_fast_runs_one_epoch_of_a_few_batches_per_stage(tmp_path):
    cfg = make_config("+debug=fast", "data.n_train=512", "test=true", "stages.finetune.epochs=5")
    assert cfg.trainer.num_workers == 0
    summary = train(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    # 512 samples / 32 would be 16 steps an epoch: 4 per stage, one epoch each.
    assert [(r["stage"], r["step"]) for r in train_rows][-1] == ("finetune", 8)
    assert {r["epoch"] for r in rows} == {1}
    assert summary["stages"]["finetune"]["last_epoch"] == 1 and "accuracy" in summary["test"]


def test_default_threads_follow_omp_num_threads_then_the_affinity_mask(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two processes share the four cores
    assert default_num_threads() == 2


def test_the_table_of_a_run_without_test_still_labels_the_validation_figures(capsys):
    summary = {"run_dir": "r", "stages": {"finetune": {
        "val": {"accuracy": 0.5}, "last_epoch": 3,
        "best": {"metric": "accuracy", "value": 0.6, "epoch": 2, "metrics": {"accuracy": 0.6}}}}}
    print_summary(summary)
    out = capsys.readouterr().out
    assert re.search(r"finetune/val \(last epoch 3\)\s+accuracy\s+0\.5000", out)
    assert re.search(r"finetune/val \(best, epoch 2\)\s+accuracy\s+0\.6000", out)
