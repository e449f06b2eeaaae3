"""Shared by the tests of the trainer: tiny configs composed in-process, and checkpoint reads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mmtrain.config import config_dir, register_schemas
from mmtrain.engine.checkpoint import load_checkpoint

# Widths of 8-16 and 128 samples: a whole two-stage run takes a second or two on a CPU core.
TINY = [
    "data.n_train=128", "data.n_val=32", "data.n_test=32",
    "model.image_encoder.width=8", "model.image_encoder.dim=16",
    "model.text_encoder.embed_dim=8", "model.text_encoder.hidden_dim=8", "model.fusion.dim=16",
    "stages.pretrain.task.embed_dim=16", "stages.finetune.task.hidden_dim=16",
    "stages.pretrain.epochs=1", "stages.finetune.epochs=2",
    "trainer.batch_size=32", "trainer.device=cpu", "trainer.progress=false",
    "trainer.log_every_n_steps=2", "logger.tensorboard=false", "test=false",
]

# No batch statistics (image encoder frozen: BatchNorm in eval mode) and no dropout, so
# the loss is a mean of independent per-sample losses: the setting where splitting a
# batch (accumulation, DDP) must not change the gradient.
PER_SAMPLE = [
    "~stages.pretrain", "stages.finetune.freeze=[image_encoder]",
    "model.fusion.dropout=0.0", "stages.finetune.task.dropout=0.0",
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: a second OpenMP thread only adds waiting
    (measured: 0.2 s with one thread, 7 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(*overrides: str) -> DictConfig:
    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def cli_env() -> dict[str, str]:
    """Environment for `python -m mmtrain` subprocesses: one thread, full tracebacks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("MMTRAIN_RUN_STAMP", None)
    return env


PYTHON = sys.executable
