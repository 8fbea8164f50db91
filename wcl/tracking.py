"""Run tracking: the whole LightningCLI config recorded as the run's parameters in every experiment logger.

Lightning's loggers record the model's ``__init__`` arguments by themselves; the trainer, data and seed parts of
the config reach W&B, MLflow or TensorBoard only through :class:`SaveConfig` (the CLI's save-config callback).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger


def config_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat parameters named like the command-line keys: ``{"model.width": 16, …}``
    (``init_args`` levels dropped, lists as JSON text, ``None`` as ``"null"``)."""
    params: dict[str, Any] = {}
    for key, value in config.items():
        name = prefix if key == "init_args" else f"{prefix}{key}" if not prefix else f"{prefix}.{key}"
        if isinstance(value, dict) and value:
            params.update(config_params(value, name))
        elif isinstance(value, (list, tuple, dict)):
            params[name] = json.dumps(value, default=str)
        else:
            params[name] = "null" if value is None else value
    return params


class SaveConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the log folder, and the same config as parameters of every logger that
    tracks runs (the CSV logger has the file next to its metrics already)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        loggers = [lg for lg in trainer.loggers if not isinstance(lg, CSVLogger)]
        if not loggers:
            return
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        # Unset top-level keys (LightningCLI's own optimizer/lr_scheduler) would share names with model arguments
        # that Lightning logs itself, and MLflow refuses a parameter logged twice with two values.
        params = config_params({k: v for k, v in config.items() if v is not None})
        for logger in loggers:
            logger.log_hyperparams(params)
