"""Fixture datasets in the official layouts, shared by the test_data_* files."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mmtrain.data import fixtures
from tests.helpers import QUIET, TINY_MODEL, changed, run_cli

# The fixture datasets' experiments, a little wider than TINY: they must learn their targets.
FIXTURE_MODEL = [*changed(TINY_MODEL, "model.image_encoder.dim=32", "model.text_encoder.embed_dim=16",
                          "model.text_encoder.hidden_dim=32", "model.fusion.dim=32"), *QUIET]


def mnist_imdb_fixture(root: Path, n_train: int = 600, n_test: int = 200, n_reviews: int = 120) -> Path:
    fixtures.write_mnist(root, n_train, n_test)
    fixtures.write_imdb(root, n_reviews, n_reviews)
    return root


def coco_fixture(root: Path, n_train: int = 48, n_val: int = 16, year: int = 2017) -> Path:
    fixtures.write_coco(root, n_train, n_val, year=year)
    return root


def run_mmtrain(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 1200
                ) -> subprocess.CompletedProcess:
    """The installed command with one OpenMP thread (tiny models; see tests.helpers.single_thread)."""
    return run_cli(args, cwd, timeout=timeout, env={"OMP_NUM_THREADS": "1", **(env or {})})