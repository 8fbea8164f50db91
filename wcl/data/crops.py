"""Low-resolution crops of the multi-crop: which images they are cut from.

:class:`CropSource` holds the crop settings and, for WCL's KNN multi-crop, the :class:`NeighborTable` that the
:class:`wcl.callbacks.KnnMultiCrop` callback hands it and refreshes after every epoch. It only reads the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from wcl.constraints import NonNegativeInt, PositiveInt
from wcl.errors import ConfigError

CropOrigin = Literal["self", "neighbors"]
NeighborRule = Literal["all", "reciprocal", "stable", "nearest"]


def restrict_neighbors(table: Tensor, rule: NeighborRule, previous: Tensor | None = None) -> Tensor:
    """The neighbours a crop may be cut from, by a rule that reads no labels; every neighbour the rule drops is
    replaced by the sample itself, so that crop is cut from the sample's own image.

    * ``all``: every one of the K neighbours (the paper's KNN multi-crop);
    * ``reciprocal``: j stays in i's list only if i is in j's list too;
    * ``stable``: j stays in i's list only if it was there in the ``previous`` epoch's table as well (none stays
      when there is no previous table), so the neighbour crops grow as the features settle;
    * ``nearest``: the first neighbour only, in every slot.

    Args:
        table: integer N×K, sample i's neighbours by similarity, nearest first (i itself where it has none).
        rule: one of the above.
        previous: integer N×K, the unrestricted table of the epoch before (``stable`` only).

    Returns:
        N×K of ``table``'s dtype and device.
    """
    if rule == "all":
        return table
    own = torch.arange(table.shape[0], dtype=table.dtype, device=table.device)[:, None].expand_as(table)
    if rule == "nearest":
        return table[:, :1].expand_as(table).clone()
    if rule == "reciprocal":
        keep = (table[table.long()] == own[..., None]).any(dim=2)  # N×K×K: is i among table[i, k]'s neighbours?
    elif rule == "stable":
        if previous is None:
            return own.clone()
        keep = (table[..., None] == previous.to(table.device)[:, None, :]).any(dim=2)
    else:
        raise ValueError(f"unknown neighbour rule {rule!r}; choose all, reciprocal, stable or nearest")
    return torch.where(keep, table, own)


class NeighborTable:
    """``table[i]`` = the K neighbours of sample i computed at the end of epoch ``epoch`` (IntTensor N×K; before the
    first table, epoch -1, sample i itself K times).

    Both tensors are in shared memory and are updated in place, so data-loader workers (forked or spawned,
    persistent or not) always read the current table. ``on(device)`` is a copy for batched crop draws, made again
    only after an update.
    """

    def __init__(self, num_samples: int, k: int) -> None:
        self.table = torch.arange(num_samples, dtype=torch.int32)[:, None].repeat(1, k).share_memory_()
        self._epoch = torch.full((1,), -1, dtype=torch.long).share_memory_()
        self._copies: dict[torch.device, Tensor] = {}

    @property
    def k(self) -> int:
        return self.table.shape[1]

    @property
    def epoch(self) -> int:
        """Epoch whose features produced the table, -1 before the first update."""
        return int(self._epoch[0])

    def update(self, neighbors: Tensor, epoch: int) -> None:
        if neighbors.shape != self.table.shape:
            raise ValueError(f"neighbour table shape {tuple(neighbors.shape)} != {tuple(self.table.shape)}")
        self.table.copy_(neighbors)
        self._epoch.fill_(epoch)
        self._copies.clear()

    def on(self, device: torch.device) -> Tensor:
        if device not in self._copies:
            self._copies[device] = self.table.to(device)
        return self._copies[device]

    def __getstate__(self) -> dict:  # device copies stay in the main process
        return {**self.__dict__, "_copies": {}}


@dataclass
class CropSource:
    """``num`` low-resolution crops per sample (``size`` px, random-resized-crop ``scale``), cut from the sample
    itself (``origin: self``, SwAV-style) or from an image drawn uniformly, fresh per crop and epoch, from the
    sample's K neighbours in the table (``origin: neighbors``, WCL). Until a table exists, ``first_epoch`` says
    whether the crops come from the sample itself (``self``) or are skipped (``none``).
    """

    num: NonNegativeInt
    size: PositiveInt = 16
    scale: tuple[float, float] = (0.14, 1.0)
    origin: CropOrigin = "neighbors"
    first_epoch: Literal["self", "none"] = "self"
    table: NeighborTable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.small_crop_scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")

    @property
    def needs_table(self) -> bool:
        return self.num > 0 and self.origin == "neighbors"

    def attach(self, table: NeighborTable) -> None:
        """Called once (before data workers start) by the callback that computes the table."""
        self.table = table

    def _ready(self) -> bool:
        if self.table is None:
            raise ConfigError("data.small_crop_source: neighbors needs the wcl.callbacks.KnnMultiCrop callback, "
                              "which computes the neighbour table; add --config configs/multicrop.yaml (or "
                              "--trainer.callbacks+=wcl.callbacks.KnnMultiCrop), or use small_crop_source: self.")
        return self.table.epoch >= 0

    def count(self) -> int:
        """Crops per sample in the current epoch."""
        if self.num == 0 or self.origin == "self" or self._ready():
            return self.num
        return self.num if self.first_epoch == "self" else 0

    def sources(self, i: int) -> list[int]:
        """Dataset indices sample ``i``'s crops are cut from, drawn with torch's global generator (call it
        inside the sample's seeded context)."""
        n = self.count()
        if n == 0 or self.origin == "self" or not self._ready():
            return [i] * n
        picks = torch.randint(self.table.k, (n,))
        return self.table.table[i, picks].tolist()

    def batch_sources(self, index: Tensor, u: Tensor) -> Tensor:
        """The same for a batch on any device: index LongTensor[B], u B×num uniforms → LongTensor[B, count]."""
        n = self.count()
        if n == 0 or self.origin == "self" or not self._ready():
            return index[:, None].expand(-1, n)
        table = self.table.on(index.device)
        picks = (u[:, :n] * table.shape[1]).long()
        return table[index[:, None], picks].long()
