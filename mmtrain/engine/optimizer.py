"""Parameter groups for the optimizer: frozen weights left out, per-module lr factors,
no weight decay on biases and norm weights (decaying them only hurts)."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import hydra.utils
import torch
from torch import nn

from mmtrain.config import instantiate
from mmtrain.errors import ConfigError


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 lr_scale: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    lr_scale = dict(lr_scale or {})
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
        decay = 0.0 if p.ndim <= 1 else weight_decay
        groups.setdefault((lr * scale, decay), []).append(p)
    return [{"params": ps, "lr": glr, "weight_decay": wd} for (glr, wd), ps in groups.items()]


def build_optimizer(cfg: Any, model: nn.Module, lr: float | None = None,
                    lr_scale: Mapping[str, float] | None = None,
                    device: torch.device | None = None) -> torch.optim.Optimizer:
    """Instantiate `cfg` (a `_partial_` optimizer config) over the model's trainable groups.

    On CUDA, optimizers that have a fused kernel (Adam, AdamW, SGD) use it: one kernel for
    all parameters instead of several per tensor, unless the config sets `fused` itself.
    """
    base_lr = float(lr if lr is not None else cfg.lr)
    groups = param_groups(model, base_lr, float(cfg.get("weight_decay", 0.0)), lr_scale)
    if not groups:
        raise ConfigError("every parameter is frozen in this stage: nothing to train")
    extra: dict[str, Any] = {}
    if device is not None and device.type == "cuda" and "fused" not in cfg:
        target = hydra.utils.get_method(cfg._target_)
        if "fused" in inspect.signature(target).parameters:
            extra["fused"] = True
    optimizer = instantiate(cfg, lr=base_lr, _convert_="all", **extra)
    return optimizer(groups)
