"""The order batches are drawn in: a pure function of (seed, epoch), so a run resumed
mid-epoch draws exactly the batches the interrupted one had not yet seen."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one epoch, sharded across ranks, resumable.

    Each rank takes every world_size-th index of the epoch's permutation (padded by
    wrapping so all ranks see the same count). `set_epoch(e, skip=k)` starts the epoch
    after its first k samples on this rank.
    """

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0
        self.per_rank = -(-length // world_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.length, generator=g)
        else:
            order = torch.arange(self.length)
        total = self.per_rank * self.world_size
        if total > self.length:
            order = torch.cat([order, order[: total - self.length]])
        mine = order[self.rank : total : self.world_size]
        return iter(mine[self.skip :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.skip
