"""Map-style datasets that turn ``(PIL image, label)`` pairs into the dictionaries every batch is made of.

Training: ``{"views": [3×S×S, 3×S×S], "index", "label"}`` (augmented in the worker, ``augment_on: cpu``) or
``{"raw": uint8 3×H×W, "index", "label"}`` (augmented after the batch reaches its device); with low-resolution
crops also ``"small": [3×s×s, …]`` or ``"crops_raw": uint8 m×3×H×W``, and ``"crop_source": LongTensor[m]``.
Evaluation: ``{"image": 3×S×S, "index", "label"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import transforms as T

from wcl.data.crops import CropSource
from wcl.data.datasets import load_sample, targets_of
from wcl.data.sampling import SharedInt, sample_seed
from wcl.errors import DataError


class RawImage:
    """PIL image → uint8 tensor 3×H×W, optionally resized on its short side and centre-cropped to ``size`` so
    that images of any size batch together."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.size is not None:
            img = T.CenterCrop(self.size)(T.Resize(self.size, interpolation=T.InterpolationMode.BICUBIC)(img))
        return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_or_skip(base: Dataset, i: int, skipped: SharedInt | None) -> tuple[int, Image.Image, int]:
    """(index, image, label) of sample ``i``; with ``skipped`` given, an undecodable image is replaced by the next
    readable one (whose index is returned) and counted instead of raising."""
    if skipped is None:
        return (i, *load_sample(base, i))
    n = len(base)  # type: ignore[arg-type]
    for j in range(i, i + n):
        try:
            return (j % n, *load_sample(base, j % n))
        except DataError:
            skipped.add(1)
    raise DataError("no image of the dataset could be decoded")


class _Decoded(Dataset):
    def __init__(self, base: Dataset, size: int | None, skipped: SharedInt | None) -> None:
        self.base, self.raw, self.skipped = base, RawImage(size), skipped

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        _, img, y = load_or_skip(self.base, i, self.skipped)
        return self.raw(img), int(y)


class InMemoryImages(Dataset):
    """A dataset decoded once (by ``num_workers`` processes) into one uint8 tensor N×3×H×W (``in_memory``);
    serves ``(PIL, label)`` like the dataset it copies, without per-step file I/O. All images must share one
    size, or give ``size``."""

    def __init__(self, base: Dataset, size: int | None = None, num_workers: int = 0,
                 skipped: SharedInt | None = None) -> None:
        loader = DataLoader(_Decoded(base, size, skipped), batch_size=256, num_workers=num_workers,
                            collate_fn=_stack_or_explain)
        parts = list(loader)
        self.images = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        self.targets = [y for p in parts for y in p[1]]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i].permute(1, 2, 0).numpy()), self.targets[i]


def _stack_or_explain(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int]]:
    shapes = {tuple(t.shape) for t, _ in items}
    if len(shapes) > 1:
        raise DataError(f"in_memory needs images of one size, found {len(shapes)} sizes (e.g. {sorted(shapes)[:2]});"
                        " set data.decode_size to resize them when decoding.")
    return torch.stack([t for t, _ in items]), [y for _, y in items]


def collate_raw(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of undecoded training samples (``augment_on: device``), with one line naming
    ``data.decode_size`` when their images differ in size (they are batched before they are cropped)."""
    shapes = {tuple(it["raw"].shape) for it in items} | {tuple(it["crops_raw"].shape[1:]) for it in items
                                                          if "crops_raw" in it and it["crops_raw"].shape[0] > 0}
    if len(shapes) > 1:
        sizes = sorted({s[1:] for s in shapes})[:2]
        raise DataError(f"augment_on: device batches the decoded images before it augments them, so they need one "
                        f"size, but a batch holds {len(shapes)} (e.g. {sizes}); set data.decode_size (e.g. 64) to "
                        "resize them when decoding, or use augment_on: cpu.")
    return default_collate(items)


class TrainSamples(Dataset):
    """Training samples (see the module docstring), produced in data-loader workers.

    ``views(epoch)`` gives the view transform of an epoch (a torchvision pipeline, or :class:`RawImage` for the
    device path, whose views are made after the transfer), ``crop_view(epoch)`` the one of the low-resolution crops.
    Every random draw for sample i in epoch e is seeded by (seed, e, i), so the sample is the same whichever worker,
    rank or resumed run produces it. With ``known`` (BoolTensor[N]) only those samples keep their ``"label"`` (-1
    elsewhere) and ``"true_label"`` holds the dataset's label, for diagnostics.
    """

    def __init__(self, base: Dataset, views: Callable[[int], Callable], crops: CropSource | None,
                 crop_view: Callable[[int], Callable] | None, raw: bool, seed: int, epoch: SharedInt,
                 skipped: SharedInt | None = None, known: torch.Tensor | None = None) -> None:
        self.base, self.views, self.crops, self.crop_view, self.raw = base, views, crops, crop_view, raw
        self.seed, self.epoch, self.skipped, self.known = seed, epoch, skipped, known

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch = self.epoch.get()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            return self._sample(i, epoch)

    def _sample(self, i: int, epoch: int) -> dict[str, Any]:
        i, img, y = load_or_skip(self.base, i, self.skipped)
        view = self.views(epoch)
        sample: dict[str, Any] = {"index": i, "label": int(y)}
        if self.known is not None:
            sample["true_label"], sample["label"] = int(y), int(y) if bool(self.known[i]) else -1
        if self.raw:
            sample["raw"] = view(img)
        else:
            sample["views"] = [view(img), view(img)]
        if self.crops is not None and self.crops.num > 0:
            sources = self.crops.sources(i)
            crop = self.crop_view(epoch)
            cut = [crop(img if j == i else load_or_skip(self.base, j, self.skipped)[1]) for j in sources]
            if self.raw:
                sample["crops_raw"] = torch.stack(cut) if cut else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
            else:
                sample["small"] = cut
            sample["crop_source"] = torch.tensor(sources, dtype=torch.long)
        return sample


class EvalSamples(Dataset):
    """Labelled samples ``{"image": 3×S×S, "index", "label"}`` (undecodable images skipped like training ones
    when ``skipped`` is given). With ``seed`` and ``epoch``, a random ``transform`` is seeded per (seed, epoch,
    index), as for training samples."""

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], torch.Tensor],
                 skipped: SharedInt | None = None, seed: int | None = None, epoch: SharedInt | None = None) -> None:
        self.base, self.transform, self.skipped, self.seed, self.epoch = base, transform, skipped, seed, epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        i, img, y = load_or_skip(self.base, i, self.skipped)
        if self.seed is None or self.epoch is None:
            return {"image": self.transform(img), "index": i, "label": int(y)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch.get(), i))
            return {"image": self.transform(img), "index": i, "label": int(y)}


def labels_of(ds: Dataset) -> torch.Tensor:
    """True labels of every sample (-1 where unknown) without decoding images."""
    if isinstance(ds, InMemoryImages):
        return torch.tensor(ds.targets, dtype=torch.long)
    return torch.tensor(targets_of(ds), dtype=torch.long)
