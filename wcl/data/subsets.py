"""Subsets of a dataset: the first N per class, a class-balanced label fraction, the images named in a file — and
:func:`labelled_subset`, the one choice of labelled images that pretraining and every evaluation share."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from wcl.data.datasets import classes_of, targets_of
from wcl.errors import ConfigError, DataError


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
    """A seeded draw of ``fraction`` of each class's samples (rounded); a fraction that rounds to no sample of some
    class is an error, not a silent single image."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(targets_of(ds)):
        if y >= 0:
            by_class.setdefault(y, []).append(i)
    empty = sorted(y for y, members in by_class.items() if round(fraction * len(members)) < 1)
    if empty:
        names = classes_of(ds)
        smallest = min(len(by_class[y]) for y in empty)
        raise ConfigError(
            f"data.label_fraction={fraction:g} gives no labelled image of {len(empty)} of the {len(by_class)} classes "
            f"(first: {', '.join(str(names[y]) if y < len(names) else str(y) for y in empty[:3])}, "
            f"{smallest} images); use data.label_fraction >= {1 / smallest:.3g} (one image of each), or "
            "data.subset_file to name the images.")
    g = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for y in sorted(by_class):
        members = by_class[y]
        n = round(fraction * len(members))
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


def check_label_choice(label_fraction: float | None, subset_file: str | None) -> None:
    """One clear error for a fraction outside (0, 1] or for both choices at once."""
    if label_fraction is not None and not 0.0 < label_fraction <= 1.0:
        raise ConfigError(f"data.label_fraction={label_fraction} is outside (0, 1]; use e.g. 0.01 or 0.1.")
    if label_fraction is not None and subset_file is not None:
        raise ConfigError("set either data.label_fraction or data.subset_file, not both.")


def labelled_subset(ds: Dataset, label_fraction: float | None, subset_file: str | None, seed: int = 0,
                    class_names: list[str] | None = None) -> Subset | None:
    """The labelled images of ``ds`` (the labelled training split) chosen by ``data.label_fraction`` (class-balanced,
    seeded: the same images for the same split and seed, whichever data module asks) or ``data.subset_file``; None
    when neither is set. Every class must keep at least one image."""
    check_label_choice(label_fraction, subset_file)
    if label_fraction is not None:
        return class_balanced_fraction(ds, label_fraction, seed)
    if subset_file is None:
        return None
    subset = named_subset(ds, subset_file)
    present = set(targets_of(subset))
    names = class_names if class_names is not None else classes_of(ds)
    empty = [name for y, name in enumerate(names) if y not in present]
    if empty:
        raise DataError(f"data.subset_file {subset_file} names no image of {len(empty)} of the {len(names)} classes "
                        f"(first: {', '.join(empty[:3])}); every class needs at least one labelled image.")
    return subset


def describe_subset(subset: Subset | None, label_fraction: float | None, subset_file: str | None, seed: int,
                    total: int) -> str:
    """One phrase naming the labelled images, e.g. ``10 % labels (500 of 5000 images, seed 0)``."""
    if subset is None:
        return f"all {total} labelled images"
    if label_fraction is not None:
        return f"{100 * label_fraction:g} % labels ({len(subset)} of {total} images, class-balanced, seed {seed})"
    return f"the {len(subset)} images of {subset_file} (of {total})"


class MaskedLabels(Subset):
    """``base``'s ``(image, label)`` pairs with label -1 where ``known`` (bool[len(base)]) is false (a Subset of every
    row, so error messages still name the file)."""

    def __init__(self, base: Dataset, known: torch.Tensor) -> None:
        super().__init__(base, range(len(base)))  # type: ignore[arg-type]
        self.known = known

    def __getitem__(self, i: int) -> tuple[object, int]:
        img, y = self.dataset[i]
        return img, int(y) if bool(self.known[i]) else -1

    def __getitems__(self, indices: list[int]) -> list[tuple[object, int]]:
        return [self[i] for i in indices]
