"""torchrun with 2 CPU processes (gloo) matches 1 process with the same global batch."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from mmtrain.train import train
from tests.helpers import PER_SAMPLE, PYTHON, TINY, cli_env, make_config, weights

# Per-sample losses and plain SGD (see test_trainer_accumulation.py): splitting the batch
# over ranks must not change the update. The 2-process run also accumulates 2 micro-batches,
# so the no_sync path is part of the comparison: 2 ranks x 8 x 2 = 32 = 1 process x 32.
SGD = [*PER_SAMPLE, "optimizer=sgd", "trainer.grad_clip=null"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mmtrain", "train", *TINY, *SGD, "name=ddp", "test=true",
           "trainer.batch_size=8", "trainer.accumulate_grad_batches=2"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "ddp").iterdir())
    assert len(runs) == 1, f"ranks wrote {len(runs)} run dirs: {runs}"  # Hydra issue 2070
    ddp = runs[0]
    train(make_config(*SGD, "trainer.batch_size=32"), tmp_path / "single")

    a = weights(tmp_path / "single" / "checkpoints" / "finetune" / "last.pt")
    b = weights(ddp / "checkpoints" / "finetune" / "last.pt")
    for k in a:
        # Tolerance: the all-reduce sums two half-batch gradients in another order than one
        # process does; after 8 SGD steps the weights agree to float32 rounding (< 1e-5).
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    logged = [json.loads(line) for line in (ddp / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in logged if r.get("split") == "train"]
    assert train_steps == sorted(set(train_steps)), "a step was logged twice: only rank 0 logs"
    assert "finetune/train/samples_per_s" in logged[0]
    assert json.loads((ddp / "metrics.json").read_text())["test"]["accuracy"] >= 0


@pytest.mark.slow
def test_two_gloo_processes_with_the_feature_cache_match_one_contrastive_batch(tmp_path):
    # The contrastive loss couples the samples: 2 ranks x 2 micro-batches of 8 give the step of
    # one batch of 32 only when the cache gathers every rank's and micro-batch's embeddings.
    alone = ["~stages.finetune", "stages.pretrain.freeze=[image_encoder]", "stages.pretrain.epochs=2",
             "optimizer=sgd", "trainer.grad_clip=null"]
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mmtrain", "train", *TINY, *alone, "name=ddp", "trainer.batch_size=8",
           "trainer.accumulate_grad_batches=2", "trainer.contrastive_accumulation=cache"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    (ddp,) = (tmp_path / "outputs" / "ddp").iterdir()
    train(make_config(*alone, "trainer.batch_size=32"), tmp_path / "single")
    a = weights(tmp_path / "single" / "checkpoints" / "pretrain" / "last.pt")
    b = weights(ddp / "checkpoints" / "pretrain" / "last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
