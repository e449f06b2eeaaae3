"""Learning-rate schedules, stepped once per optimizer step."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
           warmup_ratio: float = 0.0, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup from 0, then cosine decay to `min_lr_ratio` x the base lr."""
    warmup = max(warmup_steps, int(round(warmup_ratio * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
             warmup_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup, then the base lr throughout."""
    warmup = max(warmup_steps, int(round(warmup_ratio * total_steps)))
    return LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup else 1.0)
