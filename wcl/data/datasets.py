"""Dataset catalogue: CIFAR-10/100, STL-10, any ImageFolder, and the bundled CIFAR-10 subset; subsets and labels.

Builders return datasets of ``(PIL image, label)`` pairs (label -1 where unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from wcl.errors import DataError

DatasetName = Literal["bundled", "cifar10", "cifar100", "stl10", "imagefolder"]

BUNDLED_ROOT = Path(__file__).parent / "bundled" / "cifar10_mini"
_NUM_CLASSES = {"bundled": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}
_VAL_DIRS = ("val", "test")


@dataclass
class DatasetSplits:
    """``pretrain``: images to pretrain on; ``bank``: labelled train images for kNN (eval transform);
    ``val``: labelled evaluation images (None when the dataset has none)."""

    pretrain: Dataset
    bank: Dataset
    val: Dataset | None
    num_classes: int


def rgb_loader(path: str) -> Image.Image:
    """Open any image as 3-channel RGB (grayscale, palette, RGBA, 16-bit are converted)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16/32-bit grayscale: rescale to 8 bits instead of clipping at 255.
            arr = np.asarray(img, dtype=np.float32)
            hi = float(arr.max()) or 1.0
            img = Image.fromarray(np.round(arr / hi * 255).astype(np.uint8), mode="L")
        return img.convert("RGB")


def _layout_help(root: Path, name: str) -> str:
    return (
        f"expected an ImageFolder layout under {root}: {root}/train/<class>/<image> and, for evaluation, "
        f"{root}/val/<class>/<image> (or test/). Point --data.root at that folder"
        + (" or pass --data.download true to fetch it with torchvision" if name in _NUM_CLASSES else "")
        + "."
    )


def _image_folder(path: Path) -> tvd.ImageFolder:
    try:
        return tvd.ImageFolder(str(path), loader=rgb_loader)
    except FileNotFoundError as err:
        raise DataError(f"cannot read the image folder {path}: {err}. Each class folder needs at least one "
                        "image (.jpg, .png, ...); remove empty class folders.") from err


class Unlabelled(Dataset):
    """An ImageFolder with a single class folder: images without labels (label -1)."""

    def __init__(self, base: tvd.ImageFolder) -> None:
        self.base, self.samples, self.root = base, base.samples, base.root
        self.targets = [-1] * len(base)
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return self.base[i][0], -1


def _folder_splits(root: Path, name: str) -> DatasetSplits:
    train = _image_folder(root / "train")
    if len(train.classes) == 1:  # unlabelled images in one folder: pretraining only, no evaluation split
        unlabelled = Unlabelled(train)
        return DatasetSplits(unlabelled, unlabelled, None, 0)
    val_dir = next(iter(held_out_dirs(root)), None)  # the validation split: val/, else test/
    val = held_out_folder(val_dir, train.classes) if val_dir is not None else None
    return DatasetSplits(train, train, val, len(train.classes))


def held_out_dirs(root: Path) -> list[Path]:
    """The held-out folders of an image-folder root that exist (``val/``, ``test/``), in that order."""
    return [root / d for d in _VAL_DIRS if (root / d).is_dir()]


def held_out_folder(path: Path, classes: list[str]) -> tvd.ImageFolder:
    """A held-out image folder whose class folders must be those of ``train/`` (``classes``)."""
    ds = _image_folder(path)
    if ds.classes != classes:
        raise DataError(f"the class folders of {path} differ from those of {path.parent / 'train'}; "
                        "both splits need the same class names.")
    return ds


class _Relabel(Dataset):
    """Turns torchvision datasets with ``(img, target)`` into ``(PIL RGB, int)`` pairs."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img, y = self.base[i]
        return img.convert("RGB"), int(y)


def build_splits(name: DatasetName, root: str | None = None, download: bool = False) -> DatasetSplits:
    """The pretraining, kNN-bank and validation datasets of ``name`` (see :data:`DatasetName`)."""
    if name == "bundled":
        return _folder_splits(BUNDLED_ROOT, name)
    if name not in (*_NUM_CLASSES, "imagefolder"):
        raise DataError(f"unknown dataset {name!r}; choose one of bundled, cifar10, cifar100, stl10, imagefolder")
    if root is None:
        raise DataError(f"dataset {name!r} needs --data.root (the folder that holds it).")
    path = Path(root).expanduser()
    if not path.is_dir() and not download:
        raise DataError(f"dataset root {path} does not exist. " + _layout_help(path, name))
    if (path / "train").is_dir():
        # Any dataset may be given as an ImageFolder tree (e.g. CIFAR-10 exported as JPEG files).
        return _folder_splits(path, name)
    if name == "imagefolder":
        raise DataError(f"dataset root {path} has no train/ folder. " + _layout_help(path, name))
    try:
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            train = _Relabel(cls(str(path), train=True, download=download))
            val = _Relabel(cls(str(path), train=False, download=download))
            return DatasetSplits(train, train, val, _NUM_CLASSES[name])
        pretrain = _Relabel(tvd.STL10(str(path), split="train+unlabeled", download=download))
        bank = _Relabel(tvd.STL10(str(path), split="train", download=download))
        val = _Relabel(tvd.STL10(str(path), split="test", download=download))
        return DatasetSplits(pretrain, bank, val, _NUM_CLASSES[name])
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"could not load {name} from {path}: {err}. " + _layout_help(path, name)) from err
    except OSError as err:  # download=True without a network, or an unwritable root
        raise DataError(f"could not download {name} into {path}: {err}. Download it on a machine with a network "
                        "(or copy it there) and point --data.root at it, without --data.download.") from err


def targets_of(ds: Dataset) -> list[int]:
    """Labels of every sample without decoding images (ImageFolder, CIFAR, STL-10, Subset)."""
    if isinstance(ds, Subset):
        parent = targets_of(ds.dataset)
        return [parent[i] for i in ds.indices]
    if isinstance(ds, _Relabel):
        return targets_of(ds.base)
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return [int(y) for y in getattr(ds, attr)]
    raise TypeError(f"cannot read labels of {type(ds).__name__} without decoding it")


def classes_of(ds: Dataset) -> list[str]:
    """Class names of a dataset (through Subset and wrappers); numbers when the dataset names none."""
    while True:
        if hasattr(ds, "classes"):
            return list(ds.classes)
        if isinstance(ds, Subset):
            ds = ds.dataset
        elif isinstance(ds, _Relabel):
            ds = ds.base
        else:
            return [str(c) for c in sorted({y for y in targets_of(ds) if y >= 0})]


def source_of(ds: Dataset, i: int) -> str:
    """Where sample ``i`` comes from (a file path when known), for error messages."""
    while isinstance(ds, Subset):
        ds, i = ds.dataset, ds.indices[i]
    samples = getattr(ds, "samples", None)
    return samples[i][0] if samples is not None else f"sample {i} of {type(ds).__name__}"


def load_sample(ds: Dataset, i: int) -> tuple[Image.Image, int]:
    """``ds[i]`` with unreadable images reported by file name."""
    try:
        return ds[i]
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot decode image {source_of(ds, i)}: {err}. Remove or replace the file.") from err
