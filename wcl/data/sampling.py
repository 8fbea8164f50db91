"""Deterministic, resumable epochs: the order of an epoch and every sample's random draws depend only on
(seed, epoch, index).

That makes a resumed run see exactly the batches and augmentations of an uninterrupted one, and N ranks see the
same samples as one process would (up to the sampler's split of the epoch). One counter-based scheme serves both
augmentation paths: :func:`sample_keys` hashes (seed, epoch, stream, index) into a key, with no generator state, on
Python ints or on tensors of any device, and then

* :func:`uniforms` turns a batch of keys into independent uniforms (the batched device path: no host
  synchronisation);
* :func:`sample_seed` is the seed of torch's generator for one sample's torchvision draws inside a data-loader
  worker (the CPU path), made of two keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

from wcl.distributed import rank, world_size
from wcl.errors import ConfigError

_M32 = 0xFFFFFFFF
Key = TypeVar("Key", int, Tensor)  # the counter hash runs on Python ints and on int64 tensors alike
# Streams of counter-based draws per sample: view v uses VIEW + v, low-resolution crop c CROP + c; the CPU path's
# generator seed TORCH_SEED and TORCH_SEED + 1.
VIEW, TORCH_SEED, CROP_SOURCE, CROP = 0, 13, 15, 16


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
    """Shuffled, seeded per epoch, split over ranks, and resumable in the middle of an epoch.

    Lightning calls ``set_epoch`` before each epoch; the epoch is also published to the data workers through
    ``shared_epoch``. ``position`` counts this rank's samples of the current epoch that have been trained on (the
    data module calls :meth:`advance` once per training batch). ``state_dict`` saves it as the number of the
    epoch's samples trained on by all ranks together — a prefix of the epoch's global order, whichever the world
    size — and after ``load_state_dict`` the next iterator starts right after that prefix: a resumed run trains
    on exactly the batches an uninterrupted run would have, and with the same global batch split over another
    number of ranks on the rest of the epoch's samples, each once. A checkpoint saved in the middle of an epoch
    resumes only with its global batch (``batch_size`` × ranks): Lightning counts the epoch's remaining steps in
    batches, so with another batch the rest of the epoch would be cut short or run past its end.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, shared_epoch: SharedInt | None = None,
                 drop_last: bool = True) -> None:
        super().__init__(range(num_samples), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed,
                         drop_last=True)
        self.batch_size, self.drop_last_batch = batch_size, drop_last
        self.shared_epoch = shared_epoch if shared_epoch is not None else SharedInt(0)
        self.position = 0
        self.set_epoch(self.shared_epoch.get())

    def __len__(self) -> int:
        return self.num_batches * self.batch_size if self.drop_last_batch else self.num_samples

    @property
    def num_batches(self) -> int:
        """Batches of this rank per epoch (a last partial batch is dropped with ``drop_last``)."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + int(rest > 0 and not self.drop_last_batch)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.position = 0
        super().set_epoch(epoch)
        self.shared_epoch.set(epoch)

    def advance(self) -> None:
        """One training batch of this rank's epoch has been trained on."""
        self.position = min(self.position + self.batch_size, len(self))

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())[: len(self)]
        return iter(order[self.position:])

    def state_dict(self) -> dict[str, Any]:
        """``epoch``, ``samples`` (of the epoch, all ranks together) and ``global_batch``; an epoch whose last batch
        has been trained on is saved as the next epoch at sample 0."""
        if self.position >= len(self):
            return {"epoch": self.epoch + 1, "samples": 0, "global_batch": self.global_batch}
        return {"epoch": self.epoch, "samples": self.position * self.num_replicas, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch = int(state["epoch"])
        if "samples" in state:
            samples, saved_batch = int(state["samples"]), int(state["global_batch"])
        else:  # saved as {"epoch", "position"}: the position counted batches of this run's size
            samples, saved_batch = int(state["position"]) * self.global_batch, self.global_batch
            if samples >= len(self) * self.num_replicas:
                epoch, samples = epoch + 1, 0
        if samples > 0 and saved_batch != self.global_batch:
            fix = (f"--data.batch_size {saved_batch // self.num_replicas}" if saved_batch % self.num_replicas == 0
                   else f"a global batch of {saved_batch}")
            raise ConfigError(
                f"the checkpoint stopped in the middle of an epoch (after {samples} of its samples) at a global batch "
                f"of {saved_batch} (data.batch_size x processes); this run's is {self.global_batch} (data.batch_size "
                f"{self.batch_size} x {self.num_replicas}), whose batches cannot finish that epoch without skipping or "
                f"repeating images. Resume with {fix}, or change the batch size when resuming from a checkpoint "
                "saved at an epoch's end.")
        self.set_epoch(epoch)
        self.position = samples // self.num_replicas


def _mix(x: Key) -> Key:
    """A 32-bit integer hash (two multiply-xorshift rounds) of int64 values in [0, 2^32); products stay < 2^63."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def _combine(h: Key, v: Tensor | int) -> Key:
    return _mix((h ^ (v + 0x9E3779B9 + (h << 6) + (h >> 2))) & _M32)


def sample_keys(index: Key, *parts: int | Tensor) -> Key:
    """A key in [0, 2^32) per sample from its dataset index and further integers (seed, epoch, stream): an ``int``
    of an ``int`` index, a LongTensor of a LongTensor index (then a part may be a LongTensor of its shape)."""
    h = index * 0
    for p in parts:
        h = _combine(h, p & _M32)
    return _combine(h, index & _M32)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed (64 bits: two keys) of torch's generator for one sample's draws in one epoch on the CPU path; the
    same function of (seed, epoch, index) in every process, worker and Python version."""
    return sample_keys(index, seed, epoch, TORCH_SEED) << 32 | sample_keys(index, seed, epoch, TORCH_SEED + 1)


def uniforms(keys: Tensor, n: int) -> Tensor:
    """``n`` independent uniforms in [0, 1) for each key: LongTensor[B] → float32 B×n on the keys' device."""
    j = torch.arange(n, device=keys.device)
    h = _combine(keys[:, None].expand(-1, n), j[None, :])
    h = _combine(h, j[None, :] * 0x632BE5AB)
    return (h >> 8).float() * (1.0 / (1 << 24))
