"""`mmtrain train` with the default recipe, run as a user would, on a fifth of the data.

What this proves is that the installed command learns through the whole path (both stages,
the test on best.pt) and tells its story on the console and in train.log. The full default
run's accuracy and wall clock are a benchmark, not a test: scripts/bench_default_run.py,
with its figure in the README.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli


@pytest.mark.slow
def test_default_recipe_learns_on_a_fifth_of_the_data_and_logs_every_epoch(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli(["train", "data.n_train=2000", "trainer.progress=false", "logger.tensorboard=false",
                   f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Chance is 1/3 (three shapes); 2000 samples and the default 2 + 8 epochs reach ~0.65.
    assert metrics["test"]["accuracy"] > 0.5, metrics["test"]
    # Pretraining aligned the modalities well above chance (recall@1 chance is 1/500).
    assert metrics["stages"]["pretrain"]["val"]["i2t_r1"] > 0.01
    log = (run_dir / "train.log").read_text()
    for epoch in range(1, 9):
        assert f"[finetune] epoch {epoch}/8 | train loss " in log
        assert f"[finetune] epoch {epoch}/8 | train loss " in out.stdout  # the console too
    assert "[pretrain] stage 1/2 starts: task ContrastiveTask, 2 epochs" in log
    assert "finished in " in log and f"run dir: {run_dir}" in out.stdout
