"""Command line: ``python -m wcl fit|validate|predict --config …`` (LightningCLI).

Models and data modules are named by ``class_path`` in YAML (``wcl.WCL``, ``wcl.WCLDataModule``), so every
``__init__`` argument is a config key, and a misspelt key fails before anything runs. Mistakes end in one line,
``wcl: error: …``, and exit code 2.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wcl.distributed import destroy_process_group
from wcl.errors import ConfigError, WCLError

PROG = "python -m wcl"


def _parse_error(parser: LightningArgumentParser, message: str, ex: Exception | None = None,
                 subcommand: str = "fit") -> NoReturn:
    """A parse error as one line (what is wrong, and where the keys are listed) instead of the full usage."""
    if not parser.exit_on_error:  # jsonargparse tries alternatives (union types) by catching these
        LightningArgumentParser.error(parser, message, ex)
    sys.stderr.write(f"wcl: error: {_one_line(str(message))} ({_help_pointer(str(message), subcommand)})\n")
    sys.exit(2)


def _help_pointer(message: str, subcommand: str) -> str:
    """The help page that lists the keys of the part a jsonargparse message is about: ``--model.help CLASS`` for
    a model key, ``--data.help CLASS`` for a data key (the class the config names), ``--help`` otherwise."""
    match = re.search(r'Parser key "([^"]+)"', message)
    group = match.group(1).split(".")[0] if match else ""
    named = re.search(r"class_path '([\w.]+)'", message)
    if group in ("model", "data"):
        cls = named.group(1) if named else ("wcl.WCL" if group == "model" else "wcl.WCLDataModule")
        return f"`{PROG} {subcommand} --{group}.help {cls}` lists its keys"
    return f"`{PROG} {subcommand} --help` lists the trainer's keys and where the others are listed"


def _subcommand_of(args: list[str]) -> str:
    return next((a for a in args if a in WCLCLI.subcommands()), "fit")


def help_text(subcommand: str) -> str:
    """The top of ``python -m wcl SUBCOMMAND --help``: which page lists the model's and the data's keys."""
    run = {"fit": "pretraining: wcl.WCL with wcl.WCLDataModule; linear probe: wcl.LinearProbe, fine-tuning: "
                  "wcl.FineTune, both with wcl.LabelledDataModule",
           "validate": "offline kNN: wcl.KNNEval with wcl.WCLDataModule; a probe's or fine-tune's validation: "
                       "wcl.LinearProbe / wcl.FineTune with wcl.LabelledDataModule",
           "predict": "the classes of the config's model and data"}[subcommand]
    return (f"This page lists the trainer's keys. The model's and the data's keys are listed by `{PROG} {subcommand} "
            f"--model.help CLASS` and `--data.help CLASS` ({run}; e.g. `--model.help wcl.WCL`). Those pages show "
            f"each class's own defaults; a --config sets its own values, and `{PROG} {subcommand} --config FILE "
            "--print_config` shows every value a run will use.")


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")  # a list as on the command line, or a dict / Namespace of a whole config
        listed = given is None or isinstance(given, list | tuple)
        self._args = [str(a) for a in (sys.argv[1:] if given is None else given)] if listed else []
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``predict``: Lightning's ``test`` is not offered, as no wcl model has a test
        step (``validate`` evaluates the held-out split: ``val/``, or ``test/`` where there is no ``val/``)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "test"}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**{**kwargs, "prog": PROG})
        parser.error = types.MethodType(  # type: ignore[method-assign]
            functools.partial(_parse_error, subcommand=_subcommand_of(self._args)), parser)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if not isinstance(args, list | tuple | None) or with_run_folder(self._args) == self._args:
            super().parse_arguments(parser, args)
        else:  # an overlay run: its own folder (the line shows in --print_config and the saved config.yaml)
            self.config = parser.parse_args(with_run_folder(self._args))

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
        from wcl.callbacks import ModelTable, PlainProgress, Preflight, RichProgress, TrainingMonitor

        cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        callbacks = list(cfg.get("callbacks") or [])
        if cfg.get("enable_checkpointing") is False:  # the flag wins over the configs' checkpoint callback
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgress() if sys.stdout.isatty() else PlainProgress())
        if cfg.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(ModelTable())
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
        self._summary_instead_of_table()

    def _summary_instead_of_table(self) -> None:
        """``after_validate`` prints the metrics as ``wcl:`` lines; Lightning's unrounded table only with
        ``--verbose true``."""
        if not any(a == "--verbose" or a.startswith("--verbose=") for a in self._args):
            self.config_init[self.subcommand]["verbose"] = False

    def after_validate(self) -> None:
        """The validation's metrics as ``wcl:`` lines, rounded as the fit summary rounds them."""
        if not self.trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        lines = [f"wcl: {key} = {float(value):.4f}" for key, value in sorted(metrics.items())]
        print("\n".join(lines) or "wcl: the validation logged no metrics", flush=True)

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
                         f"({_counted(self.model)}, data loading included, validation excluded)")
        for key in ("val/knn_top1", "val/online_linear_top1", "val/top1", "val/top5", "val/best_top1"):
            if key in metrics:
                lines.append(f"wcl: final {key} = {float(metrics[key]):.4f}")
        knn = next((cb for cb in trainer.callbacks if isinstance(cb, OnlineKnn)), None)
        if knn is not None and knn.best_top1 is not None:
            lines.append(f"wcl: best val/knn_top1 = {knn.best_top1:.4f}")
        ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if ckpt is not None:
            path = ckpt.last_model_path or ckpt.best_model_path
            lines.append(f"wcl: checkpoint: {path}" if path else "wcl: no checkpoint was written")
        if isinstance(trainer.logger, CSVLogger):
            lines.append(f"wcl: metrics: {Path(trainer.logger.log_dir) / 'metrics.csv'}")
        print("\n".join(lines), flush=True)


