"""Subsets of a dataset: the first N per class, a class-balanced label fraction, the images named in a file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from wcl.data.datasets import targets_of
from wcl.errors import DataError


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
