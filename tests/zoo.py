"""Helpers for the model-zoo tests: compose the repo's configs, build tiny models, overfit a batch."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from mmtrain import data as data_lib
from mmtrain.build import build_data, build_tasks
from mmtrain.config import check_train_config
from mmtrain.data.batch import collate
from mmtrain.models.model import build_model, model_tokenizer
from tests.helpers import compose
from tests.pretrained_models import save_tiny_bert, save_tiny_open_clip

# The tiny Hugging Face model the `hf` choice loads: written once per test process.
TINY_BERT = Path(tempfile.gettempdir()) / f"mmtrain-tiny-bert-{os.getpid()}"
# The tiny open_clip model (a local-dir: folder) the `open_clip` choices load, likewise.
TINY_OPEN_CLIP = Path(tempfile.gettempdir()) / f"mmtrain-tiny-open-clip-{os.getpid()}"

# Tiny widths for every choice, so a CPU test builds and trains them in well under a second.
TINY_CHOICES = {
    "model/image_encoder": {
        "cnn": ["width=8", "depth=2", "dim=32"],
        "resnet18": ["dim=32"],
        "resnet34": ["dim=32"],
        "resnet50": ["dim=32"],
        "vit_tiny": ["dim=32", "depth=2", "heads=2"],
        "vit_b_16": [],
        "timm": ["name=vit_tiny_patch16_224", "pretrained=false",
                 "model_kwargs={embed_dim:32,depth:1,num_heads:2,patch_size:4,img_size:16}"],
        "open_clip": [f"name=local-dir:{TINY_OPEN_CLIP}", "pretrained=null"],
    },
    "model/text_encoder": {
        "bow": ["dim=32"],
        "gru": ["embed_dim=16", "hidden_dim=16"],
        "lstm": ["embed_dim=16", "hidden_dim=16"],
        "transformer": ["dim=32", "depth=1", "heads=2", "dropout=0.0"],
        "hf": [f"name={TINY_BERT}"],
        "open_clip": [f"name=local-dir:{TINY_OPEN_CLIP}", "pretrained=null"],
    },
    "model/fusion": {
        "concat": ["dim=32", "dropout=0.0"], "sum": ["dim=32", "dropout=0.0"],
        "product": ["dim=32", "dropout=0.0"], "gated": ["dim=32", "dropout=0.0"],
        "film": ["dim=32", "dropout=0.0"], "attention": ["dim=32", "heads=2", "dropout=0.0"],
        "bilinear": ["dim=32", "rank=32", "dropout=0.0"], "late": ["dim=32", "dropout=0.0"],
    },
    "task": {
        "classification": ["hidden_dim=32", "dropout=0.0"],
        "contrastive": ["embed_dim=32"],
        "captioning": ["dim=32", "depth=1", "heads=2", "dropout=0.0", "beam_size=2"],
    },
}


def compose_config(image: str = "cnn", text: str = "bow", fusion: str = "concat", task: str = "classification",
                   image_size: int = 16, extra: list[str] | None = None) -> DictConfig:
    """The repo's train config with these choices at tiny widths, one stage of `task`."""
    overrides = [f"model/image_encoder={image}", f"model/text_encoder={text}", f"model/fusion={fusion}",
                 f"task@stages.pretrain.task={task}", "~stages.finetune",
                 "data.n_train=64", "data.n_val=32", "data.n_test=32", f"data.image_size={image_size}",
                 "data.tokenizer_options.max_length=24"]
    overrides += [f"model.image_encoder.{o}" for o in TINY_CHOICES["model/image_encoder"].get(image, [])]
    overrides += [f"model.text_encoder.{o}" for o in TINY_CHOICES["model/text_encoder"].get(text, [])]
    overrides += [f"model.fusion.{o}" for o in TINY_CHOICES["model/fusion"].get(fusion, [])]
    overrides += [f"stages.pretrain.task.{o}" for o in TINY_CHOICES["task"].get(task, [])]
    overrides += extra or []
    if text == "hf" and not (TINY_BERT / "config.json").is_file():
        save_tiny_bert(TINY_BERT)
    if "open_clip" in (image, text):
        tiny_open_clip()
    cfg = compose(overrides)
    check_train_config(cfg)
    return cfg


def tiny_open_clip() -> Path:
    """The tiny open_clip folder of this process, written on first use."""
    if not (TINY_OPEN_CLIP / "open_clip_config.json").is_file():
        save_tiny_open_clip(TINY_OPEN_CLIP)
    return TINY_OPEN_CLIP


def build(cfg: DictConfig) -> tuple[Any, Any, data_lib.DataBundle]:
    """-> (model, its one task attached, data), initialised from a fixed seed."""
    torch.manual_seed(0)
    data = build_data(cfg, model_tokenizer(cfg.model, cfg.data))
    model = build_model(cfg.model, data.info)
    (stage,) = build_tasks(cfg, model, data.info)
    return model, stage.task, data


def fixed_batch(data: data_lib.DataBundle, n: int = 16) -> dict[str, torch.Tensor]:
    return collate(data.train.__getitems__(list(range(n))))


def overfit(model: Any, task: Any, batch: dict[str, torch.Tensor], steps: int, lr: float = 3e-3,
            target: float = 0.1) -> tuple[float, float, int]:
    """Train on one batch until the loss is `target` x the first one -> (first, last, steps taken)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    first = last = None
    for step in range(1, steps + 1):
        loss = task.training_step(model, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
        first = last if first is None else first
        if last <= target * first:
            return first, last, step
    return first, last, steps
