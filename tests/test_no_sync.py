"""The GPU path does no host work per step: on steps that log nothing, neither the data path (index batches and the
batched views) nor the training step nor the callbacks around it reads a device value back on the host.

Checked on the CPU with a dispatch mode that records the operators that would synchronise a GPU: reading a scalar
(``.item()``, ``bool()``, ``float()``), ``nonzero``, and boolean-mask indexing (which needs ``nonzero``).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils._python_dispatch import TorchDispatchMode

from wcl import WCL, WCLDataModule
from wcl.callbacks import Checkpoint, KnnMultiCrop, PlainProgress, RichProgress, TrainingMonitor

aten = torch.ops.aten
SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
           aten.is_nonzero.default}


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        bool_index = func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []))
        if func in SYNCING or bool_index:
            self.found.append(str(func))
        return func(*args, **kwargs)


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
    epoch, the multi-crop's bank): no syncing operator on the steps that log nothing."""
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
                      callbacks=[*BARS[bar](), Checkpoint(), KnnMultiCrop(k=3, backend="torch"), TrainingMonitor(),
                                 watch])
    trainer.fit(model, dm)
    assert sorted(watch.found) == [1, 2, 3]
    assert {step: ops for step, ops in watch.found.items() if ops} == {}
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and "val/knn_top1" in trainer.callback_metrics
