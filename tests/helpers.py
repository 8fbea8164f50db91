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
