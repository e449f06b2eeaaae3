"""Checkpoints: atomic writes, weights_only loads, clear refusals."""

from __future__ import annotations

import pytest
import torch

from mmtrain.engine.checkpoint import atomic_save, load_checkpoint, load_model_state
from mmtrain.errors import CheckpointError


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format": 1, "model": {"w": torch.ones(3)}}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"format": 1, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_checkpoint_is_refused_with_its_path(tmp_path):
    path = tmp_path / "best.pt"
    atomic_save({"format": 1, "model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}"):
        load_checkpoint(path)


def test_a_foreign_pickle_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"something": "else"}, path)
    with pytest.raises(CheckpointError, match="not an mmtrain checkpoint"):
        load_checkpoint(path)


def test_weights_of_another_model_are_refused_naming_the_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match=r"shape mismatches \(e.g. 0.weight \(5, 4\) vs \(3, 4\)\)"):
        load_model_state(model, {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(3)}, "ckpt.pt")
    with pytest.raises(CheckpointError, match="missing 1 keys"):
        load_model_state(model, {"0.weight": torch.zeros(3, 4)}, "ckpt.pt")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomically_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    import os
    import stat

    from mmtrain.atomic import write_json
    from mmtrain.engine.checkpoint import atomic_copy

    before = os.umask(umask)
    try:
        atomic_save({"format": 1, "model": {}}, tmp_path / "last.pt")
        atomic_copy(tmp_path / "last.pt", tmp_path / "best.pt")
        write_json(tmp_path / "metrics.json", {"a": 1})
    finally:
        os.umask(before)
    for name in ("last.pt", "best.pt", "metrics.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
