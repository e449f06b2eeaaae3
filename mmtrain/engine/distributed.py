"""torch.distributed helpers that are no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B x ...) from every rank along dim 0; gradients flow back to the
    local slice only, which is what a contrastive loss over the global batch needs."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts, dim=0)
