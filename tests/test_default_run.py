"""`mmtrain train` with no overrides: the README's promise, run as a user would."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


# ~40 s on an idle 2-core CPU; the margin is for a busy CI machine.
@pytest.mark.timeout(900)
def test_default_recipe_fuses_both_modalities_to_over_90_percent_on_held_out_data(tmp_path):
    out = run_cli(["train", "trainer.progress=false"], tmp_path, timeout=850)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "synthetic").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.90, metrics["test"]
    # Pretraining aligned the modalities well above chance (recall@1 chance is 1/500).
    assert metrics["stages"]["pretrain"]["val"]["i2t_r1"] > 0.05
    assert f"run dir: {run_dir}" in out.stdout