def _counted(model: LightningModule) -> str:
    """What the throughput counts: a pretraining's every view and crop; a probe's or fine-tune's labelled images."""
    from wcl.module import WCL

    return "every view and crop counted" if isinstance(model, WCL) else "each labelled training image counted once"


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


def _config_files(args: list[str]) -> list[str]:
    """The ``--config`` files of a command line, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _root_dir_of(path: str) -> str | None:
    """``trainer.default_root_dir`` of a config file (set in itself or in a trainer file it names), if it sets one."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
        trainer = cfg.get("trainer") if isinstance(cfg, dict) else None
        if isinstance(trainer, str):
            trainer = yaml.safe_load((Path(path).parent / trainer).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    return str(root) if root else None


def with_run_folder(args: list[str]) -> list[str]:
    """Overlays get their own run folder: ``--config configs/quickstart.yaml --config configs/multicrop.yaml``
    writes to ``runs/quickstart+multicrop``, not over the quickstart's checkpoints. The folder is the one the last
    config that sets ``trainer.default_root_dir`` names, plus ``+<name>`` for each config composed after it; a
    ``--trainer.default_root_dir`` on the command line is used as given. Returns ``args`` with the folder added."""
    if any(a.startswith(("--trainer.default_root_dir", "--trainer=")) or a == "--trainer" for a in args):
        return args
    files = _config_files(args)
    setting = [(i, root) for i, f in enumerate(files) if (root := _root_dir_of(f))]
    if not setting or setting[-1][0] == len(files) - 1:
        return args
    i, root = setting[-1]
    return [*args, "--trainer.default_root_dir", root.rstrip("/") + "".join(f"+{Path(f).stem}" for f in files[i + 1:])]


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
    """Drop third-party noise from every run: two advertisements, a deprecation warning of Lightning internals, and
    the eval-mode warning a linear probe's frozen backbone would raise."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # A linear probe's frozen backbone is in eval mode on purpose (its BatchNorm statistics stay pretraining's).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not any(ad in record.getMessage() for ad in ("litlogger", "litmodels")))


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m wcl`` and the ``wcl`` console script."""
    _quiet()
    try:
        WCLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
               save_config_kwargs={"overwrite": True}, seed_everything_default=0,
               parser_kwargs={name: {"description": help_text(name)} for name in WCLCLI.subcommands()})
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
