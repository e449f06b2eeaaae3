"""Shared helpers: compose the real configs, train tiny models in-process, run the CLI."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mmtrain.config import config_dir, register_schemas

# Tiny models on a shared 2-core machine: a second OpenMP thread per process only adds
# waiting. The trainer's default thread count (trainer.num_threads=null) follows this, in
# process and in the `mmtrain` subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small enough to train in seconds on 2 cores, big enough to learn something.
TINY = [
    "data.n_train=512", "data.n_val=128", "data.n_test=128",
    "model.image_encoder.width=8", "model.image_encoder.dim=32",
    "model.text_encoder.embed_dim=16", "model.text_encoder.hidden_dim=16",
    "model.fusion.dim=32", "stages.pretrain.epochs=1", "stages.finetune.epochs=1",
    "trainer.batch_size=64", "trainer.progress=false", "logger.tensorboard=false",
]


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides or []))


def train_in_process(run_dir: Path, overrides: list[str] | None = None) -> dict:
    from mmtrain.train import train

    return train(compose_train(overrides), run_dir)


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


@pytest.fixture(autouse=True, scope="session")
def _cache_dir_of_this_session(tmp_path_factory):
    """Dataset caches (tokenizers, tokens, resized images) go to a folder of this test session,
    in this process and in the CLI subprocesses, not into the user's ~/.cache/mmtrain."""
    before = os.environ.get("MMTRAIN_CACHE")
    os.environ["MMTRAIN_CACHE"] = str(tmp_path_factory.mktemp("mmtrain_cache"))
    yield
    if before is None:
        os.environ.pop("MMTRAIN_CACHE", None)
    else:
        os.environ["MMTRAIN_CACHE"] = before


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def coco_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(best.pt of a tiny CLIP-style model, the COCO fixture it was trained on), trained once
    for the predict, embed/search and export tests; they only read both."""
    from tests.inference_helpers import train_coco_clip

    return train_coco_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def synthetic_classifier(tmp_path_factory) -> Path:
    """best.pt of a classification stage trained for seconds on the synthetic set."""
    from tests.inference_helpers import train
    from tests.trainer_utils import TINY as TINY_RUN

    run = train(tmp_path_factory.mktemp("classifier") / "run", [*TINY_RUN, "~stages.pretrain"])
    return run / "checkpoints/finetune/best.pt"
