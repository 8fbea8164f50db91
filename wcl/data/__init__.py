"""Datasets, transforms and the Lightning data module."""

from wcl.data.datamodule import LabelledDataModule, WCLDataModule
from wcl.data.transforms import Augmentations

__all__ = ["Augmentations", "LabelledDataModule", "WCLDataModule"]
