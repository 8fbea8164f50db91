"""``ImageData``: what both data modules share — the data source, batch sizes, loaders, and the evaluation view."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder

from wcl.data.augment import Augmentations, eval_transform
from wcl.data.datasets import DatasetName, held_out_dirs, held_out_folder
from wcl.data.loaders import EvalBatches, ignore_sigint
from wcl.data.samples import EvalSamples
from wcl.data.sampling import EpochSampler, SharedInt
from wcl.data.source import DataSource, InMemory
from wcl.data.subsets import first_per_class
from wcl.distributed import rank, world_size
from wcl.errors import ConfigError


class ImageData(LightningDataModule):
    """Base of :class:`~wcl.data.WCLDataModule` and :class:`~wcl.data.LabelledDataModule`.

    Args:
        dataset: ``bundled`` (a CIFAR-10 subset shipped in the package, no root needed), ``cifar10``,
            ``cifar100``, ``stl10`` (pretrains on train+unlabeled) or ``imagefolder``.
        root: folder holding the dataset: an ImageFolder tree (``train/<class>/…``, ``val/`` or ``test/``), or
            torchvision's files for cifar10/cifar100/stl10.
        download: let torchvision download cifar10/cifar100/stl10 into ``root``.
        batch_size: per-device batch of the training loader (the global batch is this × devices × nodes).
        eval_batch_size: per-device batch of the evaluation loaders.
        num_workers: DataLoader worker processes (0: load in the training process).
        pin_memory: pin host batches for faster copies (only with CUDA).
        persistent_workers: keep the workers alive between epochs.
        augment: the augmentation (crop size and normalisation also define the evaluation view).
        eval_resize: short side before the centre crop in evaluation (default: the crop size).
        train_per_class: keep only the first N training images of each class (also the kNN bank).
        val_per_class: keep only the first N val images of each class (in ``predict``, of ``test/`` too).
        in_memory: ``true`` — decode the pretraining images once into one uint8 tensor in host memory;
            ``device`` — the same tensor on the training device (with ``augment_on: device``; evaluation images
            too), so no image crosses the host–device link during training. For datasets that fit (CIFAR: 150 MB).
        decode_size: resize the short side to this and centre-crop when decoding to tensors (``augment_on:
            device`` or ``in_memory``; needed when images differ in size).
        skip_corrupt: replace undecodable images by the next readable one and count them (logged as
            ``data/skipped_images``) instead of stopping with an error naming the file.
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
        in_memory: InMemory = False,
        decode_size: int | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__()
        resize = 1 if eval_resize is None else eval_resize  # None: no resize
        for key, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("num_workers", num_workers, 0), ("eval_resize", resize, 1)):
            if value < low:
                raise ConfigError(f"data.{key} must be >= {low}, got {value}")
        # Resolving the source here checks the root at start-up (before any process is launched) and gives
        # num_classes to the model through the CLI's argument link.
        self.source = DataSource(dataset, root, download, train_per_class, val_per_class, in_memory, decode_size)
        self.num_classes, self.class_names = self.source.num_classes, self.source.class_names
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory and torch.cuda.is_available()
        self.persistent_workers = persistent_workers and num_workers > 0
        self.augment = augment if augment is not None else Augmentations()
        self.eval_resize, self.in_memory, self.skip_corrupt = eval_resize, in_memory, skip_corrupt
        # Counts images replaced because they could not be decoded (None: such an image stops the run).
        self.skipped = self.source.skipped if skip_corrupt else None
        self._device: torch.device | None = None  # where in_memory: device keeps its images
        self.epoch = SharedInt(0)  # published to the data workers by the sampler
        self._sampler: EpochSampler | None = None
        self._resume: dict[str, Any] | None = None

    def memory_device(self) -> torch.device:
        """Where in-memory images are kept: the training device with ``in_memory: device``, else the host."""
        on_device = self.in_memory == "device" and self._device is not None
        return self._device if on_device else torch.device("cpu")  # type: ignore[return-value]

    def setup(self, stage: str) -> None:
        if self.trainer is not None:  # the training device, where in_memory: device keeps the images
            self._device = self.trainer.strategy.root_device

    def new_sampler(self, num_samples: int, seed: int, drop_last: bool = True) -> EpochSampler:
        """The training loader's sampler, positioned where a restored checkpoint left off."""
        self._sampler = EpochSampler(num_samples, self.batch_size, seed, self.epoch, drop_last)
        if self._resume is not None:
            self._sampler.load_state_dict(self._resume)
            self._resume = None
        return self._sampler

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: the training order's epoch and position (also when a checkpoint is written at an
        epoch's end, where Lightning starts the next epoch's iterator before it calls ``set_epoch``)."""
        return {"sampler": self._sampler.state_dict()} if self._sampler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = state.get("sampler")

    def _loader(self, ds: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        """A DataLoader with this module's worker settings (``kwargs`` override them)."""
        settings = {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                    "persistent_workers": self.persistent_workers, **kwargs}
        settings["persistent_workers"] &= settings["num_workers"] > 0
        if settings["num_workers"] > 0:
            settings.setdefault("worker_init_fn", ignore_sigint)
        return DataLoader(ds, batch_size=batch_size, **settings)

    def eval_loader(self, split: Literal["pretrain", "bank", "val"], shard: bool = False) -> Any:
        """Evaluation batches ``{"image", "index", "label"}`` of a split (eval transform). Decoding workers
        serve every sample unless ``shard`` asks for this rank's share only (every ``world``-th sample, no padding:
        for evaluations that merge ranks themselves); in-memory images are always served in shares."""
        if self.in_memory:
            pixels = self.source.pixels(split, self.memory_device(), self.num_workers, self.skipped)
            return EvalBatches(pixels, self.source.labels(split), self.eval_batch_size)
        ds = self.eval_dataset(split)
        if shard and world_size() > 1:
            ds = Subset(ds, range(rank(), len(ds), world_size()))
        return self._loader(ds, self.eval_batch_size)

    def predict_splits(self) -> dict[str, Dataset]:
        """What ``python -m wcl predict`` embeds, by output folder: ``train`` (the pretraining images) and each
        held-out split: for an image folder every one of ``val/`` and ``test/`` that exists (``val_per_class``
        applies to each), for CIFAR and STL-10 their test split as ``test``."""
        splits = {"train": self.source.pretrain}
        val = self.source.splits.val
        if val is None:
            return splits
        base = val
        while isinstance(base, Subset):
            base = base.dataset
        if not (isinstance(base, ImageFolder) and getattr(base, "root", None)):
            return {**splits, "test": val}
        val_dir = Path(base.root)
        for folder in held_out_dirs(val_dir.parent):
            if folder == val_dir:
                splits[folder.name] = val
                continue
            other = held_out_folder(folder, base.classes)
            per_class = self.source.val_per_class
            splits[folder.name] = first_per_class(other, per_class) if per_class is not None else other
        return splits

    def predict_dataloader(self) -> list[DataLoader]:
        """One loader per :meth:`predict_splits` entry, ``{"image", "index", "label"}`` with the eval transform, in
        dataset order (Lightning shards it over ranks without padding)."""
        return [self._loader(self.eval_samples(ds), self.eval_batch_size, persistent_workers=False)
                for ds in self.predict_splits().values()]

    def eval_dataset(self, split: Literal["pretrain", "bank", "val"]) -> EvalSamples:
        """A split's samples ``{"image", "index", "label"}`` with the evaluation transform, decoded from files."""
        return self.eval_samples(self.source.split(split))

    def eval_samples(self, base: Dataset) -> EvalSamples:
        """``base``'s ``(PIL, label)`` pairs as ``{"image", "index", "label"}`` with the evaluation transform."""
        return EvalSamples(base, eval_transform(self.augment, self.eval_resize), self.skipped)

    def eval_view(self, images: Tensor) -> Tensor:
        """uint8 B×3×H×W (in-memory images, on any device) → the evaluation view, normalized float."""
        size, resize = self.augment.crop_size, self.eval_resize or self.augment.crop_size
        x = images.float().div_(255)
        if min(x.shape[-2:]) != resize:
            h, w = x.shape[-2:]
            scale = resize / min(h, w)
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bicubic", antialias=True,
                              align_corners=False).clamp_(0, 1)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
        mean = x.new_tensor(self.augment.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.augment.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and "image" in batch and batch["image"].dtype == torch.uint8:
            batch["image"] = self.eval_view(batch["image"])
        return batch
