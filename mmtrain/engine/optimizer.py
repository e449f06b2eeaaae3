"""Parameter groups for the optimizer: frozen weights left out, per-module lr factors,
layer-wise lr decay over pretrained towers, no weight decay on biases and norm weights
(decaying them only hurts)."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import hydra.utils
import torch
from torch import nn

from mmtrain.config import instantiate
from mmtrain.errors import ConfigError
from mmtrain.models import Encoder


def layer_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Layer-wise lr decay (BEiT, timm's `layer_decay`): in each tower that numbers its layers
    (`layer_ids()`: parameter -> depth, 0 = embeddings), a parameter at depth d of a tower whose
    top is D gets decay ** (D - d); parameters of other modules (fusion, heads) keep 1."""
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"layer_decay={decay} must be in (0, 1]")
    scales: dict[str, float] = {}
    for prefix, module in model.named_children():
        ids = module.layer_ids() if isinstance(module, Encoder) else {}  # fusion and heads: not numbered
        top = max(ids.values(), default=0)
        scales.update({f"{prefix}.{name}": decay ** (top - depth) for name, depth in ids.items()})
    if not scales:
        raise ConfigError("layer_decay needs a tower that numbers its layers (model/image_encoder=timm "
                          "or model/text_encoder=hf); this model has none")
    return scales


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 lr_scale: Mapping[str, float] | None = None,
                 layer_decay: float | None = None) -> list[dict[str, Any]]:
    lr_scale = dict(lr_scale or {})
    by_layer = layer_scales(model, layer_decay) if layer_decay is not None else {}
    for prefix in lr_scale:
        try:
            model.get_submodule(prefix)
        except AttributeError:
            raise ConfigError(f"lr_scale names '{prefix}', which is not a module of the model") from None
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        for prefix, factor in lr_scale.items():
            if name == prefix or name.startswith(prefix + "."):
                scale = factor
        scale *= by_layer.get(name, 1.0)
        decay = 0.0 if p.ndim <= 1 else weight_decay
        groups.setdefault((lr * scale, decay), []).append(p)
    return [{"params": ps, "lr": glr, "weight_decay": wd} for (glr, wd), ps in groups.items()]


def build_optimizer(cfg: Any, model: nn.Module, lr: float | None = None,
                    lr_scale: Mapping[str, float] | None = None,
                    device: torch.device | None = None,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    """Instantiate `cfg` (a `_partial_` optimizer config) over the model's trainable groups.

    On CUDA, optimizers that have a fused kernel (Adam, AdamW, SGD) use it: one kernel for
    all parameters instead of several per tensor, unless the config sets `fused` itself.
    """
    base_lr = float(lr if lr is not None else cfg.lr)
    groups = param_groups(model, base_lr, float(cfg.get("weight_decay", 0.0)), lr_scale, layer_decay)
    if not groups:
        raise ConfigError("every parameter is frozen in this stage: nothing to train")
    extra: dict[str, Any] = {}
    if device is not None and device.type == "cuda" and "fused" not in cfg:
        target = hydra.utils.get_method(cfg._target_)
        if "fused" in inspect.signature(target).parameters:
            extra["fused"] = True
    optimizer = instantiate(cfg, lr=base_lr, _convert_="all", **extra)
    return optimizer(groups)
