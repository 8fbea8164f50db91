"""``DataSource``: which images a run uses and how they are held — one description shared by both data modules."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from wcl.data.datasets import DatasetName, DatasetSplits, build_splits, classes_of
from wcl.data.samples import InMemoryImages, labels_of
from wcl.data.sampling import SharedInt
from wcl.data.subsets import first_per_class
from wcl.distributed import rank
from wcl.errors import ConfigError

InMemory = bool | Literal["device"]


@dataclass
class DataSource:
    """The dataset (``bundled``, ``cifar10``, ``cifar100``, ``stl10`` or ``imagefolder`` at ``root``), its
    per-class subsets, and the in-memory copy of the pretraining images (``in_memory``: ``true`` host,
    ``device`` the training device; decoded at ``decode_size`` when images differ in size).

    ``num_classes`` is None for unlabelled data (one class folder): online evaluation then needs to be off.
    """

    dataset: DatasetName = "bundled"
    root: str | None = None
    download: bool = False
    train_per_class: int | None = None
    val_per_class: int | None = None
    in_memory: InMemory = False
    decode_size: int | None = None

    def __post_init__(self) -> None:
        for key in ("train_per_class", "val_per_class", "decode_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} must be >= 1 (or null), got {value}")
        self.splits: DatasetSplits = build_splits(self.dataset, self.root, self.download)
        if self.train_per_class is not None:
            same = self.splits.bank is self.splits.pretrain
            self.splits.pretrain = first_per_class(self.splits.pretrain, self.train_per_class)
            self.splits.bank = self.splits.pretrain if same else first_per_class(self.splits.bank,
                                                                                 self.train_per_class)
        if self.val_per_class is not None and self.splits.val is not None:
            self.splits.val = first_per_class(self.splits.val, self.val_per_class)
        self.class_names = classes_of(self.splits.bank)
        self.labelled = self.splits.num_classes >= 2
        self.num_classes = self.splits.num_classes if self.labelled else None
        if not self.labelled:
            print(f"wcl: {self.root or self.dataset} has a single class folder: its images are treated as "
                  "unlabelled (no validation, no online evaluation)", file=sys.stderr, flush=True)
        self.skipped = SharedInt(0)  # undecodable images replaced so far (skip_corrupt)
        self._memory: dict[str, InMemoryImages] = {}
        self._pixels: dict[tuple[int, torch.device], Tensor] = {}

    @property
    def pretrain(self) -> Dataset:
        return self.splits.pretrain

    def split(self, name: Literal["pretrain", "bank", "val"]) -> Dataset:
        ds = getattr(self.splits, name)
        if ds is None:
            raise ConfigError(f"dataset {self.dataset!r} at {self.root} has no validation split (val/ or test/); "
                              "add one, or turn online evaluation off.")
        return ds

    def labels(self, name: Literal["pretrain", "bank", "val"]) -> Tensor:
        """True labels of a split (-1 where unknown)."""
        return labels_of(self.split(name))

    def memory(self, name: Literal["pretrain", "bank", "val"], num_workers: int = 0,
               skipped: SharedInt | None = None) -> InMemoryImages:
        """A split decoded once into host memory (cached; the bank is the pretraining split when they coincide)."""
        if name == "bank" and self.splits.bank is self.splits.pretrain:
            name = "pretrain"
        if name not in self._memory:
            ds = self.split(name)
            if rank() == 0:
                print(f"wcl: decoding {len(ds)} {name} images into memory", file=sys.stderr, flush=True)  # type: ignore
            self._memory[name] = InMemoryImages(ds, self.decode_size, num_workers, skipped)
        return self._memory[name]

    def pixels(self, name: Literal["pretrain", "bank", "val"], device: torch.device | str = "cpu",
               num_workers: int = 0, skipped: SharedInt | None = None) -> Tensor:
        """The uint8 N×3×H×W tensor of a split on ``device`` (one copy per device)."""
        images = self.memory(name, num_workers, skipped).images
        device = torch.device(device)
        key = (id(images), device)
        if key not in self._pixels:
            self._pixels[key] = images.to(device)
        return self._pixels[key]
