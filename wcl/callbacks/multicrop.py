"""``KnnMultiCrop``: the lifecycle of WCL's KNN low-resolution multi-crop — feature bank, search, table.

During epoch e the callback keeps the L2-normalized backbone feature ``h`` of each sample's first view, by dataset
index, as ``training_step`` returns it (no extra forward pass), gathered from every rank into rank 0's bank. After
the epoch's last batch — before validation and before any checkpoint of the epoch — rank 0 finds every sample's K
nearest neighbours (self excluded), every rank receives the table and writes it into the shared-memory
:class:`~wcl.data.crops.NeighborTable` its data module reads, and each low-resolution crop of sample i in epoch
e+1 is cut from an image drawn from i's K neighbours. Bank and table are in the callback's checkpoint state, so a
resumed run — also one resumed in the middle of an epoch — gets the same tables as an uninterrupted one.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from wcl.constraints import PositiveInt, check_constraints
from wcl.data.crops import NeighborTable
from wcl.distributed import gather_nograd
from wcl.errors import ConfigError
from wcl.neighbors import KnnBackend, knn_table, neighbor_purity


class FeatureBank:
    """N×D float16 store of each sample's latest primary feature, written by dataset index, on ``device``.

    A sample not drawn in an epoch (``drop_last``) keeps its feature from the last epoch that drew it; a sample never
    drawn yet gets itself as its K neighbours (its crops then come from its own image).
    """

    def __init__(self, num_samples: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.features = torch.zeros(num_samples, dim, dtype=torch.float16, device=device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def write(self, index: Tensor, feats: Tensor) -> None:
        """index: LongTensor[B]; feats: B×D (stored normalized, float16, on the bank's device)."""
        dev = self.features.device
        self.features[index.to(dev)] = F.normalize(feats.detach().float(), dim=1).to(dev, torch.float16)
        self.seen[index.to(dev)] = True

    def neighbors(self, k: int, backend: KnnBackend = "faiss", nprobe: int = 16) -> tuple[Tensor, float]:
        """(N×k neighbour table on the host, seconds), searched among the samples seen so far."""
        start = time.perf_counter()
        seen = self.seen.nonzero().squeeze(1).cpu()
        table = torch.arange(len(self.seen))[:, None].repeat(1, k)
        if len(seen) > k:
            feats = self.features[seen.to(self.features.device)]
            table[seen] = seen[knn_table(feats, k, backend, nprobe, self.features.device)]
        return table, time.perf_counter() - start

    def state_dict(self) -> dict[str, Tensor]:
        return {"features": self.features.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.features.copy_(state["features"])
        self.seen.copy_(state["seen"])


class KnnMultiCrop(Callback):
    """Computes the neighbour table of ``data.small_crop_source: neighbors`` after every epoch.

    Args:
        k: neighbours per sample the crops are drawn from.
        backend: ``faiss`` (exact inner product), ``faiss_ivf`` (approximate, for N beyond a few million) or
            ``torch`` (exact chunked matmul on the bank's device, e.g. the GPU).
        nprobe: lists ``faiss_ivf`` searches.
        bank_device: ``auto`` keeps rank 0's bank (N×D float16: CIFAR-10 / ResNet-18 51 MB, ImageNet / ResNet-50
            5.2 GB) on the training device, so writing it never waits for the device; ``cpu`` in host memory.
        save_bank: put the bank in checkpoints (N×D float16), which makes a resume in the middle of an epoch exact;
            without it such a resume gives the samples seen before the stop themselves as neighbours once.
    """

    def __init__(self, k: PositiveInt = 5, backend: KnnBackend = "faiss", nprobe: PositiveInt = 16,
                 bank_device: Literal["auto", "cpu"] = "auto", save_bank: bool = True) -> None:
        check_constraints(KnnMultiCrop.__init__, locals(), "KnnMultiCrop ")
        self.k, self.backend, self.nprobe, self.bank_device, self.save_bank = k, backend, nprobe, bank_device, save_bank
        self.table: NeighborTable | None = None
        self.bank: FeatureBank | None = None
        self._labels: Tensor | None = None
        self._pending_bank: dict[str, Tensor] | None = None
        self.active = True

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self.table is not None:
            return
        crops = getattr(trainer.datamodule, "crops", None)
        if crops is None or not crops.needs_table:  # e.g. the ablations small_crop_source: self, num_small_crops: 0
            rank_zero_info("wcl: the data cuts no crops from neighbours, so KnnMultiCrop computes no table")
            self.active = False
            return
        source = trainer.datamodule.source
        n = len(source.pretrain)
        if not 0 < self.k < n:
            raise ConfigError(f"KnnMultiCrop k={self.k} must be between 1 and the dataset size - 1 ({n - 1}).")
        self.table = NeighborTable(n, self.k)
        crops.attach(self.table)
        self._labels = source.labels("pretrain")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.active and trainer.is_global_zero and self.bank is None:
            device = pl_module.device if self.bank_device == "auto" else torch.device("cpu")
            self.bank = FeatureBank(len(self.table.table), pl_module.backbone.out_dim, device)
            if self._pending_bank is not None:
                self.bank.load_state_dict(self._pending_bank)
                self._pending_bank = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.active:
            return
        feats, index = gather_nograd(outputs["h1"]), gather_nograd(outputs["index"])
        if self.bank is not None:
            self.bank.write(index, feats)
        if batch_idx + 1 == trainer.num_training_batches:
            self._update(trainer, pl_module)

    def _update(self, trainer: Trainer, pl_module: LightningModule) -> None:
        result = self.bank.neighbors(self.k, self.backend, self.nprobe) if self.bank is not None else None
        table, seconds = trainer.strategy.broadcast(result, src=0)  # rank 0 searches; every rank gets the table
        self.table.update(table, trainer.current_epoch)
        # Logged per epoch (on_step logging would drop them unless the step hits log_every_n_steps).
        pl_module.log("multicrop/knn_seconds", seconds, on_step=False, on_epoch=True, rank_zero_only=True)
        purity = neighbor_purity(table, self._labels) if self._labels is not None else None
        if purity is not None:
            pl_module.log("multicrop/neighbor_purity", purity, on_step=False, on_epoch=True, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"table": self.table.table.clone(), "epoch": self.table.epoch} if self.table else {}
        if self.save_bank and self.bank is not None:
            state["bank"] = self.bank.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.table is not None and "table" in state:
            self.table.update(torch.as_tensor(state["table"]), int(state["epoch"]))
        self._pending_bank = state.get("bank")
