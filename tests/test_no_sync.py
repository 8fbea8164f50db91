"""The GPU path does no host work per step: on steps that log nothing, neither the data path (index batches and the
batched views) nor the training step nor the callbacks around it reads a device value back on the host, copies
from host memory in a way that waits, or talks to other ranks from a callback.

Checked on the CPU, where every tensor of the step stands for a device tensor, by recording:

* operators that would synchronise a GPU (a dispatch mode): reading a scalar (``.item()``, ``bool()``,
  ``float()``), ``nonzero``, and boolean-mask indexing (which needs ``nonzero``);
* calls that cost only on CUDA (a torch-function mode): ``.cpu()`` / ``.to("cpu")`` / ``.numpy()`` / ``.tolist()``
  / ``.item()`` (a device→host copy), ``.to(..., non_blocking=True)`` of a host tensor that is not pinned (CUDA
  then copies synchronously), and tensors built from Python or numpy data (``torch.tensor([...])``, e.g. a mean or
  std rebuilt per batch: a host→device copy);
* the multi-crop's ``on_train_batch_end``: no collective (every gather of ``wcl.distributed`` and every
  ``torch.distributed`` collective counted) besides the checks above.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from wcl import WCL, WCLDataModule, distributed
from wcl.callbacks import Checkpoint, KnnMultiCrop, PlainProgress, RichProgress, TrainingMonitor

aten = torch.ops.aten
SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
           aten.is_nonzero.default}


class _SyncingOps(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        bool_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        if func in SYNCING or bool_index:
            self.found.append(str(func))
        return func(*args, **kwargs)


READ_BACK = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}
FROM_HOST_DATA = {torch.tensor, torch.as_tensor, torch.from_numpy}


def _to_host(args: tuple, kwargs: dict) -> bool:
    """``Tensor.to("cpu")``: the host named as such. (A ``torch.device`` cannot tell: in this test the training
    device is the CPU.)"""
    return any(isinstance(a, str) and torch.device(a).type == "cpu" for a in (*args[1:], kwargs.get("device")))


class _CudaOnlyCosts(TorchFunctionMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if func in READ_BACK or (func is torch.Tensor.to and _to_host(args, kwargs)):
            self.found.append(f"{name} (device to host)")
        elif func is torch.Tensor.to and kwargs.get("non_blocking") and args[0].device.type == "cpu" \
                and not args[0].is_pinned():
            self.found.append(f"{name}(non_blocking=True) of unpinned host memory")
        elif func in FROM_HOST_DATA and not isinstance(args[0] if args else kwargs.get("data"), torch.Tensor):
            self.found.append(f"{name} of host data (host to device)")
        return func(*args, **kwargs)


class _Recorder:
    """Both modes at once; ``found`` lists what they saw."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.modes = [_CudaOnlyCosts(self.found), _SyncingOps(self.found)]

    def __enter__(self) -> _Recorder:
        for mode in self.modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_gather_object", "all_reduce", "all_to_all",
               "all_to_all_single", "barrier", "broadcast", "broadcast_object_list", "gather", "reduce",
               "reduce_scatter", "scatter")


@contextmanager
def _collectives(trainer) -> Iterator[list[str]]:  # noqa: ANN001
    """Counts every collective call: ``torch.distributed``'s, the strategy's, and every helper of
    ``wcl.distributed`` (each asks ``is_distributed`` first, also on one process, where it returns early)."""
    calls: list[str] = []

    def counted(name: str, fn):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(name)
            return fn(*args, **kwargs)
        return call

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(distributed, "is_distributed",
                                              counted("wcl.distributed", distributed.is_distributed)))
        for name in COLLECTIVES:
            if hasattr(dist, name):
                stack.enter_context(mock.patch.object(dist, name, counted(f"torch.distributed.{name}",
                                                                          getattr(dist, name))))
        for name in ("broadcast", "barrier", "reduce", "all_gather"):
            stack.enter_context(mock.patch.object(trainer.strategy, name, counted(f"strategy.{name}",
                                                                                 getattr(trainer.strategy, name))))
        yield calls


