"""Command line: ``python -m wcl fit|validate|test --config …`` (LightningCLI).

Models and data modules are named by ``class_path`` in YAML (``wcl.WCL``, ``wcl.WCLDataModule``), so every
``__init__`` argument is a config key, and a misspelt key fails before anything runs. Mistakes end in one line,
``wcl: error: …``, and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wcl.distributed import destroy_process_group
from wcl.errors import ConfigError, WCLError

PROG = "python -m wcl"


def _parse_error(parser: LightningArgumentParser, message: str, ex: Exception | None = None) -> NoReturn:
    """A parse error as one line (what is wrong, and where the keys are listed) instead of the full usage."""
    if not parser.exit_on_error:  # jsonargparse tries alternatives (union types) by catching these
        LightningArgumentParser.error(parser, message, ex)
    sys.stderr.write(f"wcl: error: {_one_line(str(message))} (`{PROG} fit --help` lists every key)\n")
    sys.exit(2)


_BOILERPLATE = ("Does not validate", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>", "Given value",
                "- Problem with given class_path", "- Not a valid subclass", "Subclass types expect", "- a ")


def _one_line(message: str) -> str:
    """The innermost complaint of a nested jsonargparse message (``model: Option 'widht' is not accepted``,
    ``batch_size: Expected a <class 'int'>. Got value: many``) without the union-type preamble around it."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    keys = [i for i, line in enumerate(lines) if line.startswith("Parser key")]
    if not keys:
        return lines[0] if lines else "invalid arguments"
    key = lines[keys[-1]].removeprefix("Parser key").strip(' ":')
    rest = [line for line in lines[keys[-1] + 1:] if not line.startswith(_BOILERPLATE)]
    return f"{key}: {rest[0]}" if rest else lines[0]


