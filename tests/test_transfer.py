"""Fine-tuning from earlier weights: init_from, layer-wise lr decay, LiT freezing, grad checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtrain.engine.checkpoint import atomic_save, load_checkpoint
from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.train import train
from tests.pretrained_models import (TIMM_VIT, TIMM_VIT_KWARGS, TIMM_VIT_OVERRIDES, pretrained_config,
                                     save_tiny_bert, save_tiny_timm_vit)
from tests.helpers import make_config

EVAL_ONLY = ["stages.pretrain.epochs=0", "stages.finetune.epochs=0"]


def weights_of(run: Path, stage: str = "finetune", kind: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / stage / f"{kind}.pt")["model"]


def vocabulary_kind(checkpoint: Path) -> str:
    tokenizer = json.loads(load_checkpoint(checkpoint)["tokenizer"])["tokenizer"]
    return json.loads(tokenizer)["model"]["type"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix + ".")]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A finished two-stage run whose text was tokenized with BPE (not the default word level)."""
    run = tmp_path_factory.mktemp("source")
    train(make_config("data.tokenizer_options.kind=bpe", "data.tokenizer_options.vocab_size=60"), run)
    return run


def test_init_from_a_run_dir_loads_what_fits_reports_the_rest_and_keeps_the_vocabulary(source, tmp_path):
    summary = train(make_config(*EVAL_ONLY, "model.fusion.dim=24", f"init_from={source}"), tmp_path)
    best = source / "checkpoints" / "finetune" / "best.pt"
    assert summary["init_from"]["checkpoint"] == str(best)
    assert summary["init_from"]["loaded"] == ["image_encoder", "text_encoder", "heads.contrastive"]
    assert set(summary["init_from"]["skipped"]) == {"fusion", "heads.classification"}
    assert "shape mismatches (e.g. fusion." in summary["init_from"]["skipped"]["fusion"]
    before, after = load_checkpoint(best)["model"], weights_of(tmp_path)
    for module in ("image_encoder", "text_encoder", "heads.contrastive"):
        assert same(before, after, module), module
    assert load_checkpoint(best)["tokenizer"] == load_checkpoint(tmp_path / "checkpoints" / "finetune"
                                                                  / "last.pt")["tokenizer"]
    assert vocabulary_kind(best) == "BPE"


def test_init_modules_loads_only_the_named_ones_and_refits_the_vocabulary(source, tmp_path):
    best = source / "checkpoints" / "finetune" / "best.pt"
    summary = train(make_config(*EVAL_ONLY, f"init_from={best}", "init_modules=[image_encoder]"), tmp_path)
    assert summary["init_from"] == {"checkpoint": str(best), "loaded": ["image_encoder"], "skipped": {}}
    after = weights_of(tmp_path)
    assert same(load_checkpoint(best)["model"], after, "image_encoder")
    assert vocabulary_kind(tmp_path / "checkpoints" / "finetune" / "last.pt") == "WordLevel"


def test_a_named_module_that_does_not_fit_or_does_not_exist_is_refused(source, tmp_path):
    with pytest.raises(CheckpointError, match=r"its fusion does not fit this model \(\d+ shape mismatches \(e.g. fusion\."):
        train(make_config(*EVAL_ONLY, "model.fusion.dim=24", f"init_from={source}",
                          "init_modules=[fusion]"), tmp_path / "a")
    with pytest.raises(ConfigError, match="init_modules names 'vision': the model has image_encoder"):
        train(make_config(*EVAL_ONLY, f"init_from={source}", "init_modules=[vision]"), tmp_path / "b")
    with pytest.raises(CheckpointError, match="no such checkpoint file or run dir"):
        train(make_config(f"init_from={tmp_path / 'nowhere'}"), tmp_path / "c")


def test_the_checkpoints_config_is_never_instantiated(source, tmp_path):
    ckpt = load_checkpoint(source / "checkpoints" / "finetune" / "best.pt")
    ckpt["config"]["model"]["fusion"]["_target_"] = "os.system"
    ckpt["config"]["model"]["fusion"]["command"] = f"touch {tmp_path / 'pwned'}"
    atomic_save(ckpt, tmp_path / "planted.pt")
    summary = train(make_config(*EVAL_ONLY, f"init_from={tmp_path / 'planted.pt'}"), tmp_path / "run")
    assert "fusion" in summary["init_from"]["loaded"] and not (tmp_path / "pwned").exists()


def _tiny_pretrained_model(tmp_path: Path):
    from mmtrain import data as data_lib
    from mmtrain.models.model import build_model, model_tokenizer

    save_tiny_timm_vit(tmp_path / "vit.pth")
    bert = save_tiny_bert(tmp_path / "bert")
    cfg = pretrained_config("model/image_encoder=timm", *TIMM_VIT_OVERRIDES,
                            f"model.image_encoder.pretrained={tmp_path / 'vit.pth'}", "data.image_size=16",
                            "model/text_encoder=hf", f"model.text_encoder.name={bert}",
                            "data.tokenizer_options.max_length=24")
    data = data_lib.build(cfg.data, tokenizer=model_tokenizer(cfg.model, cfg.data))
    return cfg, build_model(cfg.model, data.info)


