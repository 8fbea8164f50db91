"""wcl: Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021) in PyTorch Lightning.

The public classes are imported on first use, so ``import wcl`` (and ``python -m wcl --help``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WCL": "wcl.module",
    "WCLDataModule": "wcl.data.datamodule",
    "LabelledDataModule": "wcl.data.datamodule",
    "LinearProbe": "wcl.eval.classifier",
    "FineTune": "wcl.eval.classifier",
    "KNNEval": "wcl.eval.knn",
    "PropagationEval": "wcl.eval.propagate",
    "Embedder": "wcl.eval.embed",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wcl' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
