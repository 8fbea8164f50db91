"""Command line: ``python -m wcl fit|validate|predict --config …`` (LightningCLI).

Models and data modules are named by ``class_path`` in YAML (``wcl.WCL``, ``wcl.WCLDataModule``), so every
``__init__`` argument is a config key, and a misspelt key fails before anything runs. Mistakes end in one line,
``wcl: error: …``, and exit code 2.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import re
import sys
import time
import types
import warnings
from pathlib import Path
from typing import IO, Any, NoReturn

import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wcl.distributed import destroy_process_group
from wcl.errors import ConfigError, WCLError
from wcl.tracking import SaveConfig

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
    if "argument subcommand" in message:
        return f"`{PROG} --help` lists the subcommands"
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
            "each class's own defaults and, with --config files on the same line, end with the values the files set; "
            f"`{PROG} {subcommand} --config FILE --print_config` shows every value a run will use.")


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
        if not isinstance(args, (dict, Namespace)):
            check_config_files(list(sys.argv[1:] if args is None else args))
        if not isinstance(args, list | tuple | None) or with_run_folder(self._args) == self._args:
            super().parse_arguments(parser, args)
        else:  # an overlay run: its own folder (the line shows in --print_config and the saved config.yaml)
            self.config = parser.parse_args(with_run_folder(self._args))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument("--resume_with_changes", type=bool, default=False,
                            help="With --ckpt_path: resume although model arguments differ from the checkpoint's.")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit without --ckpt_path into a folder that holds checkpoints: start over and "
                                 "overwrite them (without it, such a fit stops and says how to resume).")
        parser.add_argument("--untrained", type=bool, default=False,
                            help="validate of a pretraining config without --ckpt_path: evaluate the randomly "
                                 "initialised network on purpose (the baseline a trained run is compared with).")

    def _parse_ckpt_path(self) -> None:
        # Lightning's version replaces the config's model by the checkpoint's hyper-parameters, silently; wcl keeps
        # the config and compares the two in before_fit / before_validate.
        return

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # Imported when a run starts, not for --help.
        from wcl.callbacks import ModelTable, PlainProgress, Preflight, RichProgress, TrainingMonitor
        from wcl.callbacks.guards import RunChecks, StopOnSigterm

        cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        callbacks = list(cfg.get("callbacks") or [])
        if cfg.get("enable_checkpointing") is False:  # the flag wins over the configs' checkpoint callback
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgress() if sys.stdout.isatty() else PlainProgress())
        if cfg.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(ModelTable())
        # In this order: the pre-flight reads are not training time.
        for default in (Preflight, TrainingMonitor, RunChecks, StopOnSigterm):
            if not any(isinstance(c, default) for c in callbacks):
                callbacks.append(default())
        cfg["callbacks"] = callbacks
        check_accelerator(cfg.get("accelerator"))
        root = cfg.get("default_root_dir") or os.getcwd()
        check_writable(Path(root), "the output folder (trainer.default_root_dir)", "choose a writable folder path")
        if cfg.get("logger") in (None, True):  # CSV logs next to the checkpoints, wherever default_root_dir points
            cfg["logger"] = CSVLogger(save_dir=root)
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        from wcl.callbacks import Checkpoint

        self._fit_start = time.perf_counter()
        for cb in self.trainer.callbacks:
            if isinstance(cb, Checkpoint):  # before Lightning resolves --ckpt_path last
                cb.default_dirpath(self.trainer)
        self._guard_run_folder()
        self._check_resume()
        self._check_schedule()

    def before_validate(self) -> None:
        from wcl.module import WCL

        self._check_resume()
        cfg = self.config_init[self.subcommand]
        if isinstance(self.model, WCL) and cfg.get("ckpt_path") is None and not cfg.get("untrained"):
            raise ConfigError(
                "validate of a pretraining config (wcl.WCL) without --ckpt_path would evaluate a randomly "
                "initialised network; pass --ckpt_path <run>/checkpoints/last.ckpt, or evaluate a pretrained "
                "backbone with --config configs/knn/quickstart.yaml --model.checkpoint <run>/checkpoints/last.ckpt "
                "(--untrained true evaluates the random network on purpose, as a baseline).")
        self._summary_instead_of_table()

    def _check_schedule(self) -> None:
        """A run needs a length (the learning-rate schedule spans it); settings that quietly waste it get a line."""
        from wcl.module import WCL

        trainer, model = self.trainer, self.model
        endless = trainer.max_epochs is not None and trainer.max_epochs < 0
        if endless and (trainer.max_steps is None or trainer.max_steps < 0):
            raise ConfigError(f"trainer.max_epochs {trainer.max_epochs} trains without end, but the learning-rate "
                              "schedule spans the run's length; set --trainer.max_epochs N, or --trainer.max_steps N.")
        if not trainer.is_global_zero:
            return
        if isinstance(model, WCL):
            hp = model.hparams
            epochs = trainer.max_epochs if trainer.max_steps is None or trainer.max_steps < 0 else None
            if epochs is not None and epochs > 0 and hp.warmup_epochs >= epochs:
                run = f"{epochs} epoch" + "s" * (epochs != 1)
                _note(f"model.warmup_epochs {hp.warmup_epochs:g} is not shorter than the run ({run}): "
                      "the learning rate is still warming up when the run ends and never reaches its peak; lower "
                      "--model.warmup_epochs.")
            if hp.knn_every_n_epochs == 0:
                _note("model.knn_every_n_epochs is 0: the online kNN is off, also after the last epoch (no "
                      "val/knn_top1); set it to N >= 1 to evaluate every N epochs and at the end.")
        splits = getattr(getattr(self.datamodule, "source", None), "splits", None)
        if splits is not None and splits.val is None:
            _note(f"{self.datamodule.source.root} has no val/ (or test/) folder: online evaluation is off (no kNN or "
                  "linear accuracy during the run); add a val/<class>/ split to measure it.")

    def before_predict(self) -> None:
        # predict's outputs are written by a callback (wcl.callbacks.EmbeddingWriter); returning them too would
        # keep a second copy of every embedding in memory.
        cfg = self.config_init[self.subcommand]
        if cfg.get("ckpt_path") is not None:
            raise ConfigError(f"predict embeds the checkpoint given as --model.checkpoint {cfg['ckpt_path']}, not "
                              "--ckpt_path (which restores a whole run); pass it as --model.checkpoint.")
        if cfg.get("return_predictions") is None:
            cfg["return_predictions"] = False

    def _summary_instead_of_table(self) -> None:
        """``after_validate`` prints the metrics as ``wcl:`` lines; Lightning's unrounded table only with
        ``--verbose true``."""
        if not any(a == "--verbose" or a.startswith("--verbose=") for a in self._args):
            self.config_init[self.subcommand]["verbose"] = False

    def after_validate(self) -> None:
        """The validation's metrics as ``wcl:`` lines, rounded as the fit summary rounds them."""
        if not self.trainer.is_global_zero:
            return
        if protocol := label_protocol(self.trainer.datamodule):
            print(f"wcl: labels: {protocol}", flush=True)
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
                if self.subcommand != "fit":
                    raise ConfigError(f"--ckpt_path last: there is no checkpoint at {last}; give the .ckpt to "
                                      f"{self.subcommand} with --ckpt_path PATH.")
                print(f"wcl: no checkpoint to resume at {last}; starting from the beginning", flush=True)
                cfg["ckpt_path"] = None
                return
            path = last
        if path in (None, "best", "hpc", "registry"):
            return
        if not Path(path).is_file():
            raise ConfigError(f"--ckpt_path {path} does not exist; give a .ckpt written by `{PROG} fit`, or 'last'.")
        from wcl.eval.checkpoint import read_checkpoint

        saved = read_checkpoint(path, "--ckpt_path").get("hyper_parameters", {})
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

    def _guard_run_folder(self) -> None:
        """Before a fit writes anything: this process holds the run folder's lock (global rank 0), a fresh fit does
        not overwrite an earlier run's checkpoints, and every output folder is writable."""
        cfg, trainer = self.config_init[self.subcommand], self.trainer
        folders = [Path(cb.dirpath) for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
        if trainer.is_global_zero:
            self._lock = lock_run_folder(Path(trainer.default_root_dir))
        if cfg.get("ckpt_path") is None and not cfg.get("overwrite"):
            for folder in folders:
                check_no_checkpoints(folder)
        if trainer.is_global_zero:
            for folder in folders:
                check_writable(folder, "the checkpoint folder", "fix the callback's dirpath or "
                               "--trainer.default_root_dir")
            for logger in trainer.loggers:
                folder = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
                if folder and "://" not in str(folder):
                    check_writable(Path(folder), f"the {type(logger).__name__} folder",
                                   "remove what is in the way or choose another --trainer.default_root_dir")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:  # main() may run again in this process (tests, notebooks): the folder is free again
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.close()
                self._lock = None

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
        if knn is not None and len(knn.history) > 1:  # the curve: did it learn?
            lines.append("wcl: val/knn_top1 by epoch: " + ", ".join(f"{e}: {v:.4f}" for e, v in knn.history))
        if knn is not None and knn.best_top1 is not None:
            lines.append(f"wcl: best val/knn_top1 = {knn.best_top1:.4f}")
        if protocol := label_protocol(trainer.datamodule):  # which labels the numbers above used
            lines.append(f"wcl: labels: {protocol}")
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


def label_protocol(datamodule: Any) -> str | None:
    """The data module's phrase for the labels a run used, or ``None`` where it has none to say."""
    protocol = getattr(datamodule, "protocol", None)
    return protocol() if protocol is not None else None


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
    """The ``--config`` (``-c``) files of a command line, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
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
    if any(a in ("-h", "--help") or _is_group_help(a) for a in args):
        return args  # a help page: no run, and a key after `--model.help CLASS` would be taken as its argument
    files = _config_files(args)
    setting = [(i, root) for i, f in enumerate(files) if (root := _root_dir_of(f))]
    if not setting or setting[-1][0] == len(files) - 1:
        return args
    i, root = setting[-1]
    return [*args, "--trainer.default_root_dir", root.rstrip("/") + "".join(f"+{Path(f).stem}" for f in files[i + 1:])]


def _note(text: str) -> None:
    """A setting that runs but probably not as meant: one line, not an error."""
    print(f"wcl: warning: {text}", file=sys.stderr, flush=True)


def check_accelerator(name: Any) -> None:
    """``--trainer.accelerator gpu`` (cuda, mps) where there is none: the key and the fix, not a backend error."""
    if not isinstance(name, str) or name not in ("gpu", "cuda", "mps"):
        return
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if (name == "cuda" and torch.cuda.is_available()) or (name == "mps" and mps) or \
            (name == "gpu" and (torch.cuda.is_available() or mps)):
        return
    raise ConfigError(f"trainer.accelerator {name}: no such device is visible here (torch.cuda.is_available() is "
                      f"{torch.cuda.is_available()}); use --trainer.accelerator auto (the GPU when there is one) or "
                      "cpu, or check CUDA_VISIBLE_DEVICES and that torch was built with CUDA.")


def check_config_files(args: list[str]) -> None:
    """Every ``--config`` file parses as YAML (else: its file, line and column), and an overlay (a ``model:`` or
    ``data:`` section without ``class_path``) does not come before the config that names the class."""
    loaded = []
    for path in _config_files(args):
        if not Path(path).is_file():
            continue  # jsonargparse says it
        try:
            loaded.append((path, yaml.safe_load(Path(path).read_text()) or {}))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            tab = " (YAML indents with spaces, not tabs)" if "\\t" in problem or "\t" in problem else ""
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}{tab}.") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read the config {path}: {err}.") from None
    for section in ("model", "data"):
        named = [i for i, (_, c) in enumerate(loaded) if isinstance(c, dict) and isinstance(c.get(section), dict)
                 and "class_path" in c[section]]
        for i, (path, c) in enumerate(loaded):
            part = c.get(section) if isinstance(c, dict) else None
            if isinstance(part, dict) and "class_path" not in part and named and named[0] > i:
                base = loaded[named[0]][0]
                raise ConfigError(f"{path} is an overlay (its {section}: has no class_path) and must follow the "
                                  f"config it changes: give --config {base} before --config {path}.")


LOCK_NAME = ".wcl.lock"


def lock_run_folder(root: Path) -> IO[str] | None:
    """Holds an exclusive lock on ``root`` (``root/.wcl.lock``) while the returned file is open
    (:func:`wcl.files.lock_folder`); another fit that holds it is named in the error."""
    from wcl.files import lock_folder

    try:
        return lock_folder(root, LOCK_NAME, "another fit is running in {root} ({holder}); wait for it to end, or pass "
                                            "another --trainer.default_root_dir.")
    except OSError as err:
        raise ConfigError(f"cannot write to the run folder {root} (trainer.default_root_dir): "
                          f"{err.strerror or err}; choose a writable folder.") from err


def check_no_checkpoints(folder: Path) -> None:
    """A fit that starts from scratch must not overwrite an earlier run's checkpoints without being told to."""
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if found:
        names = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(f"{folder} already holds checkpoints of an earlier run ({names}); pass --ckpt_path last "
                          "to resume it, --overwrite true to start over in this folder, or another "
                          "--trainer.default_root_dir.")


def check_writable(folder: Path, what: str, fix: str) -> None:
    """``folder`` exists (created if needed) and takes a file, before the first step rather than at the first
    save."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{what} {folder} cannot be created: {blocker} is a file, not a folder; {fix}.")
    probe = folder / f".wcl-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"cannot write to {what} {folder}: {err.strerror or err}; {fix}.") from err


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


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")  # gloo, when a peer process is gone


def _lost_rank(err: BaseException) -> str | None:
    """The one-line message for a collective that failed because another rank's process died (killed, out of
    memory, crashed): gloo closes the connection and every survivor stops at its next collective."""
    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, RuntimeError) and any(s in str(seen) for s in _PEER_GONE)):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:  # the process group is gone already: the launchers' variables
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 0))
    peer = re.search(r"peer \[?([^\]\s]+?)\]?:(\d+)", str(seen))
    lost = f"rank {1 - rank}" if world == 2 else "another rank" + (f" (at {peer[1]}:{peer[2]})" if peer else "")
    run = f"this {world}-process run" if world else "this run"
    return (f"{lost} of {run} is gone (its process died: killed, out of memory or crashed; see its log), so rank "
            f"{rank} stops too. Resume from the last checkpoint with --ckpt_path last.")


def _quiet() -> None:
    """Drop third-party noise from every run: two advertisements, a deprecation warning of Lightning internals, and
    the eval-mode warning a linear probe's frozen backbone would raise."""
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # A linear probe's frozen backbone is in eval mode on purpose (its BatchNorm statistics stay pretraining's).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not any(ad in record.getMessage() for ad in ("litlogger", "litmodels")))


