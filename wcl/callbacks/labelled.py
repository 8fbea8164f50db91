"""Callbacks of the supervised evaluations (``wcl.LinearProbe``, ``wcl.FineTune``) that join model and data:
cached frozen features, and the record of which labelled images a semi-supervised run used."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from wcl.errors import ConfigError


class CachedFeatures(Callback):
    """Before fitting, extracts the frozen backbone's features of the train and val images (eval transform) once and
    hands them to the data module, which then serves ``{"features", "label", "index"}`` batches (a linear probe's
    ``mode: cached``). The module provides ``features(x: B×3×S×S) → B×D``."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if not hasattr(dm, "use_cached"):
            raise ConfigError("LinearProbe with mode: cached needs data class_path wcl.LabelledDataModule "
                              f"(got {type(dm).__name__}); or set model.mode: augment.")
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