class _CountingMultiCrop(KnnMultiCrop):
    """KnnMultiCrop whose ``on_train_batch_end`` records, on every batch but the epoch's last, the collectives and
    CUDA-only costs it makes and how many rows its bank holds after it."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.calls: list[str] = []
        self.costs: list[str] = []
        self.rows: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx + 1 == trainer.num_training_batches:  # the epoch's end: the search talks to the other ranks
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        with _collectives(trainer) as calls, _Recorder() as rec:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.calls += calls
        self.costs += rec.found
        self.rows.append(self.bank.size)


class _Watch(Callback):
    """Records syncing operators from the batch transfer to the last callback, on steps ``steps``."""

    def __init__(self, steps: range) -> None:
        self.steps, self.mode, self.found = steps, None, {}

    def start(self, step: int) -> None:
        if step in self.steps:
            self.mode = _Recorder()
            self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.found[trainer.global_step - 1] = self.mode.found
            self.mode = None


BARS = {"none": lambda: [], "plain": lambda: [PlainProgress()], "rich": lambda: [RichProgress()],
        "lightning rich": lambda: [RichProgressBar()]}


@pytest.mark.slow
@pytest.mark.parametrize("bar", ["none", "plain", "rich", pytest.param("lightning rich", marks=pytest.mark.xfail(
    strict=True, reason="Lightning's own Rich bar reads the metrics back every step: why wcl ships RichProgress"))])
def test_training_steps_that_log_nothing_never_sync(tmp_path, bar):
    """The callbacks a user gets (a progress bar as in a terminal or a pipe, checkpoints, the online kNN every
    epoch, the multi-crop's bank): nothing recorded on the steps that log nothing, and the multi-crop's bank
    writes talk to no other rank."""
    dm = WCLDataModule(batch_size=16, num_workers=0, train_per_class=8, val_per_class=1, augment_on="device",
                       in_memory="device", num_small_crops=2, small_crop_size=16, eval_batch_size=10)
    watch = _Watch(range(1, 4))  # steps 1-3 of 5 in each epoch: not the first, not the last, no logging
    transfer = dm.on_after_batch_transfer

    def watched_transfer(batch, dataloader_idx):  # noqa: ANN001
        if trainer.training:
            watch.start(trainer.global_step)
        return transfer(batch, dataloader_idx)

    dm.on_after_batch_transfer = watched_transfer
    model = WCL(backbone="resnet18", width=4, cifar_stem=True, proj_hidden_dim=16, proj_out_dim=8,
                weak_hidden_dim=16, weak_out_dim=8, num_classes=10, optimizer="lars", lr_scaling="none",
                warmup_epochs=0, knn_k=5, knn_every_n_epochs=1, graph_backend="torch")
    trainer = Trainer(accelerator="cpu", max_epochs=1, log_every_n_steps=50, logger=False,
                      enable_progress_bar=bar != "none", enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path,
                      callbacks=[*BARS[bar](), Checkpoint(), multicrop := _CountingMultiCrop(k=3), TrainingMonitor(),
                                 watch])
    trainer.fit(model, dm)
    assert sorted(watch.found) == [1, 2, 3]
    assert {step: ops for step, ops in watch.found.items() if ops} == {}
    assert multicrop.rows == [16, 32, 48, 64] and multicrop.calls == [] and multicrop.costs == []
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and "val/knn_top1" in trainer.callback_metrics


def test_the_recorders_see_each_pattern():
    x = torch.ones(3)
    with _Recorder() as rec:
        x.cpu(), x.to("cpu"), x.tolist(), x.numpy(), x.to(torch.float64, non_blocking=True)
        torch.tensor([0.5, 0.25]), torch.as_tensor([1, 2]), float(x.sum()), x[x > 0]
        x.to(x.device), torch.as_tensor(x), torch.full((2,), 0.5)  # none of these costs anything
    assert [f.split(" ")[0].split("(")[0] for f in rec.found] == [
        "cpu", "to", "tolist", "numpy", "to", "tensor", "as_tensor", "aten._local_scalar_dense.default",
        "aten.index.Tensor"], rec.found
    trainer = Trainer(accelerator="cpu", logger=False)
    with _collectives(trainer) as calls:
        distributed.gather_nograd(x), trainer.strategy.barrier()
    assert calls == ["wcl.distributed", "strategy.barrier"]