def test_layer_decay_gives_each_layer_its_lr_as_timm_computes_it(tmp_path):
    from timm.optim import param_groups_layer_decay

    from mmtrain.engine.optimizer import param_groups

    _, model = _tiny_pretrained_model(tmp_path)
    lr, decay = 1e-3, 0.5
    groups = param_groups(model, lr, 0.0, {"text_encoder": 0.1}, layer_decay=decay)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())

    def lr(name: str) -> float:
        return lr_of[id(named[name])]

    # Two blocks: embeddings 0, block i -> i + 1, the final norm with the last block.
    assert lr("image_encoder.net.patch_embed.proj.weight") == pytest.approx(1e-3 * 0.25, rel=1e-12)
    assert lr("image_encoder.net.blocks.0.attn.qkv.weight") == pytest.approx(1e-3 * 0.5, rel=1e-12)
    assert lr("image_encoder.net.blocks.1.attn.qkv.weight") == pytest.approx(1e-3, rel=1e-12)
    assert lr("image_encoder.net.norm.weight") == pytest.approx(1e-3, rel=1e-12)
    assert lr("text_encoder.net.embeddings.word_embeddings.weight") == pytest.approx(1e-4 * 0.25, rel=1e-12)
    assert lr("text_encoder.net.encoder.layer.0.attention.self.query.weight") == pytest.approx(1e-4 * 0.5, rel=1e-12)
    assert lr("text_encoder.net.encoder.layer.1.output.dense.weight") == pytest.approx(1e-4, rel=1e-12)
    assert all(lr(n) == pytest.approx(1e-3, rel=1e-12) for n in named if n.startswith(("fusion.", "heads.")))
    # The image tower's factors are timm's own (its param_groups_layer_decay, BEiT's scheme).
    reference = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model.image_encoder.net, layer_decay=decay)
                 for p in g["params"]}
    for name, p in model.image_encoder.net.named_parameters():
        assert lr_of[id(p)] == pytest.approx(1e-3 * reference[id(p)], rel=1e-12), name


def test_layer_decay_without_a_layered_tower_is_refused():
    from mmtrain.engine.optimizer import param_groups
    from mmtrain.models.model import build_model
    from mmtrain import data as data_lib

    cfg = make_config()
    model = build_model(cfg.model, data_lib.build(cfg.data).info)
    with pytest.raises(ConfigError, match="layer_decay needs a tower that numbers its layers"):
        param_groups(model, 1e-3, 0.0, layer_decay=0.75)


def test_lit_a_locked_pretrained_image_tower_stays_bit_identical_while_the_text_trains(tmp_path):
    save_tiny_timm_vit(tmp_path / "vit.pth")
    bert = save_tiny_bert(tmp_path / "bert")
    cfg = pretrained_config("model/image_encoder=timm", *TIMM_VIT_OVERRIDES,
                            f"model.image_encoder.pretrained={tmp_path / 'vit.pth'}", "data.image_size=16",
                            "model/text_encoder=hf", f"model.text_encoder.name={bert}",
                            "data.tokenizer_options.max_length=24", "~stages.finetune",
                            "stages.pretrain.freeze=[image_encoder]", "stages.pretrain.layer_decay=0.75")
    train(cfg, tmp_path / "run")
    after = weights_of(tmp_path / "run", "pretrain")
    saved = torch.load(tmp_path / "vit.pth", weights_only=True)
    assert all(torch.equal(after[f"image_encoder.net.{k}"], v) for k, v in saved.items()
               if not k.startswith("head."))
    from safetensors.torch import load_file

    text = load_file(bert / "model.safetensors")
    assert not torch.equal(after["text_encoder.net.encoder.layer.1.output.dense.weight"],
                           text["encoder.layer.1.output.dense.weight"])


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    from mmtrain.models.image_encoder import TimmEncoder
    from mmtrain.models.text_encoder import HFTextEncoder

    save_tiny_timm_vit(tmp_path / "vit.pth")
    bert = save_tiny_bert(tmp_path / "bert")
    images, ids, lengths = torch.randn(2, 3, 16, 16), torch.tensor([[2, 6, 7, 3], [2, 8, 3, 0]]), torch.tensor([4, 3])
    grads = []
    for checkpointing in (False, True):
        image = TimmEncoder(TIMM_VIT, image_size=16, pretrained=str(tmp_path / "vit.pth"),
                            grad_checkpointing=checkpointing, model_kwargs=TIMM_VIT_KWARGS).train()
        text = HFTextEncoder(str(bert), vocab_size=40, grad_checkpointing=checkpointing).train()
        torch.manual_seed(0)
        (image(images).pooled.sum() + text(ids, lengths).pooled.sum()).backward()
        grads.append([p.grad.clone() for m in (image, text) for p in m.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
