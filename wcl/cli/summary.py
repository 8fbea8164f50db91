"""What a run prints at its end: the fit's summary (a callback) and the validation's metrics, as ``wcl:`` lines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger


def label_protocol(datamodule: Any) -> str | None:
    """The data module's phrase for the labels a run used, or ``None`` where it has none to say."""
    protocol = getattr(datamodule, "protocol", None)
    return protocol() if protocol is not None else None


def _counted(model: LightningModule) -> str:
    """What the throughput counts: a pretraining's every view and crop; a probe's or fine-tune's labelled images."""
    from wcl.module import WCL

    return "every view and crop counted" if isinstance(model, WCL) else "each labelled training image counted once"


class FitSummary(Callback):
    """After a fit ends (not when it is stopped), on global rank 0: its time, steps and epochs, the training
    throughput, the final and best validation metrics, the kNN curve, the labels used, the checkpoint and the
    metrics file. ``start`` is the time the run began (set by the command line before its checks; else at setup)."""

    def __init__(self) -> None:
        self.start: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            print("\n".join(self.lines(trainer, pl_module)), flush=True)

    def lines(self, trainer: Trainer, pl_module: LightningModule) -> list[str]:
        from wcl.callbacks import OnlineKnn, TrainingMonitor

        metrics = trainer.callback_metrics
        seconds = time.perf_counter() - (self.start or time.perf_counter())
        lines = [f"wcl: fit finished in {seconds:.1f} s ({trainer.global_step} steps, {trainer.current_epoch} epochs)"]
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, TrainingMonitor)), None)
        if monitor is not None and monitor.seconds > 0:
            lines.append(f"wcl: training throughput {monitor.images_per_second:.0f} images/s "
                         f"({_counted(pl_module)}, data loading included, validation excluded)")
        for key in ("val/knn_top1", "val/online_linear_top1", "val/top1", "val/top5", "val/best_top1"):
            if key in metrics:
                lines.append(f"wcl: final {key} = {float(metrics[key]):.4f}")
        knn = next((cb for cb in trainer.callbacks if isinstance(cb, OnlineKnn)), None)
        if knn is not None and len(knn.history) > 1:  # the curve: did it learn?
            lines.append("wcl: val/knn_top1 by epoch: " + ", ".join(f"{e}: {v:.4f}" for e, v in knn.history))
        if knn is not None and knn.best_top1 is not None:
            lines.append(f"wcl: best val/knn_top1 = {knn.best_top1:.4f}")
        if protocol := label_protocol(trainer.datamodule):  # which labels the numbers above used
            lines.append(f"wcl: labels: {protocol}")
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if ckpt is not None:
            path = ckpt.last_model_path or ckpt.best_model_path
            lines.append(f"wcl: checkpoint: {path}" if path else "wcl: no checkpoint was written")
        if isinstance(trainer.logger, CSVLogger):
            lines.append(f"wcl: metrics: {Path(trainer.logger.log_dir) / 'metrics.csv'}")
        return lines


def print_validation(trainer: Trainer) -> None:
    """The validation's metrics as ``wcl:`` lines, rounded as the fit summary rounds them (global rank 0)."""
    if not trainer.is_global_zero:
        return
    if protocol := label_protocol(trainer.datamodule):
        print(f"wcl: labels: {protocol}", flush=True)
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    lines = [f"wcl: {key} = {float(value):.4f}" for key, value in sorted(metrics.items())]
    print("\n".join(lines) or "wcl: the validation logged no metrics", flush=True)
