"""Dataset catalogue: CIFAR-10/100, STL-10, any ImageFolder, and the bundled CIFAR-10 subset.

Builders return datasets of ``(PIL image, label)`` pairs (label -1 where unknown); the wrappers at the end add
the transforms and the dataset index that every batch carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T

from wcl.data.sampling import SharedInt, sample_seed
from wcl.errors import DataError
from wcl.multicrop import NeighborTable

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


def _folder_splits(root: Path, name: str) -> DatasetSplits:
    train = _image_folder(root / "train")
    val_dir = next((root / d for d in _VAL_DIRS if (root / d).is_dir()), None)
    val = _image_folder(val_dir) if val_dir is not None else None
    if val is not None and val.classes != train.classes:
        raise DataError(f"the class folders of {val_dir} differ from those of {root / 'train'}; "
                        "both splits need the same class names.")
    return DatasetSplits(train, train, val, len(train.classes))


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


class RawImage:
    """PIL image → uint8 tensor 3×H×W (for ``augment_on: device``), optionally resized on its short side and
    centre-cropped to ``size`` so that images of any size batch together."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.size is not None:
            img = T.CenterCrop(self.size)(T.Resize(self.size, interpolation=T.InterpolationMode.BICUBIC)(img))
        return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


class InMemoryImages(Dataset):
    """A dataset decoded once into one uint8 tensor N×3×H×W (``in_memory: true``); serves ``(PIL, label)`` like
    the dataset it copies, without per-step file I/O. All images must share one size (or give ``size``)."""

    def __init__(self, base: Dataset, size: int | None = None) -> None:
        raw = RawImage(size)
        images, self.targets = [], []
        for i in range(len(base)):  # type: ignore[arg-type]
            img, y = load_sample(base, i)
            images.append(raw(img))
            self.targets.append(int(y))
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) > 1:
            raise DataError(f"in_memory needs images of one size, found {len(shapes)} sizes (e.g. "
                            f"{sorted(shapes)[:2]}); set data.decode_size to resize them when decoding.")
        self.images = torch.stack(images)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i].permute(1, 2, 0).numpy()), self.targets[i]


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


def first_per_class(ds: Dataset, per_class: int) -> Subset:
    """The first ``per_class`` samples of each class, in dataset order (unlabelled samples are dropped)."""
    if per_class < 1:
        raise DataError(f"per-class subset size must be >= 1, got {per_class}")
    counts: dict[int, int] = {}
    keep = []
    for i, y in enumerate(targets_of(ds)):
        if y >= 0 and counts.get(y, 0) < per_class:
            counts[y] = counts.get(y, 0) + 1
            keep.append(i)
    return Subset(ds, keep)


