"""``WCLDataModule``: pretraining batches of augmented views, plus kNN-bank and validation loaders."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from wcl.data.datasets import (
    DatasetName,
    DatasetSplits,
    EvalDataset,
    IndexSamples,
    InMemoryImages,
    RawImage,
    SmallCrops,
    ViewsDataset,
    build_splits,
    class_balanced_fraction,
    classes_of,
    first_per_class,
    named_subset,
    source_of,
    targets_of,
)
from wcl.data.device_augment import DeviceViews
from wcl.data.sampling import EpochSampler, SharedInt
from wcl.data.transforms import Augmentations, MultiView, eval_transform, view_transform
from wcl.errors import ConfigError
from wcl.multicrop import NeighborTable


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
        num_small_crops: low-resolution crops per sample (0 = two views only).
        small_crop_size, small_crop_scale: their size in pixels and random-resized-crop scale range.
        small_crop_source: ``neighbors`` (WCL: cut from the sample's K nearest neighbours of the previous
            epoch) or ``self`` (cut from the sample itself, as in SwAV multi-crop).
        neighbors_k: K of the neighbour table.
        first_epoch: crops before any table exists: ``self`` (from the sample itself) or ``none``.
        seed: seeds the epoch order and every sample's augmentation as a function of (seed, epoch, index), so a
            resumed run reproduces an uninterrupted one exactly.
        skip_corrupt: replace undecodable training images by the next readable one and count them
            (logged as ``data/skipped_images``) instead of stopping with an error naming the file.
        augment_on: ``cpu`` — workers build the augmented views (torchvision); ``device`` — workers only decode
            uint8 images and every augmentation (views and low-res crops) runs batched on the batch's device with
            kornia in ``on_after_batch_transfer``, independent parameters per sample. The ``cpu`` path alone makes
            a sample's augmentation a function of (seed, epoch, index) (exact resume).
        in_memory: ``true`` — decode the pretraining images once into one uint8 tensor N×3×H×W (small
            datasets) instead of reading files every step; ``device`` — the same tensor kept on the training device
            (needs ``augment_on: device``): the loader yields only indices and the batch's pixels are gathered on
            the device, so no image crosses the host–device link after the first step.
        decode_size: resize the short side to this and centre-crop when decoding for ``augment_on: device`` or
            ``in_memory`` (needed when images differ in size).
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
        num_small_crops: int = 0,
        small_crop_size: int = 16,
        small_crop_scale: tuple[float, float] = (0.14, 1.0),
        small_crop_source: Literal["self", "neighbors"] = "neighbors",
        neighbors_k: int = 5,
        first_epoch: Literal["self", "none"] = "self",
        seed: int = 0,
        skip_corrupt: bool = False,
        augment_on: Literal["cpu", "device"] = "cpu",
        in_memory: bool | Literal["device"] = False,
        decode_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ConfigError(
                f"data.batch_size is {batch_size}, but WCL needs at least 2 samples per step: the 1-nearest-"
                "neighbour graph and the contrastive negatives are undefined for one sample. "
                "Set --data.batch_size 2 or more."
            )
        if in_memory == "device" and augment_on != "device":
            raise ConfigError("data.in_memory: device keeps the images on the training device, where only the "
                              "batched augmentation can read them; set data.augment_on: device (or in_memory: "
                              "true to keep them in host memory).")
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
        self.class_names = classes_of(self.splits.bank)
        self.num_small_crops, self.small_crop_size = num_small_crops, small_crop_size
        self.small_crop_scale, self.small_crop_source = small_crop_scale, small_crop_source
        self.first_epoch = first_epoch
        self.seed, self.skip_corrupt = seed, skip_corrupt
        self.augment_on, self.in_memory, self.decode_size = augment_on, in_memory, decode_size
        self._device_views: tuple[DeviceViews, DeviceViews] | None = None
        self._device_images: Tensor | None = None  # in_memory: device
        self.epoch = SharedInt(0)
        self.skipped = SharedInt(0)
        n = len(self.splits.pretrain)  # type: ignore[arg-type]
        self.neighbor_table: NeighborTable | None = None
        if num_small_crops > 0 and small_crop_source == "neighbors":
            if not 0 < neighbors_k < n:
                raise ConfigError(f"data.neighbors_k={neighbors_k} must be between 1 and the dataset size - 1 "
                                  f"({n - 1}); lower it.")
            self.neighbor_table = NeighborTable(n, neighbors_k)

    def _resolve(self) -> DatasetSplits:
        splits = build_splits(self.dataset, self.root, self.download)
        if self.train_per_class is not None:
            splits.pretrain = first_per_class(splits.pretrain, self.train_per_class)
            splits.bank = first_per_class(splits.bank, self.train_per_class)
        if self.val_per_class is not None and splits.val is not None:
            splits.val = first_per_class(splits.val, self.val_per_class)
        return splits

    def train_labels(self) -> torch.Tensor:
        """True label of every pretraining sample (-1 where unknown), for diagnostics."""
        return torch.tensor(targets_of(self.splits.pretrain), dtype=torch.long)

    def train_dataset(self) -> Dataset:
        if self.in_memory and not isinstance(self.splits.pretrain, InMemoryImages):
            self.splits.pretrain = InMemoryImages(self.splits.pretrain, self.decode_size)
        on_device = self.augment_on == "device"
        small = None
        if self.num_small_crops > 0:
            crop = RawImage(self.decode_size) if on_device else view_transform(
                self.augment, self.small_crop_size, self.small_crop_scale)
            small = SmallCrops(transform=crop, num=self.num_small_crops, source=self.small_crop_source,
                               first_epoch=self.first_epoch, table=self.neighbor_table)
        if self.in_memory == "device":
            return IndexSamples(self.splits.pretrain, small, seed=self.seed, epoch=self.epoch)
        # On the device path "views" holds one uint8 image, expanded into the views after the transfer.
        views = MultiView(RawImage(self.decode_size), 1) if on_device else MultiView(view_transform(self.augment), 2)
        return ViewsDataset(self.splits.pretrain, views, small, seed=self.seed, epoch=self.epoch,
                            skipped=self.skipped if self.skip_corrupt else None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``augment_on: device``: uint8 training images → two augmented views (and the low-res crops)."""
        if not isinstance(batch, dict):
            return batch
        if self.in_memory == "device" and "index" in batch and not {"views", "image"} & batch.keys():
            images = self._images_on(batch["index"].device)
            batch["views"] = [images[batch["index"]]]
            if "small_source" in batch and batch["small_source"].numel():
                batch["small"] = [images[src] for src in batch["small_source"].unbind(1)]
        if not ("views" in batch and batch["views"][0].dtype == torch.uint8):
            return batch
        if self._device_views is None:
            self._device_views = (DeviceViews(self.augment),
                                  DeviceViews(self.augment, self.small_crop_size, self.small_crop_scale))
        views, small = self._device_views
        raw = batch["views"][0]
        batch["views"] = [views(raw), views(raw)]
        if batch.get("small"):
            batch["small"] = [small(x) for x in batch["small"]]
        return batch

    def _images_on(self, device: torch.device) -> Tensor:
        """``in_memory: device``: the decoded training images N×3×H×W (uint8), moved to ``device`` once."""
        if self._device_images is None or self._device_images.device != device:
            self._device_images = self.splits.pretrain.images.to(device)
        return self._device_images

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the epoch a resumed run starts in and the KNN multi-crop's neighbour table."""
        state: dict[str, Any] = {"epoch": self._resume_epoch()}
        if self.neighbor_table is not None:
            state["neighbor_table"] = self.neighbor_table.state_dict()
        return state

    def _resume_epoch(self) -> int:
        """Epoch of the next optimizer step: a checkpoint written after an epoch's last step resumes in the next."""
        trainer = self.trainer
        if trainer is None or not trainer.num_training_batches or trainer.num_training_batches == float("inf"):
            return self.epoch.get()
        steps = max(1, int(trainer.num_training_batches) // trainer.accumulate_grad_batches)
        return trainer.global_step // steps

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "epoch" in state:
            self.epoch.set(int(state["epoch"]))
        if self.neighbor_table is not None and "neighbor_table" in state:
            self.neighbor_table.load_state_dict(state["neighbor_table"])

    def eval_dataset(self, split: str) -> Dataset:
        base = self.splits.bank if split == "bank" else self.splits.val
        if base is None:
            raise ConfigError(f"dataset {self.dataset!r} at {self.root} has no validation split (val/ or test/).")
        return EvalDataset(base, eval_transform(self.augment, self.eval_resize))

    def _loader(self, ds: Dataset, batch_size: int, train: bool) -> DataLoader:
        return _loader(ds, batch_size, train, self.num_workers, self.pin_memory, self.persistent_workers)

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset()
        if len(ds) < self.batch_size:
            raise ConfigError(f"the training set has {len(ds)} images, fewer than data.batch_size="
                              f"{self.batch_size}; lower the batch size.")
        sampler = EpochSampler(ds, self.seed, self.epoch)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers)

    def val_dataloader(self) -> list[DataLoader]:
        if self.splits.val is None:
            return []
        return [self._loader(self.eval_dataset(s), self.eval_batch_size, train=False) for s in ("bank", "val")]


