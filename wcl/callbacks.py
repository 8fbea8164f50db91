"""``Checkpoint``: a ModelCheckpoint that never leaves a half-written file and saves on pre-emption."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with three changes (all of its arguments work as usual):

    * the default ``dirpath`` is ``<default_root_dir>/checkpoints`` (not inside the logger's version folder), so
      ``--ckpt_path last`` finds the previous run's ``last.ckpt`` after a restart;
    * every file is written to a temporary name in the same folder and renamed into place, so a kill during a
      save leaves the previous checkpoint intact;
    * on SIGTERM (Lightning stops after the current batch) or Ctrl-C, ``last.ckpt`` is saved before the process
      exits, so ``--ckpt_path last`` continues from there. Under SLURM with auto-requeue, Lightning's own
      SIGUSR1 handler saves and requeues.
    """

    def _default_dirpath(self, trainer: Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        # Called when resolving ckpt_path="last", before setup.
        self._default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        if "://" in filepath:  # remote storage (fsspec): no local rename to make it atomic
            super()._save_checkpoint(trainer, filepath)
            return
        tmp = f"{filepath}.tmp"
        try:
            super()._save_checkpoint(trainer, tmp)
        except BaseException:
            if trainer.is_global_zero and os.path.exists(tmp):
                os.remove(tmp)
            raise
        if trainer.is_global_zero:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, filepath)
        trainer.strategy.barrier("wcl.Checkpoint.rename")
        self._last_checkpoint_saved = filepath

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or self.dirpath is None:
            return
        path = str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")
        self._save_checkpoint(trainer, path)
        self.last_model_path = path
        if trainer.is_global_zero:
            print(f"wcl: interrupted at step {trainer.global_step}; saved {path}. Resume with --ckpt_path last",
                  flush=True)
