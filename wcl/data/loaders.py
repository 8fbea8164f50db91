"""Batch iterables: a resumable DataLoader for decoding workers, and worker-free iterables over in-memory images.

With the images in one uint8 tensor (``in_memory``) a batch is an index slice of the epoch's permutation and a
gather of pixel rows — no workers, no collation; with ``in_memory: device`` both happen on the device, so a
training step does no host work. Every iterable is resumable in the middle of an epoch: Lightning saves its
``state_dict`` (the epoch and the samples trained on) in checkpoints and restores it before the first batch.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from wcl.data.crops import CropSource
from wcl.data.sampling import CROP_SOURCE, EpochSampler, sample_keys, uniforms
from wcl.distributed import rank, world_size


def ignore_sigint(worker_id: int) -> None:
    """Data-loader workers ignore Ctrl-C (a terminal sends it to every process of the job): the main process stops
    after its current step, which may still need a prefetched batch, and ends the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position is saved in checkpoints."""

    sampler: EpochSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("num_workers", 0) > 0:
            kwargs.setdefault("worker_init_fn", ignore_sigint)
        super().__init__(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class IndexBatches:
    """Training batches of in-memory images: ``{"raw": uint8 B×3×H×W, "index", "label"}`` plus, with crops,
    ``"crops_raw": uint8 B×m×3×H×W`` and ``"crop_source": LongTensor[B, m]``, all on the images' device.

    ``sampler`` (an :class:`EpochSampler`, which Lightning's ``set_epoch`` reaches) gives the rank's order of the
    epoch; it is computed once per epoch on the host and copied to the device in one transfer. The crops' sources
    are drawn from counter-based uniforms of (seed, epoch, index), like the views. ``true_labels`` (given when
    ``labels`` hides the unknown ones as -1) are served as ``"true_label"``, for diagnostics.
    """

    def __init__(self, images: Tensor, labels: Tensor, sampler: EpochSampler, crops: CropSource | None,
                 seed: int, true_labels: Tensor | None = None) -> None:
        self.images, self.labels, self.sampler, self.crops, self.seed = images, labels.to(images.device), sampler, \
            crops, seed
        self.true_labels = None if true_labels is None else true_labels.to(images.device)
        self.batch_size = sampler.batch_size

    def __len__(self) -> int:
        return self.sampler.num_batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        dev, b = self.images.device, self.batch_size
        order = torch.tensor(list(self.sampler), dtype=torch.long).to(dev, non_blocking=True)
        epoch = self.sampler.epoch
        for start in range(0, len(order) - b + 1, b):
            index = order[start:start + b]
            batch = {"raw": self.images[index], "index": index, "label": self.labels[index]}
            if self.true_labels is not None:
                batch["true_label"] = self.true_labels[index]
            if self.crops is not None and self.crops.num > 0:
                u = uniforms(sample_keys(index, self.seed, epoch, CROP_SOURCE), self.crops.num)
                source = self.crops.batch_sources(index, u)
                batch["crops_raw"] = self.images[source]
                batch["crop_source"] = source
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class EvalBatches:
    """Evaluation batches of in-memory images, this rank's share (every ``world``-th index, no padding):
    ``{"image": uint8 B×3×H×W, "index", "label"}``; the data module turns the pixels into the eval view."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int) -> None:
        self.index = torch.arange(rank(), images.shape[0], world_size(), device=images.device)
        self.images, self.labels, self.batch_size = images, labels.to(images.device), batch_size

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for start in range(0, len(self.index), self.batch_size):
            index = self.index[start:start + self.batch_size]
            yield {"image": self.images[index], "index": index, "label": self.labels[index]}