class WCLCLI(LightningCLI):
    """LightningCLI with the data module's class count linked to the model, default callbacks (progress, throughput,
    pre-flight), CSV logs in ``default_root_dir``, checks of ``--ckpt_path``, and an end-of-fit summary."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**{**kwargs, "prog": PROG})
        parser.error = types.MethodType(_parse_error, parser)  # type: ignore[method-assign]
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument("--resume_with_changes", type=bool, default=False,
                            help="With --ckpt_path: resume although model arguments differ from the checkpoint's.")

    def _parse_ckpt_path(self) -> None:
        # Lightning's version replaces the config's model by the checkpoint's hyper-parameters, silently; wcl keeps
        # the config and compares the two in before_fit / before_validate.
        return

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Imported when a run starts, not for --help.
        from wcl.callbacks import PlainProgress, Preflight, TrainingMonitor

        cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        callbacks = list(cfg.get("callbacks") or [])
        if cfg.get("enable_checkpointing") is False:  # the flag wins over the configs' checkpoint callback
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar() if sys.stdout.isatty() else PlainProgress())
        for default in (Preflight, TrainingMonitor):  # in this order: the pre-flight reads are not training time
            if not any(isinstance(c, default) for c in callbacks):
                callbacks.append(default())
        cfg["callbacks"] = callbacks
        root = cfg.get("default_root_dir") or os.getcwd()
        _check_output_dir(root)
        if cfg.get("logger") in (None, True):  # CSV logs next to the checkpoints, wherever default_root_dir points
            cfg["logger"] = CSVLogger(save_dir=root)
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        from wcl.callbacks import Checkpoint

        self._fit_start = time.perf_counter()
        for cb in self.trainer.callbacks:
            if isinstance(cb, Checkpoint):  # before Lightning resolves --ckpt_path last
                cb.default_dirpath(self.trainer)
        self._check_resume()

    def before_validate(self) -> None:
        self._check_resume()

    def _check_resume(self) -> None:
        """``--ckpt_path`` resumes this config: the checkpoint must be of the same model class with the same
        arguments (``--resume_with_changes true`` accepts changed ones)."""
        from wcl.callbacks import Checkpoint

        cfg = self.config_init[self.subcommand]
        path = cfg.get("ckpt_path")
        if path == "last":
            cb = next((c for c in self.trainer.callbacks if isinstance(c, Checkpoint)), None)
            last = Path(cb.default_dirpath(self.trainer)) / "last.ckpt" if cb is not None else None
            if last is None or not last.is_file():
                print(f"wcl: no checkpoint to resume at {last}; starting from the beginning", flush=True)
                cfg["ckpt_path"] = None
                return
            path = last
        if path in (None, "best", "hpc", "registry"):
            return
        if not Path(path).is_file():
            raise ConfigError(f"--ckpt_path {path} does not exist; give a .ckpt written by `{PROG} fit`, or 'last'.")
        saved = torch.load(path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
        saved_class, mine = saved.get("_class_path"), type(self.model)
        if saved_class is not None and _resolve(saved_class) is not mine:
            raise ConfigError(
                f"--ckpt_path {path} holds a {saved_class} run, but this config runs {mine.__name__}; --ckpt_path only "
                f"resumes the same run. To evaluate or fine-tune a pretrained checkpoint, pass --model.checkpoint "
                f"{path} instead.")
        changed = [f"model.{k}: {saved[k]!r} in the checkpoint, {v!r} here" for k, v in self.model.hparams.items()
                   if k in saved and not k.startswith("_") and _differs(saved[k], v)]
        if changed and not cfg.get("resume_with_changes"):
            raise ConfigError(f"--ckpt_path {path} was trained with other model arguments ({'; '.join(changed)}). "
                              "Resume with the checkpoint's values, or pass --resume_with_changes true to continue "
                              "with these.")

    def after_fit(self) -> None:
        from wcl.callbacks import OnlineKnn, TrainingMonitor

        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        lines = [f"wcl: fit finished in {time.perf_counter() - self._fit_start:.1f} s "
                 f"({trainer.global_step} steps, {trainer.current_epoch} epochs)"]
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, TrainingMonitor)), None)
        if monitor is not None and monitor.seconds > 0:
            lines.append(f"wcl: training throughput {monitor.images_per_second:.0f} images/s "
                         "(every view counted, data loading included, validation excluded)")
        for key in ("val/knn_top1", "val/online_linear_top1", "val/top1", "val/top5", "val/best_top1"):
            if key in metrics:
                lines.append(f"wcl: final {key} = {float(metrics[key]):.4f}")
        knn = next((cb for cb in trainer.callbacks if isinstance(cb, OnlineKnn)), None)
        if knn is not None and len(knn.history) > 1:  # the curve: did it learn?
            lines.append("wcl: val/knn_top1 by epoch: " + ", ".join(f"{e}: {v:.4f}" for e, v in knn.history))
        if knn is not None and knn.best_top1 is not None:
            lines.append(f"wcl: best val/knn_top1 = {knn.best_top1:.4f}")
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if ckpt is not None:
            path = ckpt.last_model_path or ckpt.best_model_path
            lines.append(f"wcl: checkpoint: {path}" if path else "wcl: no checkpoint was written")
        if isinstance(trainer.logger, CSVLogger):
            lines.append(f"wcl: metrics: {Path(trainer.logger.log_dir) / 'metrics.csv'}")
        print("\n".join(lines), flush=True)


def _resolve(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _differs(a: Any, b: Any) -> bool:
    """Config values compared as plain data (tuples and lists alike)."""
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return norm(a) != norm(b)


def _check_output_dir(root: str) -> None:
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the output folder {root} (trainer.default_root_dir): {err}. "
                          "Choose a writable folder path.") from err


def _user_error(err: BaseException) -> str | None:
    """The one-line message behind ``err``, if it is a user error (jsonargparse and DataLoader workers wrap them)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (WCLError, MisconfigurationException)):
            text = str(seen).strip()
            if "Original Traceback" in text:  # raised in a data-loader worker: keep the worker's own message
                text = text.splitlines()[-1].split(": ", 1)[-1]
            return text
        seen = seen.__cause__ or seen.__context__
    return None


def _quiet() -> None:
    """Drop third-party noise from every run: an advertisement and a deprecation warning of Lightning internals."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m wcl`` and the ``wcl`` console script."""
    _quiet()
    try:
        WCLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
               save_config_kwargs={"overwrite": True}, seed_everything_default=0)
    except SIGTERMException:
        sys.exit(128 + 15)  # pre-empted: last.ckpt was saved; a non-zero exit stops `fit && probe` chains
    except Exception as err:
        message = _user_error(err)
        if message is None:
            raise
        print(f"wcl: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        destroy_process_group()


if __name__ == "__main__":
    main()
