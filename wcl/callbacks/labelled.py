"""Callbacks of the supervised evaluations (``wcl.LinearProbe``, ``wcl.FineTune``) that join model and data:
cached frozen features, and the record of which labelled images a semi-supervised run used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from wcl.errors import ConfigError


def labelled_data(trainer: Trainer, needed_by: str, instead: str) -> Any:
    """The trainer's data module when it extracts features once (``wcl.LabelledDataModule``: ``cache_source``,
    ``use_cached``), else one line naming what needs it and the setting to use ``instead``."""
    dm = trainer.datamodule
    if not hasattr(dm, "cache_source") or not hasattr(dm, "use_cached"):
        raise ConfigError(f"{needed_by} needs data class_path wcl.LabelledDataModule (got {type(dm).__name__}); "
                          f"or set {instead}.")
    return dm


class CachedFeatures(Callback):
    """Before fitting, extracts the frozen backbone's features of the train and val images (eval transform) once and
    hands them to the data module, which then serves ``{"features", "label", "index"}`` batches (a linear probe's
    ``mode: cached``). The module provides ``features(x: B×3×S×S) → B×D``."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = labelled_data(trainer, "LinearProbe with mode: cached", "model.mode: augment")
        device = trainer.strategy.root_device
        pl_module.to(device)
        pl_module.eval()
        dm.use_cached(self.extract(pl_module, dm.cache_source("train"), device),
                      self.extract(pl_module, dm.cache_source("val"), device))

    @staticmethod
    @torch.no_grad()
    def extract(pl_module: LightningModule, loader: DataLoader, device: torch.device) -> FeatureDataset:
        feats, labels, index = [], [], []
        for batch in loader:
            feats.append(pl_module.features(batch["image"].to(device)).float().cpu())
            labels.append(batch["label"])
            index.append(batch["index"])
        return FeatureDataset(torch.cat(feats), torch.cat(labels), torch.cat(index))


class ProbeFirst(Callback):
    """Before fine-tuning, trains the new classifier as a linear probe on the frozen backbone's features of the
    training images (eval transform, extracted once), so fine-tuning starts from the probe's accuracy and the first
    steps' gradients through the backbone come from a trained head rather than a random one (LP-FT, Kumar et al.,
    2022). Skipped when the fit resumes from a checkpoint, which holds the head already.

    Args:
        epochs: passes over the cached features (SGD with Nesterov momentum 0.9, cosine schedule, batch 256).
        lr: learning rate of the probe.
        seed: seed of the probe's batch order (the same head on every rank).
    """

    def __init__(self, epochs: int, lr: float = 0.1, seed: int = 0) -> None:
        self.epochs, self.lr, self.seed = epochs, lr, seed

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is not None or self.epochs == 0:
            return
        dm = labelled_data(trainer, "model.probe_epochs", "model.probe_epochs: 0")
        was_training = pl_module.training
        pl_module.eval()
        data = CachedFeatures.extract(pl_module, dm.cache_source("train"), pl_module.device)
        fit_linear(pl_module.classifier, data.tensors[0].to(pl_module.device), data.tensors[1].to(pl_module.device),
                   self.epochs, self.lr, self.seed)
        pl_module.train(was_training)


@torch.enable_grad()
def fit_linear(layer: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float,
               seed: int = 0, batch_size: int = 256) -> None:
    """Trains ``layer`` in place on N×D ``feats`` and LongTensor[N] ``labels`` by cross-entropy: SGD with Nesterov
    momentum 0.9, a cosine schedule over every step, no weight decay."""
    opt = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9, nesterov=True)
    steps = epochs * -(-len(feats) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(feats), generator=g).split(batch_size):
            loss = torch.nn.functional.cross_entropy(layer(feats[rows]), labels[rows.to(labels.device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    opt.zero_grad(set_to_none=True)


class FeatureDataset(TensorDataset):
    """Cached features as ``{"features": D, "label", "index"}`` samples."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        f, y, idx = super().__getitem__(i)
        return {"features": f, "label": y, "index": idx}


class LabelledSubsetFile(Callback):
    """Writes ``labelled_subset.txt`` (one image source a line) next to the checkpoints when the data module selected
    a labelled subset (``data.label_fraction`` or ``data.subset_file``), so a semi-supervised result names its
    labels. ``required_by``: the model argument that needs such a subset (a fit without one is refused)."""

    def __init__(self, required_by: str | None = None) -> None:
        self.required_by = required_by

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.required_by and not getattr(trainer.datamodule, "label_subset", True):
            raise ConfigError(f"{self.required_by} uses the labels of data.label_fraction / data.subset_file, and "
                              "neither is set, so every training label would be known; set --data.label_fraction "
                              "(1.0 for all labels).")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        names = dm.labelled_names() if hasattr(dm, "labelled_names") else None
        if names is None or not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        out = Path(ckpt.dirpath if ckpt is not None and ckpt.dirpath else trainer.log_dir or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "labelled_subset.txt").write_text("\n".join(names) + "\n")
