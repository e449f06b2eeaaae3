"""Every choice of every model group, composed from conf/ with every task: it builds, runs
forward and backward, and overfits one fixed batch (the loss falls by 90%); settings that
cannot work stop at start with a message that says what to change.

The cross product is covered by design rather than enumerated: every fusion meets every
task (with the small cnn + bow), and every encoder trains with at least one fusion and
one task, so each pairing a user can choose is exercised by some test.
"""

from __future__ import annotations

import pytest
import torch

from mmtrain.errors import ConfigError
from tests.helpers import choices
from tests.zoo import TINY_CHOICES, build, compose_config, fixed_batch, overfit


TASKS = ["classification", "contrastive", "captioning"]


@pytest.mark.parametrize("group", ["model/image_encoder", "model/text_encoder", "model/fusion"])
def test_every_config_choice_has_a_tiny_test_setting(group):
    assert choices(group) == sorted(TINY_CHOICES[group]), f"add the new {group} choice to tests/zoo.py TINY_CHOICES"


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fusion", choices("model/fusion"))
def test_every_fusion_composes_and_backpropagates_with_every_task(fusion, task):
    model, task_obj, data = build(compose_config(fusion=fusion, task=task))
    out = task_obj.training_step(model, fixed_batch(data, 8))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("fusion", ["film", "attention"])
@pytest.mark.parametrize("image,text", [("cnn", "gru"), ("resnet18", "lstm"), ("resnet34", "transformer"),
                                        ("vit_tiny", "bow"), ("open_clip", "open_clip")])
def test_token_sequences_of_every_encoder_feed_the_fusions_that_attend_over_them(image, text, fusion):
    # Pooled-vector fusions see B x D from any encoder; these two read each encoder's token
    # sequence (and the text's padding mask), the part whose shape differs between encoders.
    model, task, data = build(compose_config(image, text, fusion))
    out = task.training_step(model, fixed_batch(data, 8))
    out["loss"].backward()
    for part in (model.image_encoder, model.text_encoder, model.fusion):
        assert all(p.grad is not None for p in part.parameters()), f"{image}+{text}+{fusion}: no gradient"


@pytest.mark.parametrize("fusion", choices("model/fusion"))
def test_every_fusion_overfits_a_batch_in_classification(fusion):
    model, task, data = build(compose_config(fusion=fusion))
    first, last, steps = overfit(model, task, fixed_batch(data), steps=300)
    assert last <= 0.1 * first, f"{fusion}: loss {first:.3f} -> {last:.3f} in {steps} steps"


@pytest.mark.parametrize("image,text,fusion,task,size", [
    ("cnn", "gru", "gated", "classification", 16),
    ("resnet18", "lstm", "film", "classification", 16),
    ("resnet34", "bow", "sum", "classification", 16),
    ("vit_tiny", "transformer", "attention", "classification", 16),
    ("vit_tiny", "gru", "bilinear", "classification", 16),
    ("cnn", "transformer", "late", "classification", 16),
    ("cnn", "bow", "concat", "contrastive", 16),
    ("vit_tiny", "transformer", "concat", "contrastive", 16),
    ("resnet18", "gru", "concat", "contrastive", 16),
    ("cnn", "lstm", "concat", "contrastive", 16),
    ("cnn", "bow", "concat", "captioning", 16),
    ("vit_tiny", "transformer", "concat", "captioning", 16),
    ("resnet18", "bow", "concat", "captioning", 16),
])
def test_encoders_overfit_a_batch_with_each_task(image, text, fusion, task, size):
    model, task_obj, data = build(compose_config(image, text, fusion, task, image_size=size))
    first, last, steps = overfit(model, task_obj, fixed_batch(data), steps=400)
    assert last <= 0.1 * first, f"{image}+{text}+{fusion}/{task}: loss {first:.3f} -> {last:.3f}"


def test_classification_with_late_fusion_adds_one_head_per_modality_and_averages_their_logits():
    model, task, data = build(compose_config(fusion="late"))
    model.eval()
    batch = fixed_batch(data, 6)
    other_text = {**batch, "text": batch["text"].roll(1, 0), "text_lengths": batch["text_lengths"].roll(1, 0)}
    with torch.no_grad():
        change = task.logits(model, other_text) - task.logits(model, batch)
        # Additive in the modalities: what a text adds cannot depend on the image it meets.
        other_image = {k: v.roll(2, 0) if k == "image" else v for k, v in batch.items()}
        other_both = {**other_text, "image": other_image["image"]}
        assert torch.allclose(task.logits(model, other_both) - task.logits(model, other_image), change, atol=1e-5)
    assert set(model.heads["classification"]) == {"image", "text"}


def test_vit_with_a_patch_that_does_not_tile_the_image_is_refused():
    with pytest.raises(ConfigError, match="patch_size=4 does not divide the data's image_size=18"):
        build(compose_config(image="vit_tiny", image_size=18))


def test_unknown_choice_lists_the_valid_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="gated"):
        compose_config(fusion="gatd")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("fusion", choices("model/fusion"))
def test_pretrained_encoders_feed_every_fusion_and_task(fusion, task):
    model, task_obj, data = build(compose_config("timm", "hf", fusion, task))
    out = task_obj.training_step(model, fixed_batch(data, 8))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in model.image_encoder.net.blocks.parameters())
    if task != "captioning":  # captioning predicts the text: the text encoder is not used
        assert all(p.grad is not None for p in model.text_encoder.net.encoder.parameters())