def _config_values(files: list[str], group: str) -> dict[str, Any]:
    """The ``group`` (``model`` / ``data``) ``init_args`` the ``--config`` files set, merged in order as the parser
    merges them (a file that a config names for the group is read relative to that config), flattened to
    ``augment.crop_size``-style keys."""
    merged: dict[str, Any] = {}
    for path in files:
        try:
            cfg = yaml.safe_load(Path(path).read_text()) or {}
            section = cfg.get(group) if isinstance(cfg, dict) else None
            if isinstance(section, str):
                section = yaml.safe_load((Path(path).parent / section).read_text())
        except (OSError, yaml.YAMLError):
            continue  # the parser reports it
        if isinstance(section, dict) and isinstance(section.get("init_args"), dict):
            merged.update(_flat(section["init_args"]))
    return merged


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and "class_path" not in value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_group_help(arg: str, group: str | None = None) -> bool:
    """``--model.help`` / ``--model.help=CLASS`` (of ``group``, or of any group)."""
    name = arg.split("=", 1)[0]
    return name.endswith(".help") and (group is None or name == f"--{group}.help")


def _print_config_values(args: list[str]) -> None:
    """After a ``--model.help`` / ``--data.help`` page, which of its keys the ``--config`` files on the same command
    line set: the page itself shows the class's own defaults (``resnet50``, ``width 64`` for ``wcl.WCL``)."""
    files = _config_files(args)
    for group in ("model", "data"):
        if not any(_is_group_help(a, group) for a in args) or not (values := _config_values(files, group)):
            continue
        print("\nSet by your --config files (these replace the defaults above; `--print_config` shows every value "
              "a run will use):")
        for key, value in values.items():
            print(f"  --{group}.{key} {value if isinstance(value, str) else json.dumps(value)}")


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m wcl`` and the ``wcl`` console script."""
    _quiet()
    try:
        WCLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
               save_config_callback=SaveConfig, save_config_kwargs={"overwrite": True}, seed_everything_default=0,
               parser_kwargs={"allow_abbrev": False,  # --trainer.max_epoch is a typo, not --trainer.max_epochs
                              **{name: {"description": help_text(name), "allow_abbrev": False}
                                 for name in WCLCLI.subcommands()}})
    except SIGTERMException as stop:  # SIGTERM or Ctrl-C: last.ckpt was saved; a non-zero exit stops `fit && probe`
        sys.exit(128 + int(getattr(stop, "signum", 15)))
    except SystemExit as done:  # after SIGTERMException, which is a SystemExit too
        if done.code in (0, None):  # a help page
            _print_config_values(sys.argv[1:] if args is None else args)
        raise
    except Exception as err:
        if (lost := _lost_rank(err)) is not None:
            print(f"wcl: error: {lost}", file=sys.stderr, flush=True)
            sys.exit(1)
        message = _user_error(err)
        if message is None:
            raise
        print(f"wcl: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        destroy_process_group()


if __name__ == "__main__":
    main()