def class_balanced_fraction(ds: Dataset, fraction: float, seed: int = 0) -> Subset:
    """A seeded draw of ``fraction`` of each class's samples (rounded, at least one per class)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(targets_of(ds)):
        if y >= 0:
            by_class.setdefault(y, []).append(i)
    g = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for y in sorted(by_class):
        members = by_class[y]
        n = max(1, round(fraction * len(members)))
        keep += [members[j] for j in torch.randperm(len(members), generator=g)[:n].tolist()]
    return Subset(ds, sorted(keep))


def named_subset(ds: Dataset, subset_file: str) -> Subset:
    """The samples named in ``subset_file`` (one per line: file name, or path relative to the split folder)."""
    path = Path(subset_file).expanduser()
    if not path.is_file():
        raise DataError(f"subset file {path} does not exist; give a text file with one image name per line.")
    wanted = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    base, offset = (ds.dataset, ds.indices) if isinstance(ds, Subset) else (ds, range(len(ds)))  # type: ignore
    samples = getattr(base, "samples", None)
    if samples is None:
        raise DataError("data.subset_file needs an ImageFolder-style dataset (files on disk); use "
                        "data.label_fraction for torchvision's CIFAR/STL files.")
    root = Path(base.root)
    lookup: dict[str, int] = {}
    for pos, i in enumerate(offset):
        p = Path(samples[i][0])
        lookup.setdefault(p.name, pos)
        lookup[str(p.relative_to(root))] = pos
    missing = [w for w in wanted if w not in lookup]
    if missing:
        raise DataError(f"{len(missing)} images named in {path} do not exist under {root} "
                        f"(first: {', '.join(missing[:3])}); check the file against data.root.")
    return Subset(ds, sorted({lookup[w] for w in wanted}))


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


@dataclass
class SmallCrops:
    """Low-resolution crops of a training sample.

    ``source``: ``self`` cuts them from the sample's own image; ``neighbors`` from an image drawn uniformly
    (fresh per crop and epoch) from the sample's K neighbours in ``table``. Until the table has been computed
    (first epoch), ``first_epoch`` says whether to cut them from the sample itself (``self``) or skip them
    (``none``).
    """

    transform: Callable[[Image.Image], torch.Tensor]
    num: int
    source: Literal["self", "neighbors"] = "neighbors"
    first_epoch: Literal["self", "none"] = "self"
    table: NeighborTable | None = None

    def sources(self, i: int) -> list[int]:
        """Dataset indices the crops of sample ``i`` are cut from, this epoch."""
        if self.source == "self":
            return [i] * self.num
        if self.table is None or self.table.epoch < 0:
            return [i] * self.num if self.first_epoch == "self" else []
        picks = torch.randint(self.table.k, (self.num,))
        return self.table.table[i, picks].tolist()


class ViewsDataset(Dataset):
    """Training samples: ``{"views": [C×H×W, …], "index": int, "label": int}``, plus with low-res crops
    ``"small": [C×h×w, …]``, ``"small_source": LongTensor[m]`` (the images they were cut from) and
    ``"table_epoch"`` (the epoch whose neighbour table was used, -1 for none).

    With ``epoch`` given, every random draw for sample i in epoch e is seeded by (seed, e, i), so the sample is
    the same whichever worker, rank or resumed run produces it. With ``skipped`` given, an undecodable image is
    replaced by the next readable one (its own index is reported) and counted instead of raising.
    """

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], list[torch.Tensor]],
                 small: SmallCrops | None = None, seed: int = 0, epoch: SharedInt | None = None,
                 skipped: SharedInt | None = None) -> None:
        self.base, self.transform, self.small = base, transform, small
        self.seed, self.epoch, self.skipped = seed, epoch, skipped

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.epoch is None:
            return self._sample(i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch.get(), i))
            return self._sample(i)

    def _load(self, i: int) -> tuple[int, Image.Image, int]:
        if self.skipped is None:
            return (i, *load_sample(self.base, i))
        n = len(self)
        for j in range(i, i + n):
            try:
                return (j % n, *load_sample(self.base, j % n))
            except DataError:
                self.skipped.add(1)
        raise DataError("no image of the training set could be decoded")

    def _sample(self, i: int) -> dict[str, Any]:
        i, img, y = self._load(i)
        sample = {"views": self.transform(img), "index": i, "label": int(y)}
        if self.small is not None and self.small.num > 0:
            table_epoch = self.small.table.epoch if self.small.table is not None else -1
            sources = self.small.sources(i)
            sample["small"] = [self.small.transform(img if j == i else self._load(j)[1]) for j in sources]
            sample["small_source"] = torch.tensor(sources, dtype=torch.long)
            sample["table_epoch"] = table_epoch
        return sample


class IndexSamples(ViewsDataset):
    """Training samples without pixels, for images kept on the accelerator (``in_memory: device``):
    ``{"index": int, "label": int}`` plus, with low-res crops, ``"small_source": LongTensor[m]`` and
    ``"table_epoch"``; the data module gathers the pixels from its device tensor after the transfer. The crop
    sources are drawn exactly as in :class:`ViewsDataset` (seeded per (seed, epoch, index))."""

    def __init__(self, base: InMemoryImages, small: SmallCrops | None = None, seed: int = 0,
                 epoch: SharedInt | None = None) -> None:
        super().__init__(base, lambda img: [], small, seed, epoch)

    def _sample(self, i: int) -> dict[str, Any]:
        sample: dict[str, Any] = {"index": i, "label": self.base.targets[i]}
        if self.small is not None and self.small.num > 0:
            sample["table_epoch"] = self.small.table.epoch if self.small.table is not None else -1
            sample["small_source"] = torch.tensor(self.small.sources(i), dtype=torch.long)
        return sample


class EvalDataset(Dataset):
    """Evaluation samples: ``{"image": C×H×W, "index": int, "label": int}``."""

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        img, y = load_sample(self.base, i)
        return {"image": self.transform(img), "index": i, "label": int(y)}
