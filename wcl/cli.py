"""Command line: ``python -m wcl fit|validate|test --config …`` (LightningCLI).

Models and data modules are named by ``class_path`` in YAML (``wcl.WCL``, ``wcl.WCLDataModule``), so
every ``__init__`` argument is a config key, and a misspelt key fails before anything runs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from wcl.distributed import destroy_process_group
from wcl.errors import WCLError


class WCLCLI(LightningCLI):
    """LightningCLI with the data module's class count linked to the model, a Rich progress bar by default,
    and an end-of-fit summary."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Rich progress bar by default, unless the config disables the bar or brings its own.
        cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        callbacks = cfg.get("callbacks") or []
        if cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            cfg["callbacks"] = [*callbacks, RichProgressBar()]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        lines = [f"wcl: fit finished in {time.perf_counter() - self._fit_start:.1f} s "
                 f"({trainer.global_step} steps, {trainer.current_epoch} epochs)"]
        model = trainer.lightning_module
        if getattr(model, "train_seconds", 0) > 0:
            lines.append(f"wcl: training throughput {model.train_images / model.train_seconds:.0f} images/s "
                         "(every view counted, data loading included, validation excluded)")
        for key in ("val/knn_top1", "val/online_linear_top1", "val/top1", "val/top5", "val/best_top1"):
            if key in metrics:
                lines.append(f"wcl: final {key} = {float(metrics[key]):.4f}")
        best_knn = getattr(model, "best_knn_top1", None)
        if best_knn is not None:
            lines.append(f"wcl: best val/knn_top1 = {best_knn:.4f}")
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if ckpt is not None:
            path = ckpt.last_model_path or ckpt.best_model_path
            lines.append(f"wcl: checkpoint: {path}" if path else "wcl: no checkpoint was written")
        print("\n".join(lines), flush=True)


def _user_error(err: BaseException) -> WCLError | None:
    """The WCLError behind ``err``, if any (jsonargparse wraps errors raised while instantiating classes)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, WCLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m wcl`` and the ``wcl`` console script."""
    try:
        WCLCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            save_config_kwargs={"overwrite": True},
        )
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"wcl: error: {user_error}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        destroy_process_group()


if __name__ == "__main__":
    main()
