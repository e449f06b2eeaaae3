"""Fixtures of every test: one thread, a cache dir of the session, tiny trained checkpoints
(the helpers they and the tests use are in tests/helpers.py)."""

from __future__ import annotations

import gc
import multiprocessing
import os
import warnings
from pathlib import Path

import pytest

# Tiny models on a shared 2-core machine: a second OpenMP thread per process only adds
# waiting. The trainer's default thread count (trainer.num_threads=null) follows this, in
# process and in the `mmtrain` subprocesses the tests start. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.helpers import single_thread  # noqa: E402


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


@pytest.fixture(autouse=True)
def one_thread():
    """Every test on one thread (see tests.helpers.single_thread)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def coco_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(best.pt of a tiny CLIP-style model, the COCO fixture it was trained on), trained once
    for the predict, embed/search and export tests; they only read both."""
    from tests.inference_helpers import train_coco_clip

    return train_coco_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def synthetic_classifier(tmp_path_factory) -> Path:
    """best.pt of a classification stage trained for seconds on the synthetic set."""
    from tests.helpers import TINY
    from tests.inference_helpers import train

    run = train(tmp_path_factory.mktemp("classifier") / "run", [*TINY, "~stages.pretrain"])
    return run / "checkpoints/finetune/best.pt"


@pytest.fixture(autouse=True)
def _no_process_left_running():
    """A child process a test leaves running would make multiprocessing's exit hook wait for
    it forever (the suite passed, then never exited): name the test that left it."""
    before = {p.pid for p in multiprocessing.active_children()}
    yield
    left = [p for p in multiprocessing.active_children() if p.pid not in before]
    if left:  # an iterator in a reference cycle (an exception's traceback) ends its workers when collected
        gc.collect()
        left = [p for p in multiprocessing.active_children() if p.pid not in before]
    if left:  # a warning: the summary shows it, from pytest-xdist's workers too
        warnings.warn(f"left child processes running (killed at exit): {', '.join(p.name for p in left)}")


def pytest_unconfigure(config):
    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=10)
