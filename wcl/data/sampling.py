"""Deterministic epochs: the sampler's order and every sample's augmentation depend only on (seed, epoch, index).

That makes a resumed run see exactly the batches and augmentations of an uninterrupted one, and N ranks see
the same samples as one process would (up to the sampler's split of the epoch).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler

from wcl.distributed import rank, world_size


class SharedInt:
    """An integer in shared memory: written in the main process or a worker, read everywhere (also by
    persistent workers). Used for the epoch number and the count of skipped images."""

    def __init__(self, value: int = 0) -> None:
        self._value = torch.full((1,), value, dtype=torch.long).share_memory_()

    def set(self, value: int) -> None:
        self._value.fill_(value)

    def add(self, value: int = 1) -> None:
        self._value.add_(value)

    def get(self) -> int:
        return int(self._value[0])


class EpochSampler(DistributedSampler):
    """Shuffled, seeded per epoch, split over ranks; ``set_epoch`` (called by Lightning before each epoch) also
    publishes the epoch to the data workers. Being a ``DistributedSampler``, Lightning keeps it under DDP."""

    def __init__(self, dataset: Dataset, seed: int, epoch: SharedInt, drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed,
                         drop_last=drop_last)
        self.shared_epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.shared_epoch.set(epoch)

    def __iter__(self) -> Iterator[int]:
        # On resume Lightning creates the first iterator before calling set_epoch, so the epoch is read from the
        # shared value, which the data module restores from the checkpoint.
        self.epoch = self.shared_epoch.get()
        return super().__iter__()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample's augmentation in one epoch (tuple hashes of ints are the same in every process)."""
    return hash((seed, epoch, index)) & (2**63 - 1)
