"""model/image_encoder=timm: any timm model, weights from a local file, its own preprocessing."""

from __future__ import annotations

import pytest
import torch

from mmtrain.engine.checkpoint import load_checkpoint
from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.eval import evaluate_checkpoint
from mmtrain.models.image_encoder import TimmEncoder
from mmtrain.train import train
from tests.helpers import run_cli
from tests.pretrained_models import (TIMM_VIT, TIMM_VIT_KWARGS, TIMM_VIT_OVERRIDES, pretrained_config,
                                     save_tiny_timm_vit)

TIMM_TINY = ["model/image_encoder=timm", *TIMM_VIT_OVERRIDES]


def vit(pretrained, channels: int = 3, size: int = 16, **kwargs) -> TimmEncoder:
    return TimmEncoder(TIMM_VIT, in_channels=channels, image_size=size, pretrained=pretrained,
                       model_kwargs=TIMM_VIT_KWARGS, **kwargs)


@pytest.mark.parametrize("layout", ["file.safetensors", "file.pth", "folder"])
def test_local_weights_load_bit_for_bit_without_the_classifier(tmp_path, layout):
    target = tmp_path / "hub-folder" / "model.safetensors" if layout == "folder" else tmp_path / layout
    saved = save_tiny_timm_vit(target)
    encoder = vit(str(target.parent if layout == "folder" else target))
    loaded = encoder.net.state_dict()
    assert set(saved) - set(loaded) == {"head.weight", "head.bias"}
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)
    assert not torch.equal(vit(False).net.state_dict()["blocks.0.attn.qkv.weight"],
                           saved["blocks.0.attn.qkv.weight"])


def test_tokens_and_pooled_come_from_the_models_feature_api(tmp_path):
    encoder = vit(str(tmp_path / "v.pth") if save_tiny_timm_vit(tmp_path / "v.pth") else None).eval()
    images = torch.randn(2, 3, 16, 16)
    out = encoder(images)
    features = encoder.net.forward_features(images)
    assert torch.equal(out.tokens, features[:, 1:])          # 16 patches, no class token
    assert torch.equal(out.pooled, encoder.net.forward_head(features, pre_logits=True))
    assert out.tokens.shape == (2, 16, 32) and encoder.out_dim == 32
    convnet = TimmEncoder("resnet18", in_channels=3, image_size=32).eval()
    out = convnet(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 1, 512) and out.pooled.shape == (2, 512)


