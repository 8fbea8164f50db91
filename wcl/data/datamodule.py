"""The two data modules: ``WCLDataModule`` (pretraining views) and ``LabelledDataModule`` (probe / fine-tune)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from wcl.constraints import NonNegativeInt, PositiveInt, check_constraints
from wcl.data.augment import Augmentations, EpochViews, cpu_view, eval_transform, moco_v2
from wcl.data.base import ImageData
from wcl.data.batched import BatchedViews
from wcl.data.crops import CropOrigin, CropSource
from wcl.data.datasets import source_of
from wcl.data.loaders import EvalBatches, IndexBatches, ResumableLoader
from wcl.data.samples import EvalSamples, RawImage, TrainSamples, collate_raw
from wcl.data.sampling import CROP, VIEW, sample_keys
from wcl.data.subsets import MaskedLabels, check_label_choice, describe_subset, labelled_subset
from wcl.errors import ConfigError


class WCLDataModule(ImageData):
    """Pretraining data: two augmented views (+ small crops) of each image; class defaults, a --config overrides them.

    Training batches reach ``training_step`` as ``{"views": [x1, x2] (B×3×S×S each), "index": LongTensor[B],
    "label": LongTensor[B]}`` (label -1 where unknown), plus ``"small": [c1, …, cm]`` (B×3×s×s) with crops.
    ``val_dataloader`` is the val split; ``eval_loader("bank")`` the train split with the eval transform (the
    online kNN's bank).

    Few labels: with ``label_fraction`` or ``subset_file`` only those training images keep their label (the same
    images :class:`LabelledDataModule` selects for the same split and seed; the list is written next to the
    checkpoints); every other one has label -1, and ``"true_label"`` carries the dataset's labels for diagnostics
    (weak-label purity) only. ``model.label_graph`` puts the known labels into the weak-label graph; the online
    linear classifier trains on them alone.

    The arguments below, and those of :class:`~wcl.data.base.ImageData` (dataset, root, batch_size, …): ``python -m
    wcl fit --data.help wcl.WCLDataModule`` lists them all with the class's defaults; a ``--config`` sets its own.

    Args:
        seed: seeds the epoch order and every sample's augmentation as a function of (seed, epoch, index), so a
            resumed run reproduces an uninterrupted one exactly, on either augmentation path.
        augment_on: ``cpu`` — data-loader workers build the views with torchvision; ``device`` — workers (or, with
            ``in_memory``, no workers at all) deliver uint8 images and the views are made batched on the batch's
            device (:class:`~wcl.data.batched.BatchedViews`: the same augmentation, one call for all views).
        augment_warmup_epochs: use ``warmup_augment`` for this many first epochs.
        warmup_augment: the augmentation of the warm-up epochs (default: MoCo v2's weaker augmentation of the
            same size, as in the official WCL code).
        num_small_crops: low-resolution crops per sample (0 = two views only).
        small_crop_size: size of the low-resolution crops in pixels.
        small_crop_scale: random-resized-crop scale range of the low-resolution crops.
        small_crop_source: ``neighbors`` (WCL: cut from the sample's nearest neighbours of the previous epoch,
            found by the ``wcl.callbacks.KnnMultiCrop`` callback) or ``self`` (cut from the sample itself).
        first_epoch: crops before a neighbour table exists: ``self`` (from the sample itself) or ``none``.
        label_fraction: keep the labels of this fraction of each class's training images (the others count as
            unknown), as in :class:`LabelledDataModule` (drawn with ``seed``).
        subset_file: alternatively, a text file naming the images whose labels are known, as in
            :class:`LabelledDataModule`.
        bank: the kNN bank (online and ``wcl.KNNEval``): ``labelled`` — the known labels only (every training
            image without a subset), so "kNN with 1 % labels" is ``label_fraction: 0.01``; ``all`` — every training
            image with its dataset label; ``masked`` — every training image, the unknown ones with label -1 (the
            graph of ``wcl.PropagationEval``).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        augment_on: Literal["cpu", "device"] = "cpu",
        augment_warmup_epochs: int = 0,
        warmup_augment: Augmentations | None = None,
        num_small_crops: NonNegativeInt = 0,
        small_crop_size: PositiveInt = 16,
        small_crop_scale: tuple[float, float] = (0.14, 1.0),
        small_crop_source: CropOrigin = "neighbors",
        first_epoch: Literal["self", "none"] = "self",
        label_fraction: float | None = None,
        subset_file: str | None = None,
        bank: Literal["labelled", "all", "masked"] = "labelled",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_constraints(WCLDataModule.__init__, locals(), "data.")
        check_label_choice(label_fraction, subset_file)
        self._labelled(label_fraction, subset_file, seed, bank)
        if self.batch_size < 2:
            raise ConfigError(
                f"data.batch_size is {self.batch_size}, but WCL needs at least 2 samples per step: the 1-nearest-"
                "neighbour graph and the contrastive negatives are undefined for one sample. "
                "Set --data.batch_size 2 or more.")
        if self.in_memory == "device" and augment_on != "device":
            raise ConfigError("data.in_memory: device keeps the images on the training device, where only the "
                              "batched augmentation can read them; set data.augment_on: device (or in_memory: "
                              "true to keep them in host memory).")
        if augment_warmup_epochs < 0:
            raise ConfigError(f"data.augment_warmup_epochs must be >= 0, got {augment_warmup_epochs}")
        self.seed, self.augment_on = seed, augment_on
        warmup = warmup_augment or moco_v2(self.augment)
        self.views = EpochViews(self.augment, warmup if augment_warmup_epochs > 0 else None, augment_warmup_epochs)
        self.crops = CropSource(num_small_crops, small_crop_size, tuple(small_crop_scale), small_crop_source,
                                first_epoch)
        self._batched = self.views.map(lambda a: (BatchedViews(a), BatchedViews(a, small_crop_size, self.crops.scale)))

    def _labelled(self, label_fraction: float | None, subset_file: str | None, seed: int, bank: str) -> None:
        """The known labels: ``self.known_subset`` (a Subset of the bank split, or None) and ``self.known`` (a bool mask
        over the pretraining images, or None when every label is known)."""
        self.label_fraction, self.subset_file, self.bank = label_fraction, subset_file, bank
        self.known_subset, self.known = None, None
        self.label_subset = label_fraction is not None or subset_file is not None
        if not self.label_subset:
            return
        if self.num_classes is None:
            raise ConfigError(f"data.label_fraction / data.subset_file need labelled data, but {self.source.dataset!r} "
                              f"at {self.source.root} has a single class folder; point --data.root at labelled data.")
        splits = self.source.splits
        # STL-10's train+unlabeled starts with its train images, in order: bank rows are pretraining rows.
        if splits.bank is not splits.pretrain and self.source.dataset != "stl10":
            raise ConfigError(f"data.label_fraction needs the labelled images among the pretraining images; "
                              f"{self.source.dataset!r} pretrains on another split.")
        self.known_subset = labelled_subset(splits.bank, label_fraction, subset_file, seed, self.class_names)
        self.known = torch.zeros(len(splits.pretrain), dtype=torch.bool)  # type: ignore[arg-type]
        self.known[torch.as_tensor(self.known_subset.indices, dtype=torch.long)] = True

    def labelled_names(self) -> list[str] | None:
        """Sources of the known-label images when a fraction or subset file selected them."""
        if self.known_subset is None:
            return None
        return [source_of(self.known_subset, i) for i in range(len(self.known_subset))]

    def protocol(self) -> str | None:
        """The labels this run used, for the end-of-fit summary; ``None`` for the usual case (every label, kNN
        bank = the training images), which needs no line."""
        if self.num_classes is None:
            return "none (unlabelled data: no kNN bank)"
        if self.known_subset is None:
            return None
        total = len(self.source.split("bank"))  # type: ignore[arg-type]
        known = describe_subset(self.known_subset, self.label_fraction, self.subset_file, self.seed, total)
        where = {"labelled": "those images", "all": f"all {total} images (data.bank: all)",
                 "masked": f"all {total} images, the unknown labels masked (data.bank: masked)"}[self.bank]
        return f"known labels in pretraining: {known}; kNN bank: {where}"

    def _train_labels(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(labels with -1 where unknown, the true labels or None when nothing is masked) of the pretraining rows."""
        true = self.source.labels("pretrain")
        if self.known is None:
            return true, None
        return torch.where(self.known, true, torch.full_like(true, -1)), true

    def eval_dataset(self, split: Literal["pretrain", "bank", "val"]) -> Any:
        if split == "bank" and self.known_subset is not None and self.bank == "labelled":
            return self.eval_samples(self.known_subset)
        if split == "bank" and self.known_subset is not None and self.bank == "masked":
            bank = self.source.split("bank")
            return self.eval_samples(MaskedLabels(bank, self.known[:len(bank)]))  # type: ignore[arg-type]
        return super().eval_dataset(split)

    def eval_loader(self, split: Literal["pretrain", "bank", "val"], shard: bool = False) -> Any:
        if split == "bank" and self.known_subset is not None and self.bank != "all" and self.in_memory:
            pixels = self.source.pixels("bank", self.memory_device(), self.num_workers, self.skipped)
            labels = self.source.labels("bank")
            if self.bank == "masked":
                masked = torch.where(self.known[:len(labels)], labels, torch.full_like(labels, -1))
                return EvalBatches(pixels, masked, self.eval_batch_size)
            rows = torch.as_tensor(self.known_subset.indices, dtype=torch.long)
            return EvalBatches(pixels[rows.to(pixels.device)], labels[rows], self.eval_batch_size)
        return super().eval_loader(split, shard)

    def train_dataloader(self) -> Any:
        n = len(self.source.pretrain)  # type: ignore[arg-type]
        if n < self.batch_size:
            raise ConfigError(f"the training set has {n} images, fewer than data.batch_size={self.batch_size}; "
                              "lower the batch size.")
        self.crops.count()  # a missing neighbour table fails here, in the main process
        sampler = self.new_sampler(n, self.seed)
        if self.in_memory and self.augment_on == "device":
            pixels = self.source.pixels("pretrain", self.memory_device(), self.num_workers, self.skipped)
            labels, true = self._train_labels()
            return IndexBatches(pixels, labels, sampler, self.crops, self.seed, true)
        base: Dataset = self.source.pretrain
        if self.in_memory:
            base = self.source.memory("pretrain", self.num_workers, self.skipped)
        raw = self.augment_on == "device"
        decode = RawImage(self.source.decode_size)
        views = self.views.map(lambda a: decode if raw else cpu_view(a))
        crop_view = self.views.map(lambda a: decode if raw else cpu_view(a, self.crops.size, self.crops.scale))
        ds = TrainSamples(base, views, self.crops, crop_view, raw, self.seed, self.epoch,
                          self.skipped, self.known)
        return ResumableLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                               num_workers=self.num_workers, pin_memory=self.pin_memory,
                               persistent_workers=self.persistent_workers, collate_fn=collate_raw if raw else None)

    def val_dataloader(self) -> Any:
        return [] if self.source.splits.val is None else self.eval_loader("val")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches: the sampler's position advances (it is what a checkpoint resumes from); on the
        device path the uint8 images become the two views and the crops, all on the batch's device."""
        if not isinstance(batch, dict) or not {"raw", "views"} & batch.keys():
            return super().on_after_batch_transfer(batch, dataloader_idx)
        sampler = self._sampler
        assert sampler is not None, "training batches come from train_dataloader()"
        sampler.advance()
        if "raw" in batch:
            views, small = self._batched(sampler.epoch)
            index, b = batch["index"], batch["index"].shape[0]
            pair = torch.arange(2 * b, device=index.device)
            keys = sample_keys(index.repeat(2), self.seed, sampler.epoch, VIEW + pair.div(b, rounding_mode="floor"))
            batch["views"] = list(views(batch.pop("raw"), pair % b, keys).split(b))
            crops = batch.pop("crops_raw", None)
            if crops is not None and crops.shape[1] > 0:
                m = crops.shape[1]
                cut = torch.arange(b * m, device=index.device)
                keys = sample_keys(index.repeat_interleave(m), self.seed, sampler.epoch, CROP + cut % m)
                out = small(crops.flatten(0, 1), cut, keys)
                batch["small"] = list(out.view(b, m, *out.shape[1:]).unbind(1))
        return batch


class LabelledDataModule(ImageData):
    """Labelled data for the linear probe and fine-tuning: ``{"image", "index", "label"}`` batches of the labelled
    training images (STL-10: train, not unlabeled) and the val split.

    The arguments below, and those of :class:`~wcl.data.base.ImageData` (dataset, root, batch_size, …): ``python -m
    wcl fit --data.help wcl.LabelledDataModule`` lists them all with the class's defaults; a ``--config`` sets its
    own.

    Args:
        train_augment: ``crop_flip`` (random-resized-crop + horizontal flip, the paper's linear / fine-tune
            protocol) or ``none`` (the eval transform).
        label_fraction: keep this fraction of each class's training images (at least one per class), drawn
            with ``seed``; None keeps all. The same images as :class:`WCLDataModule`'s known labels for the same
            split and seed (:func:`~wcl.data.subsets.labelled_subset`).
        subset_file: alternatively, a text file naming the labelled training images, one per line (file name,
            or path relative to the split folder), e.g. the standard ImageNet 1 % / 10 % lists; it must name at
            least one image of every class.
        seed: seed of the ``label_fraction`` draw, of the epoch order and of the crops.
    """

    def __init__(self, *, train_augment: Literal["crop_flip", "none"] = "crop_flip",
                 label_fraction: float | None = None, subset_file: str | None = None, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_label_choice(label_fraction, subset_file)
        if self.num_classes is None:
            raise ConfigError(f"{self.source.dataset!r} at {self.source.root} has fewer than two class folders, so "
                              "there are no labels to probe or fine-tune on; point --data.root at labelled data.")
        self.source.split("val")  # fails with a clear message when there is none
        train = self.source.split("bank")
        subset = labelled_subset(train, label_fraction, subset_file, seed, self.class_names)
        self._subset_used = subset is not None
        self._protocol = describe_subset(subset, label_fraction, subset_file, seed, len(train))  # type: ignore[arg-type]
        self.train_base, self.train_augment, self.seed = subset if subset is not None else train, train_augment, seed
        self._cached: tuple[Dataset, Dataset] | None = None

    def labelled_names(self) -> list[str] | None:
        """Sources of the labelled training images when a fraction or subset file selected them."""
        if not self._subset_used:
            return None
        return [source_of(self.train_base, i) for i in range(len(self.train_base))]  # type: ignore[arg-type]

    def protocol(self) -> str | None:
        """The labels this run trained on, for the end-of-fit summary; ``None`` when it used every label."""
        return f"trained on {self._protocol}" if self._subset_used else None

    def cache_source(self, split: Literal["train", "val"]) -> Any:
        """Un-augmented, unsharded loader of a split, for feature caching."""
        base = self.train_base if split == "train" else self.source.split("val")
        return self._loader(self.eval_samples(base), self.eval_batch_size)

    def use_cached(self, train: Dataset, val: Dataset) -> None:
        """Serve these (feature) datasets instead of images from now on."""
        self._cached = (train, val)

    def train_dataloader(self) -> ResumableLoader:
        n = len(self._cached[0] if self._cached else self.train_base)  # type: ignore[arg-type]
        # drop_last only when it keeps at least one batch (1 % subsets can be smaller than a batch).
        sampler = self.new_sampler(n, self.seed, drop_last=n >= 2 * self.batch_size)
        if self._cached is not None:
            return ResumableLoader(self._cached[0], batch_size=self.batch_size, sampler=sampler)
        aug = self.augment.crop_only()
        tf = cpu_view(aug) if self.train_augment == "crop_flip" else eval_transform(self.augment, self.eval_resize)
        ds = EvalSamples(self.train_base, tf, self.skipped, self.seed, self.epoch)
        return ResumableLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                               pin_memory=self.pin_memory, persistent_workers=self.persistent_workers)

    def val_dataloader(self) -> Any:
        if self._cached is not None:
            return self._loader(self._cached[1], self.eval_batch_size, num_workers=0)
        return self.eval_loader("val")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self._sampler is not None:
            self._sampler.advance()  # what a checkpoint resumes from
        return super().on_after_batch_transfer(batch, dataloader_idx)
