"""fp16 GradScaler state survives a resume; a compiled model's checkpoint loads uncompiled;
bf16 asked of a GPU without it is refused at start."""

from __future__ import annotations

import shutil

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.engine import precision
from mmtrain.engine.optimizer import build_optimizer
from mmtrain.errors import ConfigError
from mmtrain.eval import evaluate_checkpoint
from mmtrain.train import train
from tests.helpers import PER_SAMPLE, assert_same_weights, make_config, weights


def test_fp16_scaler_state_round_trips_through_resume(tmp_path):
    fp16 = [*PER_SAMPLE, "trainer.precision=fp16-mixed", "trainer.deterministic=true",
            "trainer.checkpoint.every_n_steps=1", "trainer.checkpoint.keep_last=99"]
    train(make_config(*fp16), tmp_path / "full")
    folder = tmp_path / "full" / "checkpoints" / "finetune"
    snapshot = load_checkpoint(folder / "step-0000003.pt")
    # The scaler counts successful steps towards its next growth: that counter must survive.
    assert snapshot["scaler"]["_growth_tracker"] == 3 and snapshot["scaler"]["scale"] > 1

    resumed = tmp_path / "resumed" / "checkpoints" / "finetune"
    resumed.mkdir(parents=True)
    shutil.copy(folder / "step-0000003.pt", resumed / "last.pt")
    train(make_config(*fp16, "trainer.resume=true"), tmp_path / "resumed")
    end, reference = load_checkpoint(resumed / "last.pt"), load_checkpoint(folder / "last.pt")
    assert end["scaler"] == reference["scaler"] and end["scaler"]["_growth_tracker"] == 8
    assert_same_weights(end["model"], reference["model"])


def test_compiled_model_checkpoint_loads_without_compile(tmp_path):
    # aot_eager traces with dynamo and AOTAutograd like inductor does, but needs no C
    # compiler and compiles in seconds rather than a minute on a small CPU.
    train(make_config(*PER_SAMPLE, "trainer.compile=true", "trainer.compile_backend=aot_eager",
                      "stages.finetune.epochs=1"), tmp_path)
    best = tmp_path / "checkpoints" / "finetune" / "best.pt"
    assert not [k for k in weights(best) if "_orig_mod" in k]
    result = evaluate_checkpoint(best, split="val")
    assert result["metrics"]["accuracy"] == load_checkpoint(best)["metrics"]["accuracy"]


def test_adamw_uses_its_fused_kernel_on_cuda_only():
    cfg = make_config()
    model = torch.nn.Linear(4, 2)
    # torch's fused AdamW also runs on CPU tensors, so the CUDA choice can be checked here.
    assert build_optimizer(cfg.optimizer, model, device=torch.device("cuda")).defaults["fused"] is True
    assert not build_optimizer(cfg.optimizer, model, device=torch.device("cpu")).defaults["fused"]


def test_bf16_on_a_gpu_without_it_is_refused_at_start_before_any_data_is_read(tmp_path, monkeypatch):
    # An older GPU, faked: resolve_device hands out a cuda device that has no bf16.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert precision.resolve_precision("auto", torch.device("cuda")) == "32"
    monkeypatch.setattr(precision, "resolve_device", lambda name: torch.device("cuda"))

    def read(*args, **kwargs):
        raise AssertionError("the data was read before the precision was checked")

    monkeypatch.setattr("mmtrain.build.build_data", read)
    with pytest.raises(ConfigError, match="precision=bf16-mixed needs a GPU with bf16"):
        train(make_config("trainer.precision=bf16-mixed"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()
