"""Command line: ``python -m wcl fit|validate|test --config …`` (LightningCLI).

Models and data modules are named by ``class_path`` in YAML (``wcl.WCL``, ``wcl.WCLDataModule``), so
every ``__init__`` argument is a config key, and a misspelt key fails before anything runs.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from wcl.distributed import destroy_process_group
from wcl.errors import WCLError


class WCLCLI(LightningCLI):
    """LightningCLI with the data module's class count linked to the model, and an end-of-fit summary."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def before_fit(self) -> None:
        self._fit_start = time.perf_counter()

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        lines = [f"wcl: fit finished in {time.perf_counter() - self._fit_start:.1f} s "
                 f"({trainer.global_step} steps, {trainer.current_epoch} epochs)"]
        for key in ("val/knn_top1", "val/online_linear_top1", "val/top1", "val/top5", "val/best_top1"):
            if key in metrics:
                lines.append(f"wcl: final {key} = {float(metrics[key]):.4f}")
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
