"""DataLoaders built the same way everywhere: resumable sampler, pinned memory on GPU."""

from __future__ import annotations

import atexit
import signal
import weakref
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from mmtrain.data.batch import collate
from mmtrain.data.sampler import EpochSampler


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0,
                num_workers: int = 0, device: torch.device | None = None,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """Training loaders shuffle and drop the last partial batch (contrastive losses want a
    fixed number of negatives); evaluation loaders keep every sample, in order."""
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size,
                           epoch_tagged=train and getattr(dataset, "varies_by_epoch", False))
    return _TrackedLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=train, collate_fn=collate,
        num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=device is not None and device.type == "cuda",
        # Each iter() draws a worker base seed from this generator; drawing it from the
        # global RNG instead would shift dropout masks after a mid-epoch resume.
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_stop_signals,
    )


def ignore_stop_signals(worker_id: int) -> None:
    """A SIGTERM to the whole process group (schedulers, `kill -- -PGID`) or a Ctrl-C reaches
    the workers too: they must not die under the main process, which saves and stops.
    (A worker still ends when the main process dies: torch's workers watch their parent.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _WorkerIterator(_MultiProcessingDataLoaderIter):
    """torch's iterator, whose shutdown also ends the workers it could not join: torch
    SIGTERMs those, which ours ignore, so they waited for work forever (seen after a worker
    raised on a bad image), and a process exit then waited for them."""

    def _shutdown_workers(self) -> None:
        done_before = self._shutdown
        super()._shutdown_workers()
        if self._shutdown and not done_before:  # torch stopped watching them: no SIGCHLD error
            for worker in self._workers:
                if worker.is_alive():
                    worker.kill()
                    worker.join(timeout=10)


class _TrackedLoader(DataLoader):
    """Remembers its worker iterators: an iterator can outlive its loader (a kept traceback
    holds the step loop's frame, a notebook keeps a variable), and its workers must still be
    ended at exit."""

    def _get_iterator(self) -> Any:  # torch's one place that makes an iterator
        if self.num_workers == 0:
            return super()._get_iterator()
        self.check_worker_number_rationality()
        iterator = _WorkerIterator(self)
        _WORKER_ITERATORS.add(iterator)
        return iterator


_WORKER_ITERATORS: "weakref.WeakSet[_WorkerIterator]" = weakref.WeakSet()


@atexit.register
def _end_workers() -> None:
    """multiprocessing's exit hook SIGTERMs daemonic children, which our workers ignore, and
    then joins them: forever. End them first: registered after multiprocessing's and
    torch's exit hooks, this runs before both, while torch's shutdown still works."""
    for iterator in list(_WORKER_ITERATORS):
        iterator._shutdown_workers()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    # non_blocking: with pinned memory the copy overlaps the previous step's compute.
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
