"""``WCLDataModule``: pretraining batches of augmented views, plus kNN-bank and validation loaders."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from wcl.data.datasets import (
    DatasetName,
    DatasetSplits,
    EvalDataset,
    ViewsDataset,
    build_splits,
    first_per_class,
)
from wcl.data.transforms import Augmentations, MultiView, eval_transform, view_transform
from wcl.errors import ConfigError


class WCLDataModule(LightningDataModule):
    """Data for WCL pretraining.

    Training batches: ``{"views": [x1, x2] (B×3×H×W each), "index": LongTensor[B], "label": LongTensor[B]}``
    (label -1 where unknown; it is used only for diagnostics). Validation has two loaders:
    0 = the kNN memory bank (train split, eval transform), 1 = the val split; their batches are
    ``{"image": B×3×H×W, "index", "label"}``.

    Args:
        dataset: ``bundled`` (a CIFAR-10 subset shipped in the package, no root needed), ``cifar10``,
            ``cifar100``, ``stl10`` (pretrains on train+unlabeled) or ``imagefolder``.
        root: folder holding the dataset: an ImageFolder tree (``train/<class>/…``, ``val/`` or ``test/``), or
            torchvision's files for cifar10/cifar100/stl10.
        download: let torchvision download cifar10/cifar100/stl10 into ``root``.
        batch_size: per-device batch of the training loader (the global batch is this × devices × nodes).
        eval_batch_size: per-device batch of the evaluation loaders.
        num_workers, pin_memory, persistent_workers: DataLoader settings (pinning only with CUDA).
        augment: the view augmentation.
        eval_resize: short side before the centre crop in evaluation (default: the crop size).
        train_per_class: keep only the first N images of each class for pretraining and the bank.
        val_per_class: keep only the first N images of each class for validation.
    """

    def __init__(
        self,
        dataset: DatasetName = "bundled",
        root: str | None = None,
        download: bool = False,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augment: Augmentations | None = None,
        eval_resize: int | None = None,
        train_per_class: int | None = None,
        val_per_class: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ConfigError(
                f"data.batch_size is {batch_size}, but WCL needs at least 2 samples per step: the 1-nearest-"
                "neighbour graph and the contrastive negatives are undefined for one sample. "
                "Set --data.batch_size 2 or more."
            )
        self.dataset, self.root, self.download = dataset, root, download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.augment = augment if augment is not None else Augmentations()
        self.eval_resize = eval_resize
        self.train_per_class, self.val_per_class = train_per_class, val_per_class
        # Resolving the splits here checks the root at start-up (before any process is launched) and gives
        # num_classes to the model through the CLI's argument link.
        self.splits: DatasetSplits = self._resolve()
        self.num_classes = self.splits.num_classes

    def _resolve(self) -> DatasetSplits:
        splits = build_splits(self.dataset, self.root, self.download)
        if self.train_per_class is not None:
            splits.pretrain = first_per_class(splits.pretrain, self.train_per_class)
            splits.bank = first_per_class(splits.bank, self.train_per_class)
        if self.val_per_class is not None and splits.val is not None:
            splits.val = first_per_class(splits.val, self.val_per_class)
        return splits

    def train_dataset(self) -> Dataset:
        return ViewsDataset(self.splits.pretrain, MultiView(view_transform(self.augment), 2))

    def eval_dataset(self, split: str) -> Dataset:
        base = self.splits.bank if split == "bank" else self.splits.val
        if base is None:
            raise ConfigError(f"dataset {self.dataset!r} at {self.root} has no validation split (val/ or test/).")
        return EvalDataset(base, eval_transform(self.augment, self.eval_resize))

    def _loader(self, ds: Dataset, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        if len(ds) < self.batch_size:
            raise ConfigError(f"the training set has {len(ds)} images, fewer than data.batch_size="
                              f"{self.batch_size}; lower the batch size.")
        return self._loader(ds, self.batch_size, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        if self.splits.val is None:
            return []
        return [self._loader(self.eval_dataset(s), self.eval_batch_size, train=False) for s in ("bank", "val")]
