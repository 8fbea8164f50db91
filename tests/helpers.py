"""Callbacks the tests pass to ``python -m wcl`` subprocesses (importable as ``tests.helpers``)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback


class DumpNeighborTable(Callback):
    """Saves each rank's neighbour table at the start of every epoch ≥ 1, after checking that every batch of
    the previous epoch used the table its workers should have had."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.checked = 0
        self.snapshot: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        table = trainer.datamodule.neighbor_table
        self.snapshot = table.table.clone()
        if trainer.current_epoch >= 1:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"table": self.snapshot, "epoch": table.epoch},
                       self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        (self.out_dir / f"rank{trainer.global_rank}_checked.txt").write_text(str(self.checked))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        epoch = trainer.current_epoch
        if not bool((batch["table_epoch"] == epoch - 1).all()):
            raise AssertionError(f"rank {trainer.global_rank}: a worker used a stale neighbour table")
        if epoch >= 1:
            rows = self.snapshot[batch["index"]]
            if not bool((batch["small_source"][:, :, None] == rows[:, None, :]).any(-1).all()):
                raise AssertionError("a crop does not come from one of its sample's neighbours")
            self.checked += 1


class SignalAtStep(Callback):
    """Sends ``signal`` (a name: SIGTERM as a scheduler's pre-emption, SIGKILL as an OOM killer) to this process
    after training step ``step``."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), getattr(signal, self.signal))


class RecordBatches(Callback):
    """Appends each training batch's indices and a checksum of its views to ``path`` (for debugging resume)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        s = float(sum(v.double().sum() for v in batch["views"]))
        w = float(sum(p.double().sum() for p in pl_module.parameters()))
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch['index'].tolist()} {s:.6f} params={w:.8f} "
                    f"lr={trainer.optimizers[0].param_groups[0]['lr']:.6f}\n")
