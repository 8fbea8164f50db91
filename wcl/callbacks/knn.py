"""``OnlineKnn``: weighted kNN top-1 of backbone features during pretraining (and for ``wcl.KNNEval``)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from wcl.constraints import NonNegativeInt, PositiveFloat, PositiveInt, check_constraints
from wcl.neighbors import ShardedKnn


class OnlineKnn(Callback):
    """Weighted kNN (Wu et al., 2018) of the val split against the training images, in the validation epochs
    where it runs: every ``every_n_epochs`` epochs and after the last one (every validation under ``validate``).

    The queries are the features ``validation_step`` returns (``{"features", "index", "label"}``); the bank pass
    over the training images (eval transform) runs only in those epochs, each rank over its own share, and the
    ranks' top-k lists are merged (:class:`~wcl.neighbors.ShardedKnn`). Logs ``val/knn_top1`` (and
    ``val/knn_top5``); ``best_top1`` is the best value so far, ``last_epoch`` the (0-based) epoch of the last
    value and ``history`` the (epoch, top-1) pairs of this process's kNN epochs, 1-based (the learning curve the
    end-of-fit summary prints). Off for unlabelled data (one line says so).

    Args:
        k: neighbours that vote.
        temperature: vote temperature.
        every_n_epochs: run every n epochs and after the last one (0 turns the callback off).
    """

    metric = "knn"  # logged as val/<metric>_top1

    def __init__(self, k: PositiveInt = 200, temperature: PositiveFloat = 0.1,
                 every_n_epochs: NonNegativeInt = 1) -> None:
        check_constraints(OnlineKnn.__init__, locals(), "OnlineKnn ")
        self.every_n_epochs = every_n_epochs
        self.scorer = ShardedKnn(k, temperature)
        self.num_classes: int | None = None
        self.best_top1: float | None = None
        self.last_epoch: int | None = None
        self.history: list[tuple[int, float]] = []
        self._active = False
        self._bank_loader: Any = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.num_classes = getattr(trainer.datamodule, "num_classes", None)
        if self.num_classes is None and self.every_n_epochs > 0:
            rank_zero_info("wcl: the data has no labels (a single class folder), so the online kNN is off")

    def runs_now(self, trainer: Trainer) -> bool:
        if self.num_classes is None or self.every_n_epochs <= 0 or trainer.sanity_checking:
            return False
        if trainer.state.fn == TrainerFn.VALIDATING:
            return True
        epoch, last = trainer.current_epoch, trainer.max_epochs
        return (epoch + 1) % self.every_n_epochs == 0 or (last is not None and epoch + 1 == last)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.scorer.reset()
        self._active = self.runs_now(trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._active and isinstance(outputs, dict) and "features" in outputs:
            self.scorer.add_queries(outputs["index"], outputs["features"], outputs["label"])

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not (self._active and self.scorer.has_queries):
            return
        dm = trainer.datamodule
        if self._bank_loader is None:
            self._bank_loader = dm.eval_loader("bank", shard=True)
        for batch in self._bank_loader:
            batch = dm.on_after_batch_transfer(move_data_to_device(batch, pl_module.device), 0)
            with trainer.precision_plugin.forward_context():
                self.scorer.add_bank(pl_module(batch["image"]), batch["label"], batch.get("index"))
        acc = self.scorer.accuracy(self.num_classes)
        self.scorer.reset()
        for name, value in acc.items():  # the same value on every rank
            pl_module.log(f"val/{self.metric}_{name}", value, sync_dist=True)
        self.best_top1 = max(self.best_top1 or 0.0, float(acc["top1"]))
        self.last_epoch = trainer.current_epoch
        self.history.append((trainer.current_epoch + 1, float(acc["top1"])))
