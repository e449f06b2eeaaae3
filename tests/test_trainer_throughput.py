"""Speed figures in the log; counting FLOPs for MFU leaves the run itself untouched."""

from __future__ import annotations

import json

import mmtrain.engine.trainer as trainer_module
from mmtrain.train import train
from tests.helpers import assert_same_weights, make_config, weights


def test_log_has_throughput_and_mfu_and_flop_counting_changes_no_weight(tmp_path, monkeypatch):
    cfg = ["trainer.deterministic=true"]
    train(make_config(*cfg), tmp_path / "plain")
    # Pretend the CPU is a GPU of the table with a 1 TFLOP/s peak, so MFU is computed.
    monkeypatch.setattr(trainer_module, "peak_flops", lambda device, precision: 1e12)
    train(make_config(*cfg), tmp_path / "mfu")

    rows = [json.loads(line) for line in (tmp_path / "mfu" / "log.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r.get("split") == "train" and r["stage"] == "finetune"]
    for r in train_rows:
        assert r["finetune/train/samples_per_s"] > 0
        assert 0 <= r["finetune/train/data_wait"] < 1
        assert r["finetune/train/peak_mem_gb"] > 0.05
        assert 0 < r["finetune/train/mfu"] < 1
    plain = [json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    assert not any("finetune/train/mfu" in r for r in plain)  # no known peak: no MFU
    # Dropout RNG and BatchNorm statistics are restored after the counting pass.
    for stage in ("pretrain", "finetune"):
        assert_same_weights(weights(tmp_path / "mfu" / "checkpoints" / stage / "last.pt"),
                            weights(tmp_path / "plain" / "checkpoints" / stage / "last.pt"))
