"""The `logger` group: metrics.csv always; TensorBoard with the config, the test metrics, the
HParams of the run and its artifacts; W&B and MLflow in their offline modes."""

from __future__ import annotations

import csv
import json

import pytest

from mmtrain.train import train
from tests.helpers import make_config


def test_csv_and_tensorboard_hold_what_a_sweep_is_compared_by(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = train(make_config("test=true", "logger.tensorboard=true", "optimizer.lr=0.003"), tmp_path)

    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    val = [r for r in rows if r["metric"] == "finetune/val/accuracy"]
    assert [r["epoch"] for r in val] == ["1", "2"] and all(r["split"] == "val" for r in val)
    assert float(val[-1]["value"]) == pytest.approx(summary["stages"]["finetune"]["val"]["accuracy"])

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"finetune/train/loss", "finetune/val/accuracy"} <= set(tags["scalars"])
    test_acc = events.Scalars("final/test/accuracy")[-1].value
    assert test_acc == pytest.approx(summary["test"]["accuracy"])
    assert events.Scalars("final/finetune/best_accuracy")[-1].value == \
        pytest.approx(summary["stages"]["finetune"]["best"]["value"])
    assert "artifacts/classification_confusion" in tags["images"]
    text = {t for t in tags["tensors"]}
    assert "config/text_summary" in text
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "lr: 0.003" in config_text
    # The HParams plugin: the run's hyperparameters (here lr) and the metrics it compares.
    plugin = events.PluginTagToContent("hparams")
    session = next(v for k, v in plugin.items() if "session_start" in k)
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(session)
    assert data.session_start_info.hparams["optimizer.lr"].number_value == pytest.approx(0.003)
    assert data.session_start_info.hparams["model/fusion"].string_value == "ConcatFusion"


def _leveldb_log_payload(raw: bytes, header: int = 7, block: int = 32768) -> bytes:
    """The records of a W&B run file joined: it is a LevelDB log (7-byte file header, 32 KiB
    blocks, each record fragment behind a 7-byte crc/length/type header), so a record may
    be split across blocks."""
    out, pos = bytearray(), header
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        length = int.from_bytes(raw[pos + 4:pos + 6], "little")
        out += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
    return bytes(out)


def test_weights_and_biases_logs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    summary = train(make_config("logger=wandb", "logger.tensorboard=false", "test=true"), tmp_path)
    import wandb

    wandb.teardown()  # what a process exit does: the service writes out what it still holds
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = run.glob("run-*.wandb")  # what `wandb sync` uploads: protobuf records
    data = _leveldb_log_payload(records.read_bytes())
    # Each logged value is stored as its key followed by the value's JSON.
    at = data.find(b"final/test/accuracy")
    assert at >= 0 and json.dumps(summary["test"]["accuracy"]).encode() in data[at:at + 64]
    assert b"finetune/val/accuracy" in data and b"ConcatFusion" in data  # scalars, config


def test_mlflow_logs_to_a_local_file_store(tmp_path):
    pytest.importorskip("mlflow")
    store = (tmp_path / "mlruns").as_uri()
    summary = train(make_config("logger=mlflow", "logger.tensorboard=false", "test=true",
                                f"logger.mlflow.tracking_uri={store}", "optimizer.lr=0.003"), tmp_path / "run")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("synthetic")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["final/test/accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert run.data.params["optimizer.lr"] == "0.003"
    history = client.get_metric_history(run.info.run_id, "finetune/val/accuracy")
    assert len(history) == 2
    assert run.info.status == "FINISHED"
