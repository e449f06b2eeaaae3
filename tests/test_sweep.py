"""Sweeps through the installed `mmtrain` command: the summary Hydra's callback leaves in the sweep dir."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY, changed

MMTRAIN = str(Path(sys.executable).parent / "mmtrain")
# Runs that end with the test split and log every step: each job has curves and a test metric to rank by.
SWEPT = changed(TINY, "data.n_train=256", "data.n_val=64", "data.n_test=64", "stages.finetune.epochs=1",
                "model.text_encoder.embed_dim=16", "model.text_encoder.hidden_dim=16",
                "trainer.batch_size=64", "trainer.log_every_n_steps=1", "test=true")


def mmtrain(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # Tiny models gain nothing from threads, and on a CPU shared with other tests, spinning
    # OpenMP threads made these sweeps 2-3x slower.
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([MMTRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_grid_sweep_with_failing_jobs_still_writes_a_summary_ranked_best_first(tmp_path):
    sweep = tmp_path / "sweep"
    # lr=-1 is refused at start: two of the six jobs fail (in their own run dirs), the sweep goes on and then raises.
    out = mmtrain("train", "-m", *SWEPT, "model/fusion=concat,sum",
                  "optimizer.lr=3e-3,1e-3,-1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "a learning rate is >= 0" in out.stderr

    rows = read_csv(sweep / "summary.csv")
    assert list(rows[0])[3:6] == ["model/fusion", "optimizer.lr", "test/accuracy"]
    assert sorted(r["run"] for r in rows) == [str(i) for i in range(6)]
    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(done) == 4 and len(failed) == 2 and rows[:4] == done  # failures listed last
    assert all(r["optimizer.lr"] == "-1" and "a learning rate is >= 0" in r["error"] for r in failed)
    accuracies = [float(r["test/accuracy"]) for r in done]
    assert accuracies == sorted(accuracies, reverse=True) and [r["rank"] for r in done] == ["1", "2", "3", "4"]
    for r in done:  # the table holds each run's own final test metric
        metrics = json.loads((sweep / r["run"] / "metrics.json").read_text())
        assert float(r["test/accuracy"]) == metrics["test"]["accuracy"]
        overrides = yaml.safe_load((sweep / r["run"] / ".hydra" / "overrides.yaml").read_text())
        assert f"model/fusion={r['model/fusion']}" in overrides

    assert "| failed |" in (sweep / "summary.md").read_text()
    plots = sorted(p.name for p in (sweep / "plots").glob("*.png"))
    assert plots == ["curves.png", "param_model_fusion.png", "param_optimizer.lr.png"]

    # The same report from the command line, ranked by another metric into another folder.
    report = mmtrain("report", str(sweep), "--metric", "finetune/best/accuracy", "--out", "again",
                     cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    again = read_csv(tmp_path / "again" / "summary.csv")
    values = [float(r["finetune/best/accuracy"]) for r in again[:4]]
    assert values == sorted(values, reverse=True)
    assert "| rank | run | status |" in report.stdout


@pytest.mark.slow
def test_optuna_search_runs_its_trials_and_prints_the_summary(tmp_path):
    sweep = tmp_path / "optuna"
    out = mmtrain("train", "+hparams_search=synthetic_optuna", "hydra.sweeper.n_trials=3",
                  "hydra.sweeper.sampler.n_startup_trials=2", *SWEPT,
                  f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    # Optuna drew the learning rate and the fusion per trial; the fixed overrides are no columns.
    assert "optimizer.lr" in rows[0] and "model.fusion.dim" not in rows[0]
    assert 3e-4 <= float(rows[0]["optimizer.lr"]) <= 1e-2
    # Optuna's best value is the objective `mmtrain train` returned: the best validation accuracy.
    assert best["best_value"] == max(float(r["finetune/best/accuracy"]) for r in rows)
    assert "sweep summary:" in out.stdout and "| rank | run | status |" in out.stdout
