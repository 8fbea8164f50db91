"""Faults injected into ``python -m wcl`` subprocesses by the tests (importable as ``tests.faults``, passed with
``--trainer.callbacks+=tests.faults.NAME``): a signal in validation or prediction, a full disk or a kill -9 in the
middle of a checkpoint save, and a record of the learning rate of every step."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback


class SignalAtBatch(Callback):
    """Sends ``signal`` to this process after batch ``batch`` of ``stage`` (``validate`` or ``predict``)."""

    def __init__(self, stage: str = "predict", batch: int = 0, signal: str = "SIGTERM") -> None:
        self.stage, self.batch, self.signal = stage, batch, signal

    def _maybe(self, stage: str, batch_idx: int) -> None:
        if stage == self.stage and batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signal))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe("validate", batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._maybe("predict", batch_idx)


class _FaultyIO(CheckpointIO):
    """Writes the first ``good`` checkpoints through ``inner``; the next one is cut after half its bytes by
    ``fault``: ``enospc`` raises the full-disk error, ``kill`` sends SIGKILL to the process (a kill -9 mid-save)."""

    def __init__(self, inner: CheckpointIO, good: int, fault: str) -> None:
        self.inner, self.good, self.fault = inner, good, fault

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if self.good > 0:
            self.good -= 1
            self.inner.save_checkpoint(checkpoint, path, storage_options)
            return
        self.inner.save_checkpoint(checkpoint, path, storage_options)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, **kwargs: Any) -> dict[str, Any]:
        return self.inner.load_checkpoint(path, map_location, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)


class DiskFault(Callback):
    """From the ``good + 1``-th checkpoint save on, the disk is full (``fault="enospc"``) or the process is killed
    in the middle of the save (``fault="kill"``). Set up before ``Checkpoint``, which wraps the writer to make
    saves atomic (Lightning sets up checkpoint callbacks last)."""

    def __init__(self, good: int = 1, fault: str = "enospc") -> None:
        self.good, self.fault = good, fault

    def setup(self, trainer, pl_module, stage: str) -> None:
        trainer.strategy.checkpoint_io = _FaultyIO(trainer.strategy.checkpoint_io, self.good, self.fault)


class RecordLR(Callback):
    """Appends ``step lr`` of the first parameter group to ``path`` before every training step (global rank 0)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(f"{trainer.global_step} {trainer.optimizers[0].param_groups[0]['lr']:.8g}\n")
