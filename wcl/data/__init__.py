"""Datasets, transforms and the Lightning data module."""

from wcl.data.datamodule import WCLDataModule
from wcl.data.transforms import Augmentations

__all__ = ["Augmentations", "WCLDataModule"]
