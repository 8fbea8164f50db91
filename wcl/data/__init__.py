"""Data: the dataset catalogue, the view augmentation (CPU and batched device forms), crops, data modules."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Augmentations": "wcl.data.augment",
    "WCLDataModule": "wcl.data.datamodule",
    "LabelledDataModule": "wcl.data.datamodule",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wcl.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
