"""Gradient accumulation: N micro-batches of B take the step one batch of N*B takes."""

from __future__ import annotations

import contextlib

import torch

from mmtrain import data as data_lib
from mmtrain.data.batch import collate
from mmtrain.models.model import build_model
from mmtrain.build import build_tasks
from mmtrain.train import train
from tests.helpers import PER_SAMPLE, make_config, weights


# SGD without clipping: an update proportional to the gradient, so a wrongly scaled
# accumulated gradient shows (Adam would normalise it away).
SGD = [*PER_SAMPLE, "optimizer=sgd", "trainer.grad_clip=null"]


def test_two_micro_batches_of_16_equal_one_batch_of_32(tmp_path):
    train(make_config(*SGD, "trainer.batch_size=32"), tmp_path / "one")
    train(make_config(*SGD, "trainer.batch_size=16", "trainer.accumulate_grad_batches=2"), tmp_path / "two")
    a = weights(tmp_path / "one" / "checkpoints" / "finetune" / "last.pt")
    b = weights(tmp_path / "two" / "checkpoints" / "finetune" / "last.pt")
    moved = weights(tmp_path / "one" / "checkpoints" / "finetune" / "best.pt")
    for k in a:
        # Same maths, different summation order: equal to float rounding, after 8 SGD steps.
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)
    assert any(not torch.equal(moved[k], a[k]) for k in a)  # it did train between the two


def _contrastive_setup():
    cfg = make_config()
    bundle = data_lib.build(cfg.data)
    model = build_model(cfg.model, bundle.info)
    task = build_tasks(cfg, model, bundle.info)[0].task
    model.eval()  # no dropout, BatchNorm on running statistics: samples are independent
    batch = collate(bundle.train.__getitems__(list(range(16))))
    return model, task, batch


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_feature_cache_gives_the_full_batch_contrastive_gradient():
    model, task, batch = _contrastive_setup()
    task.training_step(model, batch)["loss"].backward()
    full = _grads(model)
    halves = [{k: v[:8] for k, v in batch.items()}, {k: v[8:] for k, v in batch.items()}]
    out = task.cached_backward(model, halves, contextlib.nullcontext, lambda loss: loss)
    cached = _grads(model)
    assert full.keys() == cached.keys()
    for k in full:
        torch.testing.assert_close(cached[k], full[k], rtol=1e-4, atol=1e-6, msg=k)
    # Plain accumulation sees only each half's negatives: a different gradient.
    for half in halves:
        (task.training_step(model, half)["loss"] / 2).backward()
    plain = _grads(model)
    assert not torch.allclose(plain["heads.contrastive.logit_scale"], full["heads.contrastive.logit_scale"])
    assert torch.isfinite(out["loss"])


def test_trainer_with_the_feature_cache_takes_the_step_of_one_contrastive_batch(tmp_path):
    # The contrastive stage alone, image encoder frozen (BatchNorm on running statistics):
    # its loss couples the samples, so only the cache makes 2 x 16 equal one batch of 32.
    alone = ["~stages.finetune", "stages.pretrain.freeze=[image_encoder]", "stages.pretrain.epochs=2",
             "optimizer=sgd", "trainer.grad_clip=null"]
    train(make_config(*alone, "trainer.batch_size=32"), tmp_path / "one")
    train(make_config(*alone, "trainer.batch_size=16", "trainer.accumulate_grad_batches=2",
                      "trainer.contrastive_accumulation=cache"), tmp_path / "cached")
    train(make_config(*alone, "trainer.batch_size=16", "trainer.accumulate_grad_batches=2"), tmp_path / "plain")
    one, cached, plain = (weights(tmp_path / name / "checkpoints" / "pretrain" / "last.pt")
                          for name in ("one", "cached", "plain"))
    for k in one:
        torch.testing.assert_close(cached[k], one[k], rtol=0, atol=1e-5, msg=k)
    assert not torch.allclose(plain["heads.contrastive.logit_scale"], one["heads.contrastive.logit_scale"])