class LabelledDataModule(LightningDataModule):
    """Labelled data for the linear probe and fine-tuning: ``{"image", "index", "label"}`` batches.

    Args:
        dataset, root, download, batch_size, eval_batch_size, num_workers, pin_memory, persistent_workers,
            augment, eval_resize, train_per_class, val_per_class: as in ``WCLDataModule`` (``augment`` gives the
            crop size and normalisation).
        train_augment: ``crop_flip`` (random-resized-crop + horizontal flip, the paper's linear / fine-tune
            protocol) or ``none`` (the eval transform).
        label_fraction: keep this fraction of each class's training images (at least one per class), drawn
            with ``seed``; None keeps all.
        subset_file: alternatively, a text file naming the labelled training images, one per line (file name,
            or path relative to the split folder), e.g. the standard ImageNet 1 % / 10 % lists.
        seed: seed of the ``label_fraction`` draw.
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
        train_augment: Literal["crop_flip", "none"] = "crop_flip",
        label_fraction: float | None = None,
        subset_file: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
            raise ConfigError(f"data.label_fraction={label_fraction} is outside (0, 1]; use e.g. 0.01 or 0.1.")
        if label_fraction is not None and subset_file is not None:
            raise ConfigError("set either data.label_fraction or data.subset_file, not both.")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.augment = augment if augment is not None else Augmentations()
        self.eval_resize, self.train_augment = eval_resize, train_augment
        splits = build_splits(dataset, root, download)
        train = splits.bank  # labelled training images (STL-10: train, not unlabeled)
        if train_per_class is not None:
            train = first_per_class(train, train_per_class)
        if label_fraction is not None:
            train = class_balanced_fraction(train, label_fraction, seed)
        elif subset_file is not None:
            train = named_subset(train, subset_file)
        self._subset_used = label_fraction is not None or subset_file is not None
        val = splits.val
        if val is None:
            raise ConfigError(f"dataset {dataset!r} at {root} has no validation split (val/ or test/).")
        if val_per_class is not None:
            val = first_per_class(val, val_per_class)
        self.train_base, self.val_base = train, val
        self.num_classes = splits.num_classes
        self._cached: tuple[Dataset, Dataset] | None = None

    def labelled_names(self) -> list[str] | None:
        """Sources of the labelled training images when a fraction or subset file selected them."""
        if not self._subset_used:
            return None
        return [source_of(self.train_base, i) for i in range(len(self.train_base))]  # type: ignore[arg-type]

    def cache_source(self, split: Literal["train", "val"]) -> DataLoader:
        """Un-augmented loader of a split, for feature caching."""
        base = self.train_base if split == "train" else self.val_base
        ds = EvalDataset(base, eval_transform(self.augment, self.eval_resize))
        return _loader(ds, self.eval_batch_size, False, self.num_workers, self.pin_memory, False)

    def use_cached(self, train: Dataset, val: Dataset) -> None:
        """Serve these (feature) datasets instead of images from now on."""
        self._cached = (train, val)

    def train_dataloader(self) -> DataLoader:
        if self._cached is not None:
            return _loader(self._cached[0], self.batch_size, True, 0, False, False)
        if self.train_augment == "crop_flip":
            # The view transform with every photometric op off: random-resized crop + flip + normalize.
            crop_flip = replace(self.augment, crop_ratio=(3 / 4, 4 / 3), hflip_prob=0.5, jitter_prob=0.0,
                                grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
            tf = view_transform(crop_flip)
        else:
            tf = eval_transform(self.augment, self.eval_resize)
        # drop_last only when it keeps at least one batch (1 % subsets can be smaller than a batch).
        drop = len(self.train_base) >= 2 * self.batch_size  # type: ignore[arg-type]
        return _loader(EvalDataset(self.train_base, tf), self.batch_size, True, self.num_workers,
                       self.pin_memory, self.persistent_workers, drop_last=drop)

    def val_dataloader(self) -> DataLoader:
        if self._cached is not None:
            return _loader(self._cached[1], self.eval_batch_size, False, 0, False, False)
        ds = EvalDataset(self.val_base, eval_transform(self.augment, self.eval_resize))
        return _loader(ds, self.eval_batch_size, False, self.num_workers, self.pin_memory, self.persistent_workers)


def _loader(ds: Dataset, batch_size: int, train: bool, num_workers: int, pin_memory: bool,
            persistent_workers: bool, drop_last: bool | None = None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train if drop_last is None else drop_last,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers)
