"""Helpers shared by the tests, and callbacks they pass to ``python -m wcl`` subprocesses (importable as
``tests.helpers``: pytest puts the repository root on ``sys.path``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch import Callback

from wcl.callbacks import KnnMultiCrop
from wcl.callbacks.multicrop import neighbor_table
from wcl.distributed import destroy_process_group

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml")]  # the README's first command


def run_wcl(args: list[str], cwd: Path) -> str:
    """stdout + stderr of ``python -m wcl ARGS`` run in ``cwd`` with this checkout's code on 2 threads (the
    project's machine); a failure shows the end of the output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "wcl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"python -m wcl {' '.join(args)} failed:\n{out[-3000:]}"
    return out


def free_port() -> int:
    """A free TCP port on localhost for a test's process group."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gloo_rank(rank: int, fn: Callable, port: int, world: int, args: tuple, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = fn(rank, *args)
    finally:
        destroy_process_group()


def run_gloo(fn: Callable[..., Any], *args: Any, world: int = 2) -> dict[int, Any]:
    """``fn(rank, *args)`` in ``world`` spawned processes joined in one gloo process group; ``{rank: result}``.
    ``fn`` must be a module-level function (it is pickled into the processes)."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_gloo_rank, args=(fn, free_port(), world, args, out), nprocs=world, join=True)
        return dict(out)


def _multicrop(trainer) -> KnnMultiCrop:
    return next(cb for cb in trainer.callbacks if isinstance(cb, KnnMultiCrop))


class DumpNeighborTable(Callback):
    """Saves each rank's neighbour table at the start of every epoch ≥ 1, after checking that every crop of the
    epoch's batches came from one of its sample's neighbours in that table."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.checked = 0
        self.snapshot: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        table = _multicrop(trainer).table
        self.snapshot = table.table.clone()
        if trainer.current_epoch >= 1:
            if table.epoch != trainer.current_epoch - 1:
                raise AssertionError(f"rank {trainer.global_rank}: epoch {trainer.current_epoch} has a stale table")
            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"table": self.snapshot, "epoch": table.epoch},
                       self.out_dir / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        (self.out_dir / f"rank{trainer.global_rank}_checked.txt").write_text(str(self.checked))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch >= 1:
            rows = self.snapshot[batch["index"].cpu()]
            if not bool((batch["crop_source"].cpu()[:, :, None] == rows[:, None, :]).any(-1).all()):
                raise AssertionError("a crop does not come from one of its sample's neighbours")
            self.checked += 1


class SignalAtStep(Callback):
    """Sends ``signal`` (a name: SIGTERM as a scheduler's pre-emption, SIGKILL as an OOM killer, SIGINT as Ctrl-C)
    to this process after training step ``step``; with ``group``, to its whole process group (data-loader
    workers included), as a terminal sends Ctrl-C (start the process with ``start_new_session=True``)."""

    def __init__(self, step: int, signal: str = "SIGTERM", group: bool = False, repeat: int = 1) -> None:
        self.step, self.signal, self.group, self.repeat = step, signal, group, repeat

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            for _ in range(self.repeat):  # e.g. Ctrl-C pressed twice
                if self.group:
                    os.killpg(os.getpgrp(), getattr(signal, self.signal))
                else:
                    os.kill(os.getpid(), getattr(signal, self.signal))


class RecordBatches(Callback):
    """Appends each training batch's step, indices, crop sources and a checksum of its views to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        views = float(sum(v.double().sum() for v in batch["views"] + (batch.get("small") or [])))
        crops = batch["crop_source"].tolist() if "crop_source" in batch else []
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch['index'].tolist()} {crops} {views:.5f}\n")


class WaitAtStep(Callback):
    """After training step ``step``, creates the file ``marker`` and waits (at most ``timeout`` s) until it is
    removed: the run holds its place while a test does something else."""

    def __init__(self, step: int, marker: str, timeout: float = 300.0) -> None:
        self.step, self.marker, self.timeout = step, Path(marker), timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import time

            self.marker.write_text("waiting")
            deadline = time.monotonic() + self.timeout
            while self.marker.exists() and time.monotonic() < deadline:
                time.sleep(0.1)


def whole_image_table(model: torch.nn.Module, dm: Any, k: int) -> torch.Tensor:
    """The k-NN table of every pretraining image's eval-mode feature (evaluation transform), in one process."""
    model.eval()
    index, feats = [], []
    with torch.no_grad():
        for batch in dm.eval_loader("pretrain"):
            batch = dm.on_after_batch_transfer(batch, 0)
            index.append(batch["index"])
            feats.append(F.normalize(model(batch["image"]), dim=1).half())
    n = len(dm.source.pretrain)
    return neighbor_table(torch.cat(index), torch.cat(feats), torch.arange(n)[:, None].repeat(1, k), k)
