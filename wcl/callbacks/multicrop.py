"""``KnnMultiCrop``: the lifecycle of WCL's KNN low-resolution multi-crop — feature bank, search, table.

During epoch e each rank keeps the L2-normalized backbone feature ``h`` of the first view of every sample its
loader gives it, as ``training_step`` returns it (no extra forward pass), in its own :class:`FeatureBank` on its
training device: a step writes B rows there and nothing else (no collective, no host copy). With ``features: eval``
the bank is filled instead after the epoch's last batch, by one no-grad pass in eval mode over this rank's share of
the pretraining images with the evaluation transform. After the epoch's last batch — before validation and before
any checkpoint of the epoch — the ranks find every sample's K nearest neighbours together (:func:`neighbor_table`:
each rank scores every query against its own rows, the top-k lists are merged), every rank ends with the same N × K
table, and :meth:`KnnMultiCrop._publish` writes it into the shared-memory :class:`~wcl.data.crops.NeighborTable` its
data module reads: each low-resolution crop of sample i in epoch e+1 is cut from an image drawn from i's K
neighbours.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from wcl.constraints import PositiveInt, check_constraints
from wcl.data.crops import NeighborRule, NeighborTable, restrict_neighbors
from wcl.distributed import gather_nograd, gather_varlen, rank, world_size
from wcl.errors import ConfigError
from wcl.neighbors import KnnBackend, drop_self, faiss_index, neighbor_purity, sharded_topk

# ``save_bank: auto`` puts the bank in checkpoints up to this size (CIFAR-10 / ResNet-50: 205 MB; ImageNet: 5.2 GB).
AUTO_SAVE_BANK_BYTES = 1 << 30


class FeatureBank:
    """This rank's rows of the epoch's features: ``size`` rows of (dataset index, unit feature in float16), in
    the order they were written, on ``device``. Writing is a slice assignment on the device; the buffers grow
    (doubling) only when a write does not fit, which the host decides from shapes alone."""

    def __init__(self, dim: int, device: torch.device | str = "cpu", capacity: int = 0) -> None:
        self.features = torch.empty(capacity, dim, dtype=torch.float16, device=device)
        self.index = torch.empty(capacity, dtype=torch.long, device=device)
        self.size = 0

    def reserve(self, rows: int) -> None:
        if rows > self.index.shape[0]:
            cap = max(rows, 2 * self.index.shape[0])
            features = self.features.new_empty(cap, self.features.shape[1])
            index = self.index.new_empty(cap)
            features[: self.size], index[: self.size] = self.features[: self.size], self.index[: self.size]
            self.features, self.index = features, index

    def write(self, index: Tensor, feats: Tensor, normalize: bool = True) -> None:
        """index: LongTensor[B] dataset indices; feats: B×D (stored normalized, float16), both on the bank's device
        (``normalize=False``: rows of a bank, stored as they are)."""
        b = index.shape[0]
        self.reserve(self.size + b)
        rows = F.normalize(feats.detach().float(), dim=1) if normalize else feats
        self.features[self.size : self.size + b] = rows.to(torch.float16)
        self.index[self.size : self.size + b] = index
        self.size += b

    def rows(self) -> tuple[Tensor, Tensor]:
        """(LongTensor[size] dataset indices, size×D float16 features) written so far."""
        return self.index[: self.size], self.features[: self.size]

    def clear(self) -> None:
        self.size = 0


@torch.no_grad()
def neighbor_table(index: Tensor, features: Tensor, previous: Tensor, k: int, backend: KnnBackend = "torch",
                   nprobe: int = 16, step_queries: int = 16384, chunk: int = 1024) -> Tensor:
    """The N×k neighbour table of every sample some rank has a feature for, self excluded; the same on every rank
    (every rank must call it).

    The queries travel in steps: each rank contributes ⌈step_queries / W⌉ of its rows (an all-gather), every rank
    scores the step's queries against its own rows and the ranks' top-(k+1) lists are merged
    (:func:`wcl.neighbors.sharded_topk`). Per rank this holds its own rows, one step of queries and one block of
    similarities; with ``torch`` the search is exact and gives what one process holding every row gives (ties to
    the lower dataset index).

    Args:
        index: LongTensor[n_r], dataset indices of this rank's rows; features: n_r×D unit rows (float16), on this
            rank's device.
        previous: N×k table on the host: the rows of samples no rank has a feature for are kept from it.
        backend: ``torch`` (exact, on the features' device), ``faiss`` (exact) or ``faiss_ivf`` (approximate,
            ``nprobe`` lists) on a host copy of this rank's rows.

    Returns:
        IntTensor N×k on the host.
    """
    dev, w, n = features.device, world_size(), previous.shape[0]
    sizes = gather_nograd(torch.tensor([index.shape[0]], device=dev)).tolist()
    if sum(sizes) <= k:  # too few features for k neighbours: nothing changes
        return previous.to(torch.int32).clone()
    table = torch.empty(n + 1, k, dtype=torch.int32, device=dev)  # row n receives the padding rows
    table[:n] = previous.to(dev)
    faiss = None
    if backend != "torch" and index.shape[0] > 0:
        faiss = faiss_index(features.float().cpu().numpy(), backend == "faiss_ivf", nprobe)
    c = min(-(-step_queries // w), max(sizes))
    for start in range(0, max(sizes), c):
        q_feats, q_ids = features[start : start + c], index[start : start + c]
        if q_ids.shape[0] < c:  # the same shape on every rank for the gathers; the padding rows' results are dropped
            pad = c - q_ids.shape[0]  # (copies of a row, not zeros: a zero row ties everywhere, the slow case)
            fill = q_feats[:1].expand(pad, -1) if q_ids.shape[0] else q_feats.new_zeros(pad, q_feats.shape[1])
            q_feats = torch.cat([q_feats, fill])
            q_ids = torch.cat([q_ids, q_ids.new_full((pad,), -1)])
        q_feats, q_ids = gather_nograd(q_feats), gather_nograd(q_ids)
        sim, ids = sharded_topk(q_feats, features, index, k + 1, chunk=chunk, index=faiss)
        _, nbrs = drop_self(sim, ids, q_ids, k)
        table[torch.where(q_ids >= 0, q_ids, n)] = nbrs.to(torch.int32)
    return table[:n].cpu()


class KnnMultiCrop(Callback):
    """Computes the neighbour table of ``data.small_crop_source: neighbors`` after every epoch, from features kept
    on the ranks that trained on them.

    Args:
        k: neighbours per sample the crops are drawn from.
        backend: ``torch`` (exact chunked matmul on each rank's training device), ``faiss`` (exact) or
            ``faiss_ivf`` (approximate, for N beyond a few million; on a host copy of each rank's rows).
        nprobe: lists ``faiss_ivf`` searches.
        save_bank: put the features written so far in the epoch in checkpoints (gathered from every rank at save
            time: N×D float16 at most), which makes a resume in the middle of an epoch exact; ``auto`` does so when
            the whole bank is at most 1 GiB (CIFAR-10 / ResNet-50: 205 MB; not ImageNet: 5.2 GB). Without it, such
            a resume logs one warning line: the samples trained before the stop keep their previous neighbours in
            the next table and are no sample's neighbour in it.
        rule: which of the K neighbours a crop may be cut from (:func:`wcl.data.crops.restrict_neighbors`, reading
            no labels): ``all`` (the paper), ``reciprocal``, ``stable`` (also among the previous epoch's K) or
            ``nearest``; a neighbour the rule drops is replaced by the sample itself.
        features: what the neighbours are searched with: ``view``, the feature of the sample's first augmented view
            that the training step computed (no extra pass); ``eval``, the feature of the whole image (evaluation
            transform, BatchNorm in eval mode with rank 0's statistics) from one no-grad pass over the pretraining
            images after the epoch's last batch — the neighbours of the image rather than of one random crop of it
            (its cost: ``multicrop/eval_pass_seconds``).
    """

    def __init__(self, k: PositiveInt = 5, backend: KnnBackend = "torch", nprobe: PositiveInt = 16,
                 save_bank: bool | Literal["auto"] = "auto", rule: NeighborRule = "all",
                 features: Literal["view", "eval"] = "view") -> None:
        check_constraints(KnnMultiCrop.__init__, locals(), "KnnMultiCrop ")
        self.k, self.backend, self.nprobe, self.save_bank, self.rule = k, backend, nprobe, save_bank, rule
        self.features = features
        self.table: NeighborTable | None = None
        self.searched: Tensor | None = None  # the last search's table, before the rule
        self.bank: FeatureBank | None = None
        self._eval_loader: Any = None  # features: eval — built once, so persistent workers persist
        self._labels: Tensor | None = None
        self._pending_bank: dict[str, Any] | None = None
        self._epoch = 0
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

    def _saves_bank(self, dim: int) -> bool:
        if self.save_bank == "auto":
            return len(self.table.table) * dim * 2 <= AUTO_SAVE_BANK_BYTES
        return bool(self.save_bank)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.active or self.bank is not None:
            return
        self._epoch = trainer.current_epoch
        self.bank = FeatureBank(pl_module.backbone.out_dim, pl_module.device)
        pending, self._pending_bank = self._pending_bank, None
        if (pending is None or self.features == "eval" or int(pending["epoch"]) != trainer.current_epoch
                or int(pending["rows"]) == 0):
            return
        if "index" in pending:  # every rank takes every W-th saved row (any split gives the same table)
            w, r, dev = world_size(), rank(), pl_module.device
            self.bank.write(pending["index"][r::w].to(dev), pending["features"][r::w].to(dev), normalize=False)
        elif trainer.is_global_zero:
            print(
                f"wcl: warning: resumed in the middle of epoch {trainer.current_epoch + 1} from a checkpoint without "
                f"the multi-crop feature bank (KnnMultiCrop save_bank: {self.save_bank}): the {pending['rows']} "
                "samples trained before the stop keep their previous neighbours in the table built at the end of this "
                "epoch and are no sample's neighbour in it. Set save_bank: true for an exact resume.",
                file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.active:
            return
        if self.features == "view":
            if self.bank.size == 0 and self.bank.index.shape[0] == 0:  # sized once, for this rank's epoch
                self.bank.reserve(trainer.num_training_batches * outputs["index"].shape[0])
            self.bank.write(outputs["index"], outputs["h1"])
        if batch_idx + 1 == trainer.num_training_batches:
            self._update(trainer, pl_module)

    @torch.no_grad()
    def _eval_pass(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """Fills the bank with this rank's share of the pretraining images seen whole (``features: eval``); returns
        its seconds. BatchNorm statistics come from rank 0 first, so every rank's features are those of the
        checkpoint's weights (DDP would broadcast them at the next training step anyway)."""
        start = time.perf_counter()
        if world_size() > 1:
            for buffer in pl_module.buffers():
                torch.distributed.broadcast(buffer, 0)
        dm, training = trainer.datamodule, pl_module.training
        pl_module.eval()
        try:
            if self._eval_loader is None:
                self._eval_loader = dm.eval_loader("pretrain", shard=True)
            for batch in self._eval_loader:
                batch = dm.on_after_batch_transfer(move_data_to_device(batch, pl_module.device), 0)
                with trainer.precision_plugin.forward_context():
                    self.bank.write(batch["index"], pl_module(batch["image"]))
        finally:
            pl_module.train(training)
        return time.perf_counter() - start

    def _update(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log = {"multicrop/eval_pass_seconds": self._eval_pass(trainer, pl_module)} if self.features == "eval" else {}
        start = time.perf_counter()
        previous = self.searched if self.searched is not None else self.table.table
        searched = neighbor_table(*self.bank.rows(), previous, self.k, self.backend, self.nprobe)
        seconds = time.perf_counter() - start
        self.bank.clear()
        table = restrict_neighbors(searched, self.rule, self.searched)
        self.searched = searched
        self._publish(table, trainer.current_epoch)
        # Logged per epoch (on_step logging would drop them unless the step hits log_every_n_steps).
        log["multicrop/knn_seconds"] = seconds
        from_neighbor = table != torch.arange(len(table), dtype=table.dtype)[:, None]
        if self.rule != "all":
            log["multicrop/neighbor_share"] = float(from_neighbor.float().mean())
        if self._labels is not None and trainer.is_global_zero:  # against the true classes: diagnostics only
            purity = {"neighbor_purity": neighbor_purity(searched, self._labels)}
            if self.rule != "all":
                purity["kept_purity"] = neighbor_purity(table, self._labels, from_neighbor)
            log |= {f"multicrop/{key}": value for key, value in purity.items() if value is not None}
        pl_module.log_dict(log, on_step=False, on_epoch=True, rank_zero_only=True)

    def _publish(self, table: Tensor, epoch: int) -> None:
        """Hands the finished N×K table of ``epoch`` (IntTensor on the host, the same on every rank) to the data's
        :class:`~wcl.data.crops.NeighborTable`. Until this returns, ``self.table.table`` still holds the previous
        epoch's table (sample i's own index K times before the first)."""
        self.table.update(table, epoch)

    def state_dict(self) -> dict[str, Any]:
        if self.table is None:
            return {}
        state: dict[str, Any] = {"table": self.table.table.clone(), "epoch": self.table.epoch}
        if self.searched is not None:
            state["searched"] = self.searched.clone()
        if self.bank is not None:  # every rank is here (Lightning collects callback states on all ranks)
            index, feats = self.bank.rows()
            rows = int(gather_nograd(torch.tensor([index.shape[0]], device=index.device)).sum())
            bank: dict[str, Any] = {"epoch": self._epoch, "rows": rows}
            if self._saves_bank(feats.shape[1]):
                bank |= {"index": gather_varlen(index).cpu(), "features": gather_varlen(feats).cpu()}
            state["bank"] = bank
        return state

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch = trainer.current_epoch  # (a run resumed in the middle of an epoch starts it in on_train_start)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.table is not None and "table" in state:
            self.table.update(torch.as_tensor(state["table"]), int(state["epoch"]))
        self.searched = state.get("searched")
        bank = state.get("bank")
        if bank is not None and "rows" not in bank:  # a bank saved without its row count: not used
            bank = None
        self._pending_bank = bank
