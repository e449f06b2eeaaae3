"""Device choice, autocast and the fp16 GradScaler."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from mmtrain.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is visible: use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The autocast context for `precision` (a no-op for 32)."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision=bf16-mixed needs a GPU with bf16 (Ampere or newer): use fp16-mixed")
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16, where small gradients underflow."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")