def test_grayscale_input_sums_the_rgb_filters_and_uses_one_mean(tmp_path):
    saved = save_tiny_timm_vit(tmp_path / "v.safetensors")
    grey = vit(str(tmp_path / "v.safetensors"), channels=1, size=28)
    assert torch.allclose(grey.net.patch_embed.proj.weight,
                          saved["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert grey(torch.randn(2, 1, 28, 28)).tokens.shape == (2, 49, 32)  # position embeddings resized
    assert grey.image_mean == (0.5,) and grey.image_std == (0.5,)


def test_images_are_normalized_as_the_model_was_pretrained_unless_told_otherwise():
    import timm

    from mmtrain import data as data_lib
    from mmtrain.models.model import build_model

    cfg = pretrained_config("model/image_encoder=timm", "model.image_encoder.name=resnet18",
                            "model.image_encoder.pretrained=false")
    data = data_lib.build(cfg.data)
    expected = timm.data.resolve_model_data_config(timm.create_model("resnet18"))
    model = build_model(cfg.model, data.info)
    assert model.image_mean.flatten().tolist() == pytest.approx(expected["mean"])
    assert model.image_std.flatten().tolist() == pytest.approx(expected["std"])
    cfg.model.image_encoder.normalize = "data"
    model = build_model(cfg.model, data.info)
    assert model.image_mean.flatten().tolist() == pytest.approx(data.info.image_mean)


def test_a_weights_file_of_another_model_is_refused_in_one_line(tmp_path):
    save_tiny_timm_vit(tmp_path / "v.pth")
    with pytest.raises(CheckpointError, match="the weights do not fit timm model vit_small_patch16_224"):
        TimmEncoder("vit_small_patch16_224", image_size=16, pretrained=str(tmp_path / "v.pth"))
    with pytest.raises(ConfigError, match="is not a timm model"):
        TimmEncoder("vit_tinyy", image_size=16)


@pytest.mark.slow
def test_a_missing_weights_file_is_one_line_and_exit_2(tmp_path):
    out = run_cli(["train", "model/image_encoder=timm", "model.image_encoder.name=resnet18",
                   f"model.image_encoder.pretrained={tmp_path / 'nope.pth'}"], tmp_path)
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "nope.pth: no such file" in lines[0]


def test_checkpoint_of_a_timm_run_evaluates_without_the_weights_file(tmp_path):
    weights = tmp_path / "vit.safetensors"
    save_tiny_timm_vit(weights)
    run = tmp_path / "run"
    train(pretrained_config(*TIMM_TINY, f"model.image_encoder.pretrained={weights}"), run)
    best = run / "checkpoints" / "finetune" / "best.pt"
    weights.unlink()
    result = evaluate_checkpoint(best, "val")
    assert result["metrics"] == pytest.approx(load_checkpoint(best)["metrics"], abs=1e-6)


def test_the_data_follows_the_pretrained_input_size_unless_the_command_line_sets_it(tmp_path, monkeypatch):
    import mmtrain.build

    save_tiny_timm_vit(tmp_path / "v.pth")
    cfg = pretrained_config(*TIMM_TINY, f"model.image_encoder.pretrained={tmp_path / 'v.pth'}")
    assert cfg.data.image_size == 32
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert cfg.data.image_size == 16                      # the overlay's pretraining size
    cfg = pretrained_config(*TIMM_TINY, "model.image_encoder.pretrained=false")
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert cfg.data.image_size == 32                      # random weights: nothing to follow
    cfg = pretrained_config(*TIMM_TINY, f"model.image_encoder.pretrained={tmp_path / 'v.pth'}",
                            "data.image_size=24")
    monkeypatch.setattr(mmtrain.build, "_command_line_keys", lambda: {"data.image_size"})
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert cfg.data.image_size == 24



def test_the_data_resizes_with_the_pretrained_interpolation_unless_the_command_line_sets_it(tmp_path, monkeypatch):
    import mmtrain.build

    save_tiny_timm_vit(tmp_path / "v.pth")
    # The ViT "pretrained on bicubic-resized images", as augreg and CLIP weights say they were.
    bicubic = TIMM_TINY[-1].replace("input_size:[3,16,16]", "input_size:[3,16,16],interpolation:bicubic")
    assert bicubic != TIMM_TINY[-1]
    weights = f"model.image_encoder.pretrained={tmp_path / 'v.pth'}"
    cfg = pretrained_config(*TIMM_TINY[:-1], weights, bicubic, "data=coco_captions")
    assert cfg.data.interpolation == "bilinear"
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert (cfg.data.interpolation, cfg.data.image_size) == ("bicubic", 16)
    cfg = pretrained_config(*TIMM_TINY[:-1], weights, bicubic, "data=coco_captions", "data.interpolation=bilinear")
    monkeypatch.setattr(mmtrain.build, "_command_line_keys", lambda: {"data.interpolation"})
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert (cfg.data.interpolation, cfg.data.image_size) == ("bilinear", 16)
    cfg = pretrained_config(*TIMM_TINY[:-1], weights, bicubic.replace("bicubic", "lanczos"), "data=coco_captions")
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert cfg.data.interpolation == "bilinear"           # a filter mmtrain lacks: kept, logged
    cfg = pretrained_config(*TIMM_TINY[:-1], weights, bicubic)  # synthetic data has no resize to follow
    mmtrain.build.follow_pretrained_preprocessing(cfg)
    assert "interpolation" not in cfg.data


def test_pretrained_true_is_timms_own_resolution(monkeypatch):
    """pretrained=true hands the name to timm.create_model(pretrained=True): timm resolves the
    weights (hub, cache, HF_HUB_OFFLINE), mmtrain downloads nothing itself."""
    import timm

    asked = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: asked.append(
        (name, pretrained, "pretrained_cfg_overlay" in kw)) or real(name, pretrained=False, **kw))
    TimmEncoder("resnet18.a1_in1k", image_size=32, pretrained=True)
    assert asked == [("resnet18.a1_in1k", True, False)]
