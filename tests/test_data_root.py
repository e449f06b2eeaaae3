"""A dataset root is only read: training, evaluation and caching leave it byte-identical,
and caches go to the cache dir."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmtrain.data.cache import cache_dir
from tests.data_helpers import FIXTURE_MODEL, coco_fixture, mnist_imdb_fixture
from tests.helpers import compose


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with the hash of its bytes (folders: 'dir')."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def test_a_training_run_and_its_eval_leave_the_mnist_imdb_root_byte_identical(tmp_path, monkeypatch,
                                                                             one_thread):
    from mmtrain.eval import evaluate_checkpoint
    from mmtrain.train import train

    root = mnist_imdb_fixture(tmp_path / "data", n_train=200, n_test=64, n_reviews=40)
    before = tree(root)
    monkeypatch.setenv("MMTRAIN_CACHE", str(tmp_path / "cache"))
    cfg = compose(["+experiment=mnist_imdb", f"data.root={root}", "data.tokenizer_options.max_length=32",
                         "stages.pretrain.epochs=1", "stages.finetune.epochs=1", "trainer.batch_size=32",
                         *FIXTURE_MODEL])
    train(cfg, tmp_path / "run")
    evaluate_checkpoint(tmp_path / "run/checkpoints/finetune/best.pt", device="cpu")
    assert tree(root) == before
    # The tokenizer and the tokens were cached, in the cache dir.
    assert {p.name.split("-")[2] for p in (tmp_path / "cache").glob("imdb-aclimdb-*.pt")} == {
        "tokenizer", "tokens"}


def test_coco_caches_go_to_the_cache_dir_and_the_root_stays_as_it_was(tmp_path):
    from mmtrain.data.coco import build_coco_captions

    root = coco_fixture(tmp_path / "coco", n_train=12, n_val=4)
    before = tree(root)
    build_coco_captions(root=str(root), image_size=16, n_val=2, cache_images=True, cache_workers=0,
                        cache_dir=str(tmp_path / "cache"))
    assert tree(root) == before
    assert len(list((tmp_path / "cache").glob("coco-images-*.npy"))) == 3


def test_the_cache_dir_comes_from_the_config_then_the_environment_then_the_users_cache(tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("MMTRAIN_CACHE", str(tmp_path / "env"))
    assert cache_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert cache_dir(None) == tmp_path / "env"
    monkeypatch.delenv("MMTRAIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir(None) == tmp_path / "xdg" / "mmtrain"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir(None) == tmp_path / "home" / ".cache" / "mmtrain"
