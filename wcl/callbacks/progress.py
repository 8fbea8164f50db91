"""Progress and start-up output: ``PlainProgress`` (plain lines, for output that is not a terminal: logs, CI,
``| tee``); ``RichProgress`` (Lightning's Rich bar for a terminal, numbered the same way, without a host sync per
step); ``ModelTable`` (the model summary as plain text, without FLOPs nobody measured); ``Preflight`` (every loader
a run will use delivers one batch before the first training step)."""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.callbacks.model_summary import log as summary_log
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

from wcl.callbacks.knn import OnlineKnn
from wcl.callbacks.monitor import is_logging_step


def _epoch(trainer: Trainer) -> str:
    """``1/E``: the epoch counted from 1, as the summary and the checkpoints' epoch count it."""
    total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
    return f"{trainer.current_epoch + 1}{total}"


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
            self._print(trainer, f"epoch {_epoch(trainer)} step {batch_idx + 1}/{self.total_train_batches}{loss}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/loss"))}
        knn = next((cb for cb in trainer.callbacks if isinstance(cb, OnlineKnn)), None)
        stale = knn is not None and knn.last_epoch is not None and knn.last_epoch != trainer.current_epoch
        values = ", ".join(f"{k} {float(v):.4f}" + (f" (from epoch {knn.last_epoch + 1})"
                                                    if stale and k.startswith("val/knn_") else "")
                           for k, v in sorted(shown.items()))
        self._print(trainer, f"epoch {_epoch(trainer)} done in {time.perf_counter() - self._start:.1f} s"
                             + (f": {values}" if values else ""))

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        n, total = self.every_n_steps or trainer.log_every_n_steps, trainer.num_predict_batches[dataloader_idx]
        if n > 0 and ((batch_idx + 1) % n == 0 or batch_idx + 1 == total):
            loaders = len(trainer.num_predict_batches)
            self._print(trainer, f"predict loader {dataloader_idx + 1}/{loaders} batch {batch_idx + 1}/{total}")


class RichProgress(RichProgressBar):
    """Lightning's ``RichProgressBar`` (all of its arguments work as usual) with three changes: the epoch is counted
    like ``PlainProgress`` and the summary count it (``Epoch 1/6``, not ``Epoch 0/5``); no ``v_num``; and the
    metrics beside the bar (``loss``) are read back only at logging steps (every ``log_every_n_steps``) and at an
    epoch's last batch. Lightning's bar reads them every step, and each read of a device value is a host sync that
    stalls a GPU's launch queue."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._read_metrics = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._read_metrics = (is_logging_step(trainer, trainer.global_step - 1)
                              or batch_idx + 1 == trainer.num_training_batches)
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._read_metrics = True

    def _update_metrics(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._read_metrics:
            super()._update_metrics(trainer, pl_module)

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _get_train_description(self, current_epoch: int) -> str:
        total = f"/{self.trainer.max_epochs}" if self.trainer.max_epochs and self.trainer.max_epochs > 0 else ""
        description = f"Epoch {current_epoch + 1}{total}"
        return f"{description:{len(self.validation_description)}}"  # as Lightning pads it: no flicker


def summary_table(columns: list[tuple[str, list[str]]], total: int, trainable: int, size_mb: float,
                  modes: dict[str, int], flops: int) -> str:
    """Lightning's model summary columns (``[(header, cells)]``) and totals as a plain-text table, laid out as
    Lightning lays out its own; the FLOPs column and total only when FLOPs were counted."""
    if not flops:
        columns = [column for column in columns if column[0] != "FLOPs"]
    widths = [max([len(head), *(len(str(cell)) for cell in cells)]) for head, cells in columns]

    def row(cells: Any) -> str:
        return " | ".join(f"{cell!s:<{width}}" for cell, width in zip(cells, widths, strict=True))

    rule = "-" * (sum(widths) + 3 * (len(columns) + 1))
    rows = zip(*(cells for _, cells in columns), strict=True)
    lines = [row(head for head, _ in columns), rule, *map(row, rows), rule]
    totals = [(get_human_readable_count(trainable), "Trainable params"),
              (get_human_readable_count(total - trainable), "Non-trainable params"),
              (get_human_readable_count(total), "Total params"),
              (get_formatted_model_size(size_mb), "Total estimated model params size (MB)"),
              *((modes[mode], f"Modules in {mode} mode") for mode in ("train", "eval") if mode in modes),
              *([(get_human_readable_count(flops), "Total Flops")] if flops else [])]
    return "\n".join([*lines, *(f"{value!s:<10}{name}" for value, name in totals)])


class ModelTable(ModelSummary):
    """Lightning's model summary (``max_depth`` as usual) as a plain-text table, in a terminal and in a pipe alike
    (no escape codes in logs and notebooks), without the FLOPs column and total when they are 0: Lightning counts
    FLOPs only for a model with an ``example_input_array``, which no wcl model has."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int] | None = None, total_flops: int = 0,
                  **summarize_kwargs: Any) -> None:
        table = summary_table(summary_data, total_parameters, trainable_parameters, model_size,
                              total_training_modes or {}, total_flops)
        summary_log.info("\n" + table)


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
