"""Device choice, precision (autocast, the fp16 GradScaler, TF32) and memory format."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from mmtrain.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto: this rank's GPU (LOCAL_RANK under torchrun) if there is one, else the CPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        from mmtrain.distributed import local_rank

        return torch.device("cuda", local_rank())
    if name == "auto":
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but no CUDA GPU is visible: use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses, decided once at its start: auto is bf16-mixed on a GPU that
    has bf16 (Ampere or newer), else 32; bf16-mixed asked of a GPU without it is refused here,
    before any data is read, not at the first step."""
    if precision == "auto":
        return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision=bf16-mixed needs a GPU with bf16 (Ampere or newer): use fp16-mixed")
    return precision


def enable_tf32(device: torch.device) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere+): ~10 bits of mantissa
    in the products, which training does not notice, for several times the speed."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The autocast context for a `resolve_precision`d precision (a no-op for 32)."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16, where small gradients underflow."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16-mixed")
