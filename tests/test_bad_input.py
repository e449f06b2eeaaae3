"""Bad values and bad files: one line naming the key or the file, exit 2, caught at the edge."""

from __future__ import annotations

import errno
import gc
import gzip
import json
import multiprocessing
import os
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from mmtrain.cli import _report
from mmtrain.config import check_train_config
from mmtrain.engine.checkpoint import atomic_save, load_checkpoint
from mmtrain.errors import CheckpointError, ConfigError, DataError, StorageError
from tests.helpers import TINY_TESTED, compose, run_cli, train_in_process
from tests.data_helpers import coco_fixture


@pytest.mark.parametrize("override, message", [
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0: the largest gradient norm kept is > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan: a learning rate is >= 0 and finite"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1: a learning rate"),
    ("stages.finetune.lr=-1", "stages.finetune.lr=-1.0: a learning rate"),
    ("optimizer.weight_decay=-0.01", "optimizer.weight_decay=-0.01: weight decay is >= 0"),
    ("stages.finetune.task.label_smoothing=1.0", "stages.finetune.task.label_smoothing=1.0: label smoothing is in [0, 1)"),
    ("stages.finetune.task.label_smoothing=-0.1", "label_smoothing=-0.1"),
    ("seed=-1", "seed=-1: a seed is an integer in [0, 2**32)"),
])
def test_a_value_torch_would_misuse_or_refuse_late_is_refused_at_start_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        check_train_config(compose(TINY_TESTED + [override]))
    assert message in str(err.value)


def test_a_negative_grad_clip_stops_the_cli_before_any_data_is_built(tmp_path):
    out = run_cli(["train", *TINY_TESTED, "trainer.grad_clip=-1", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "mmtrain: error: trainer.grad_clip=-1.0: the largest gradient norm kept is > 0 and finite "
        "(null: no clipping)"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _coco_doc(root: Path) -> tuple[Path, dict]:
    path = root / "annotations" / "captions_train2017.json"
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("spoil, what", [
    (lambda ann: ann.update(caption=None), "has caption None, not text"),
    (lambda ann: ann.pop("caption"), "has no caption"),
])
def test_a_coco_annotation_without_a_caption_is_named_by_file_and_id(tmp_path, spoil, what):
    from mmtrain.data.coco import build_coco_captions

    root = coco_fixture(tmp_path / "coco", n_train=8, n_val=4)
    path, doc = _coco_doc(root)
    spoil(doc["annotations"][3])
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        build_coco_captions(root=str(root), image_size=16, n_val=2)
    assert str(err.value) == (f"COCO file {path}: annotation id {doc['annotations'][3]['id']} {what}: "
                              f"fix or remove that annotation")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels: Pillow judges a bomb by the header alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_a_decompression_bomb_in_a_loader_worker_reaches_the_user_as_one_line_naming_it(tmp_path, capsys):
    from mmtrain.data.coco import build_coco_captions
    from mmtrain.data.loader import make_loader

    root = coco_fixture(tmp_path / "coco", n_train=8, n_val=4)
    bundle = build_coco_captions(root=str(root), image_size=16, n_val=2)
    victim = Path(bundle.train.images.paths[0])
    _png_header_only(victim, 30000, 30000)  # 900 M pixels: over twice Pillow's limit
    loader = make_loader(bundle.train, 4, train=False, num_workers=1, device=torch.device("cpu"))
    with pytest.raises(DataError) as err:
        next(iter(loader))
    assert _report(err.value) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmtrain: error: image {victim} is refused as a "
                                                   f"possible decompression bomb")
    assert "Traceback" not in lines[0] and "worker" not in lines[0]
    # The worker that raised does not outlive its iterator: torch's shutdown had left it
    # waiting for work, and a process exit waiting for it (it ignores SIGTERM) forever.
    del loader, err
    gc.collect()
    assert not multiprocessing.active_children()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("adamw") / "run"
    train_in_process(run, TINY_TESTED + ["data.n_train=128", "stages.pretrain.epochs=0"])
    return run


def test_resuming_with_an_optimizer_of_another_kind_is_refused_before_anything_is_copied(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match=r"optimizer._target_: 'torch.optim.AdamW' in the checkpoint, "
                                              r"'torch.optim.SGD' now"):
        train_in_process(tmp_path / "b", TINY_TESTED + ["data.n_train=128", "stages.pretrain.epochs=0",
                                                 "optimizer=sgd", f"trainer.resume={run_dir}"])
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_a_checkpoint_without_a_tokenizer_is_refused_in_one_line(run_dir, tmp_path):
    from mmtrain.eval import evaluate_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoints" / "finetune" / "best.pt")
    del ckpt["tokenizer"]
    path = tmp_path / "no_tokenizer.pt"
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"{path} holds no tokenizer"):
        evaluate_checkpoint(path, device="cpu")
    ckpt["tokenizer"] = '{"tokenizer": "not json", "max_length": 4}'
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"{path}: its tokenizer cannot be read"):
        evaluate_checkpoint(path, device="cpu")


