"""Runs that would do nothing, or something else than asked, say so before they start (``RunChecks``); ``validate``
and ``predict`` stop on SIGTERM as ``fit`` does (``StopOnSigterm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wcl.distributed import is_distributed
from wcl.errors import ConfigError


def stop_everywhere(trainer: Trainer, message: str) -> None:
    """Stops every process of a run with ``message`` (a ``ConfigError``), said once: by global rank 0, while the
    other processes exit with the same status (2) without repeating it. Every process must call it."""
    if trainer.is_global_zero:
        raise ConfigError(message)
    raise SystemExit(2)


class StopOnSigterm(Callback):
    """``validate`` and ``predict`` stop after the current batch on SIGTERM (a scheduler's pre-emption, ``kill``),
    with Lightning's ``SIGTERMException`` (``python -m wcl`` exits 143), instead of running to the end: Lightning
    records the signal in every loop but stops only ``fit`` (and an evaluation before its last batch). Nothing is
    written by a stopped ``predict`` (its files are written after the last batch). ``fit`` keeps Lightning's own
    stop, after which :class:`~wcl.callbacks.Checkpoint` saves ``last.ckpt``."""

    def _stop(self, trainer: Trainer) -> None:
        if trainer.received_sigterm and trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.PREDICTING):
            raise SIGTERMException

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._stop(trainer)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop(trainer)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._stop(trainer)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop(trainer)


class RunChecks(Callback):
    """Refuses, in one line before the first step, a run that would silently do nothing useful:

    * ``fit`` where some process's training loader has no batch (``drop_last`` on few images per process): the
      run would train 0 steps and write no checkpoint; every process checks, so 2 processes on 16 images with batch
      10 stop as 1 process on 8 would (the command line refuses ``trainer.limit_train_batches 0`` and
      ``log_every_n_steps 0`` before this, :mod:`wcl.cli.checks`);
    * ``validate`` of a ``LinearProbe`` / ``FineTune`` config without ``--ckpt_path``: its classifier is trained by
      ``fit``, so it would score an untrained classifier (chance).
    """

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.train_dataloader is None:
            trainer.estimated_stepping_batches  # noqa: B018 - the public way to have Lightning build the loader
        batches = trainer.num_training_batches
        empty = torch.tensor([float(batches == 0)])
        if is_distributed():  # once per fit: every process stops together, whichever has no batch
            empty = empty.to(pl_module.device)
            torch.distributed.all_reduce(empty, op=torch.distributed.ReduceOp.MAX)
        if float(empty) == 0:
            return
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        per_rank, batch = getattr(sampler, "num_samples", None), getattr(loader, "batch_size", None)
        world = trainer.world_size
        if per_rank is not None and batch is not None and per_rank < batch:
            total = len(getattr(sampler, "dataset", None) or ()) or per_rank * world
            share = f"{per_rank} training images" if world == 1 else \
                f"{total} training images shared by {world} processes: {per_rank} each"
            more = ", or fewer processes (--trainer.devices / --trainer.num_nodes)" if world > 1 else ""
            stop_everywhere(trainer, f"{share}, fewer than data.batch_size={batch} (incomplete batches are "
                            f"dropped), so the run would train 0 steps and save nothing; lower --data.batch_size to "
                            f"{per_rank} or less, use more images{more}.")
        stop_everywhere(trainer, f"a training loader has no batch (trainer.limit_train_batches "
                        f"{trainer.limit_train_batches}), so the run would train 0 steps and save nothing; use "
                        "more images or a larger trainer.limit_train_batches.")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from wcl.eval.classifier import FineTune, LinearProbe

        if trainer.state.fn != TrainerFn.VALIDATING or trainer.ckpt_path is not None:
            return
        if isinstance(pl_module, LinearProbe | FineTune):
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            example = f"--ckpt_path last ({last} exists)" if last.is_file() else \
                f"--ckpt_path PATH (e.g. {last}, written by fit with this config)"
            raise ConfigError(f"validate of a {type(pl_module).__name__} config without --ckpt_path would score an "
                              f"untrained classifier (fit trains it); pass the trained run's checkpoint with "
                              f"{example}.")
