"""``PlainProgress``: progress as plain lines, for output that is not a terminal (logs, CI, ``| tee``), and
``Preflight``: every loader a run will use delivers one batch before the first training step."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar

from wcl.callbacks.knn import OnlineKnn


class PlainProgress(ProgressBar):
    """Prints ``epoch e/E step s/S: loss …`` every ``every_n_steps`` steps (default: the trainer's
    ``log_every_n_steps``, whose values are read back anyway) and one line per epoch with its metrics."""

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, trainer: Trainer, text: str) -> None:
        if self._enabled and trainer.is_global_zero:
            print(text, file=sys.stdout, flush=True)

    def _epoch(self, trainer: Trainer) -> str:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{total}"

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A run resumed in the middle of an epoch gets no on_train_epoch_start for that epoch.
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = self.every_n_steps or trainer.log_every_n_steps
        if n > 0 and (batch_idx + 1) % n == 0:
            metrics = self.get_metrics(trainer, pl_module)
            loss = f": loss {float(metrics['loss']):.4f}" if "loss" in metrics else ""
            self._print(trainer, f"{self._epoch(trainer)} step {batch_idx + 1}/{self.total_train_batches}{loss}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/loss"))}
        values = ", ".join(f"{k} {float(v):.4f}" for k, v in sorted(shown.items()))
        self._print(trainer, f"{self._epoch(trainer)} done in {time.perf_counter() - self._start:.1f} s"
                             + (f": {values}" if values else ""))

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        n, total = self.every_n_steps or trainer.log_every_n_steps, self.total_predict_batches_current_dataloader
        if n > 0 and ((batch_idx + 1) % n == 0 or batch_idx + 1 == total):
            loaders = len(trainer.num_predict_batches)
            self._print(trainer, f"predict loader {dataloader_idx + 1}/{loaders} batch {batch_idx + 1}/{total}")


class Preflight(Callback):
    """Before the first step, reads one batch from the validation loader and, when the online kNN runs, the kNN
    bank's loader: a missing split, a bad evaluation setting or an unreadable first image stops the run now, not
    after a whole epoch of training."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if dm is None or trainer.limit_val_batches == 0:
            return
        loaders = dm.val_dataloader()
        loaders = loaders if isinstance(loaders, list) else [loaders]
        if any(isinstance(cb, OnlineKnn) and cb.num_classes is not None for cb in trainer.callbacks):
            loaders.append(dm.eval_loader("bank", shard=True))
        for loader in loaders:
            next(iter(loader), None)