def test_a_checkpoint_whose_config_lacks_a_section_is_refused_in_one_line(run_dir, tmp_path):
    from mmtrain.eval import evaluate_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoints" / "finetune" / "best.pt")
    ckpt["config"]["model"] = 5
    path = tmp_path / "no_model.pt"
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"{path}: its config has no 'model' section"):
        evaluate_checkpoint(path, device="cpu")


def test_eval_of_a_run_whose_saved_config_is_malformed_is_one_line(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / ".hydra").mkdir(exist_ok=True)
    (copy / ".hydra" / "config.yaml").write_text("stages: [unclosed\n")
    out = run_cli(["eval", f"run={copy}"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mmtrain: error: {copy / '.hydra' / 'config.yaml'} is malformed (ParserError): pass the "
        f"checkpoint itself with ckpt="]


def test_a_full_disk_is_one_line_naming_the_file_and_the_previous_file_survives(tmp_path, monkeypatch):
    import mmtrain.atomic

    path = tmp_path / "last.pt"
    atomic_save({"format": 1, "model": {"w": torch.ones(3)}}, path)
    real_fdopen = os.fdopen
    # /dev/full fails every write with ENOSPC, as a full disk does (torch.save hides it in a RuntimeError).
    monkeypatch.setattr(mmtrain.atomic.os, "fdopen", lambda fd, mode: (os.close(fd), open("/dev/full", mode))[1])
    with pytest.raises(StorageError) as err:
        atomic_save({"format": 1, "model": {"w": torch.zeros(100_000)}}, path)
    monkeypatch.setattr(mmtrain.atomic.os, "fdopen", real_fdopen)
    assert str(err.value).startswith(f"no space left on device writing {path}")
    assert _report(err.value) == 2
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_full_disk_outside_the_atomic_writers_is_still_one_line_and_exit_2(capsys):
    error = OSError(errno.ENOSPC, "No space left on device", "/runs/a/log.jsonl")
    assert _report(error) == 2
    assert capsys.readouterr().err == ("mmtrain: error: no space left on device writing /runs/a/log.jsonl: "
                                       "free some space and run again\n")


def test_a_malformed_zip_member_is_named_in_one_line(tmp_path):
    from mmtrain.data.download import extract

    archive = tmp_path / "val2017.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("val2017/ok.txt", "fine")
        zf.writestr("val2017/broken.txt", "hello world " * 1000)
    data = bytearray(archive.read_bytes())
    start = data.find(b"val2017/broken.txt") + len("val2017/broken.txt")
    data[start + 10: start + 40] = b"\xff" * 30  # inside the member's deflated bytes
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{archive}: member val2017/broken.txt is malformed"):
        extract(archive, tmp_path / "out")


def test_a_truncated_gz_leaves_no_temp_file_where_it_was_extracted(tmp_path):
    from mmtrain.data.download import extract

    archive = tmp_path / "t10k-labels-idx1-ubyte.gz"
    archive.write_bytes(gzip.compress(os.urandom(10_000))[:2000])
    with pytest.raises(DataError, match="is not a readable archive"):
        extract(archive, tmp_path / "raw")
    assert list((tmp_path / "raw").iterdir()) == []


@pytest.mark.parametrize("flag", ["--n-train", "--n-test"])
def test_synth_refuses_a_negative_size_before_writing(tmp_path, flag):
    out = run_cli(["data", "synth", "mnist_imdb", "--out", str(tmp_path / "data"), flag, "-5"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"mmtrain: error: {flag} -5: give at least 1 (nothing was written)"]
    assert not (tmp_path / "data").exists()
