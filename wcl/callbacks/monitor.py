"""Training health: throughput and skipped images (``TrainingMonitor``), non-finite losses (``FiniteLossGuard``)."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from wcl.distributed import is_distributed
from wcl.errors import NonFiniteLossError


def is_logging_step(trainer: Trainer, step: int) -> bool:
    """Whether optimizer step ``step`` is one Lightning logs (every ``log_every_n_steps``). ``step`` is 0-based:
    ``global_step`` inside ``training_step``, ``global_step - 1`` once the optimizer has stepped."""
    n = trainer.log_every_n_steps
    return n > 0 and (step + 1) % n == 0


class TrainingMonitor(Callback):
    """Logs ``train/images_per_second`` each epoch (every view and crop of every rank; data loading included,
    validation excluded) and, when the data module skips undecodable images, ``data/skipped_images``.
    ``images``/``seconds`` are the totals of this fit (after a resume: of the resumed part)."""

    def __init__(self) -> None:
        self.images, self.seconds = 0, 0.0
        self._tick = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._tick = time.perf_counter()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._tick = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if "views" in batch or "image" in batch:  # not cached features (a probe's cached mode)
            self.seconds += now - self._tick
            views = len(batch["views"]) + len(batch.get("small") or []) if "views" in batch else 1
            self.images += views * len(batch["label"]) * trainer.world_size
        self._tick = now

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.seconds > 0:
            pl_module.log("train/images_per_second", self.images_per_second, sync_dist=True)
        skipped = getattr(trainer.datamodule, "skipped", None)
        if skipped is not None:
            pl_module.log("data/skipped_images", float(skipped.get()), reduce_fx="sum", sync_dist=True)


class FiniteLossGuard(Callback):
    """Stops with a clear error when a loss term (``training_step``'s ``outputs["terms"]``) becomes NaN or inf.

    The check stays on the device (no host synchronisation per step): it reads back at logging steps, after an
    epoch's last batch and before every checkpoint is written, so a non-finite model is never saved over the last
    good checkpoint. The error names the first bad step and term. Under DDP every rank stops together.
    """

    def __init__(self) -> None:
        self._step: Tensor | None = None  # device copy of the step counter
        self._first: Tensor | None = None  # first bad step (-1: none)
        self._values: Tensor | None = None  # the terms at that step
        self._names: list[str] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        terms: dict[str, Tensor] = outputs["terms"]
        values = torch.stack([t.detach().float() for t in terms.values()])
        if self._step is None or list(terms) != self._names:
            self._check(trainer)
            self._names = list(terms)
            self._step = torch.tensor(trainer.global_step - 1, device=values.device)  # this batch's step
            self._first = torch.tensor(-1, device=values.device)
            self._values = torch.zeros_like(values)
        new = (self._first < 0) & ~torch.isfinite(values).all()
        self._first = torch.where(new, self._step, self._first)
        self._values = torch.where(new, values, self._values)
        self._step += 1
        if is_logging_step(trainer, trainer.global_step - 1) or batch_idx + 1 == trainer.num_training_batches:
            self._check(trainer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._check(trainer)

    def _check(self, trainer: Trainer) -> None:
        if self._first is None:
            return
        first = self._first.clone()
        if is_distributed():
            # Every rank must stop together, or the others would wait forever in the next collective.
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MAX)
        step = int(first)
        if step < 0:
            return
        values = dict(zip(self._names, self._values.tolist(), strict=True))
        bad = ", ".join(k for k, v in values.items() if not torch.isfinite(torch.tensor(v)))
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at step {step} in {bad or 'another rank'} (values: {shown}); detected at step "
            f"{trainer.global_step}. Lower model.base_lr, use a longer model.warmup_epochs, or check the input data; "
            "the last checkpoint is intact (nothing was saved after that step).")
