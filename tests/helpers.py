"""What the tests share: the tiny-config overrides, one thread per test, composing the
repo's configs, training in-process, running the installed command, and checkpoint reads."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch
from omegaconf import DictConfig

from mmtrain.config import compose_config, config_dir
from mmtrain.engine.checkpoint import load_checkpoint

QUIET = ["trainer.progress=false", "logger.tensorboard=false"]

# Widths of 8-16 and 128 samples: a whole two-stage run takes a second or two on a CPU core.
TINY_MODEL = [
    "model.image_encoder.width=8", "model.image_encoder.dim=16",
    "model.text_encoder.embed_dim=8", "model.text_encoder.hidden_dim=8", "model.fusion.dim=16",
]
TINY = [
    "data.n_train=128", "data.n_val=32", "data.n_test=32", *TINY_MODEL,
    "stages.pretrain.task.embed_dim=16", "stages.finetune.task.hidden_dim=16",
    "stages.pretrain.epochs=1", "stages.finetune.epochs=2",
    "trainer.batch_size=32", "trainer.device=cpu", *QUIET,
    "trainer.log_every_n_steps=2", "test=false",
]


def changed(base: Sequence[str], *changes: str) -> list[str]:
    """`base` with each of `changes` in place of the override of the same key (or added):
    the variants of TINY say only how they differ."""
    keys = {c.split("=", 1)[0].lstrip("+~") for c in changes}
    return [o for o in base if o.split("=", 1)[0].lstrip("+~") not in keys] + list(changes)


# Runs that end with the test split, on 512 samples and wider layers: big enough to learn something.
TINY_TESTED = changed(TINY, "data.n_train=512", "data.n_val=128", "data.n_test=128",
                      "model.image_encoder.dim=32", "model.text_encoder.embed_dim=16",
                      "model.text_encoder.hidden_dim=16", "model.fusion.dim=32",
                      "stages.finetune.epochs=1", "trainer.batch_size=64", "test=true")

# No batch statistics (image encoder frozen: BatchNorm in eval mode) and no dropout, so
# the loss is a mean of independent per-sample losses: the setting where splitting a
# batch (accumulation, DDP) must not change the gradient.
PER_SAMPLE = [
    "~stages.pretrain", "stages.finetune.freeze=[image_encoder]",
    "model.fusion.dropout=0.0", "stages.finetune.task.dropout=0.0",
]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: a second OpenMP thread only adds waiting
    (measured: 0.2 s with one thread, 7 s with two under load). conftest applies it to
    every test; session fixtures that train call it themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """A config of the repo's conf/ as the CLI composes it."""
    return compose_config(config_name, overrides)


def choices(group: str) -> list[str]:
    """Every choice of a config group, read from conf/ (so a new YAML is tested automatically)."""
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def make_config(*overrides: str) -> DictConfig:
    """The train config at TINY size with `overrides`."""
    return compose([*TINY, *overrides])


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


def train_in_process(run_dir: Path, overrides: list[str] | None = None) -> dict:
    from mmtrain.train import train

    return train(compose(list(overrides or [])), run_dir)


def mmtrain_exe() -> list[str]:
    """The installed console script (falls back to `python -m mmtrain` if it is not on PATH)."""
    exe = shutil.which("mmtrain", path=str(Path(sys.executable).parent)) or shutil.which("mmtrain")
    return [exe] if exe else [sys.executable, "-m", "mmtrain"]


def run_cli(args: list[str], cwd: Path, timeout: int = 1200, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """The installed command; `timeout` only guards against a hang, never a slow machine."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(mmtrain_exe() + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones included) -> the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
