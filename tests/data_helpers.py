"""Fixture datasets in the official layouts, shared by the test_data_* files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mmtrain.config import register_schemas
from mmtrain.data import fixtures
from mmtrain.train import config_dir

TINY_MODEL = [
    "model.image_encoder.width=8", "model.image_encoder.dim=32",
    "model.text_encoder.embed_dim=16", "model.text_encoder.hidden_dim=32",
    "model.fusion.dim=32", "trainer.progress=false", "logger.tensorboard=false",
]


def compose_train(overrides: list[str]) -> DictConfig:
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def mnist_imdb_fixture(root: Path, n_train: int = 600, n_test: int = 200, n_reviews: int = 120) -> Path:
    fixtures.write_mnist(root, n_train, n_test)
    fixtures.write_imdb(root, n_reviews, n_reviews)
    return root


def coco_fixture(root: Path, n_train: int = 48, n_val: int = 16, year: int = 2017) -> Path:
    fixtures.write_coco(root, n_train, n_val, year=year)
    return root


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin-waiting
    against the other processes (measured: 100x slower steps with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_mmtrain(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 240
                ) -> subprocess.CompletedProcess:
    exe = shutil.which("mmtrain", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "mmtrain"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
