"""torch.distributed helpers that are no-ops in a single process.

Under `torchrun` every rank runs the whole program; `init_from_env` joins them into one
process group before Hydra starts, so that rank 0 can hand every rank the same run dir.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from mmtrain.config import run_stamp

RUN_STAMP_ENV = "MMTRAIN_RUN_STAMP"

# Set while rank 0 evaluates alone: collectives inside would wait for ranks that never come.
_local_only = False


def is_distributed() -> bool:
    return not _local_only and dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_env() -> None:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR...), if any.

    One group serves both devices: gloo carries CPU tensors (the stop flag, metrics) and
    NCCL the gradients on GPUs. Rank 0's start time is shared through MMTRAIN_RUN_STAMP,
    which the run-dir pattern reads, so all ranks write one run dir (Hydra issue 2070).
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    if RUN_STAMP_ENV not in os.environ:
        os.environ[RUN_STAMP_ENV] = broadcast_object(run_stamp())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (any picklable value)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any. A CPU tensor over gloo: no GPU sync."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average scalar tensors across ranks in one all_reduce."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.stack([values[k].float().reshape(()) for k in keys])
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t))


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within, helpers act as in a single process (rank 0 evaluating the full split alone)."""
    global _local_only
    _local_only = True
    try:
        yield
    finally:
        _local_only = False


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B x ...) from every rank along dim 0; gradients flow back to the
    local slice only, which is what a contrastive loss over the global batch needs."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts, dim=0)
