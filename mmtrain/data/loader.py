"""DataLoaders built the same way everywhere: resumable sampler, pinned memory on GPU."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from mmtrain.data.batch import collate
from mmtrain.data.sampler import EpochSampler


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0,
                num_workers: int = 0, device: torch.device | None = None,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training loaders shuffle and drop the last partial batch (contrastive losses want a
    fixed number of negatives); evaluation loaders keep every sample, in order."""
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=train, collate_fn=collate,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=device is not None and device.type == "cuda",
    )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    # non_blocking: with pinned memory the copy overlaps the previous step's compute.
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
