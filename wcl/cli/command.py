"""``WCLCLI``, the LightningCLI of ``wcl fit|validate|predict``, composed of the parts beside it, and ``main``."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from wcl.cli import checks, help_pages, messages, run_folder
from wcl.cli.lightning_private import PrivateHooks
from wcl.cli.summary import FitSummary, print_validation
from wcl.distributed import destroy_process_group
from wcl.errors import ConfigError
from wcl.recipes import resolve_config_args
from wcl.tracking import SaveConfig


class WCLCLI(PrivateHooks, LightningCLI):
    """LightningCLI with the data module's class count linked to the model, checks of every key before anything
    runs (wcl.cli.checks), the run folder's policy (wcl.cli.run_folder), default callbacks (progress, throughput,
    pre-flight, the fit's summary) and CSV logs in ``default_root_dir``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")  # a list as on the command line, or a dict / Namespace of a whole config
        listed = given is None or isinstance(given, list | tuple)
        self._args = [str(a) for a in (sys.argv[1:] if given is None else given)] if listed else []
        self._named_subcommand = next((a for a in self._args if a in self.subcommands()), None)
        self._summary = FitSummary()
        super().__init__(*args, **{"parser_class": messages.Parser, **kwargs})

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit``, ``validate`` and ``predict``: no wcl model has a test step (``validate`` evaluates ``val/``)."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name != "test"}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.subcommand = self._named_subcommand or "fit"  # for its help pointer
        messages.Parser.given_args = self._args  # for the config file an unknown key came from
        return parser

    def setup_parser(self, add_subcommands: bool, *args: Any) -> None:
        super().setup_parser(add_subcommands, *args)
        self.parser.add_argument("--version", action="version", version=help_pages.version())

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if not isinstance(args, dict | Namespace):
            checks.check_config_files(self._args)
        named = help_pages.with_help_class(run_folder.with_run_folder(self._args))
        if isinstance(args, list | tuple | None) and named != self._args:
            # an overlay run's own folder (it shows in --print_config and the saved config.yaml); arguments that came
            # from the command line stay there, so LightningCLI does not warn of both args and sys.argv
            if args is None:
                sys.argv[1:] = named
            else:
                args = named
        try:
            super().parse_arguments(parser, args)
        except SystemExit as done:
            if done.code in (0, None) and self._named_subcommand:
                help_pages.print_config_values(parser, self._named_subcommand, self._args)
            raise
        sub = self.config.get("subcommand")  # none where the CLI is built without running (run=False)
        cfg = self.config[sub] if sub else self.config
        checks.check_trainer(cfg.trainer, cfg.get("seed_everything"), sub or "fit")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        for name, text in help_pages.FLAGS.items():
            parser.add_argument(f"--{name}", type=bool, default=False, help=text)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
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
        checks.check_callbacks(callbacks)
        cfg["callbacks"] = [*callbacks, self._summary]
        checks.check_accelerator(cfg.get("accelerator"))
        root = cfg.get("default_root_dir") or os.getcwd()
        run_folder.check_writable(Path(root), "the output folder (trainer.default_root_dir)",
                                  "choose a writable folder path")
        if cfg.get("logger") in (None, True):  # CSV logs next to the checkpoints, wherever default_root_dir points
            cfg["logger"] = CSVLogger(save_dir=root)
        return super().instantiate_trainer(**kwargs)

    def _resume(self) -> None:
        """``--ckpt_path``: ``last`` resolved in the run folder; the checkpoint checked against this config."""
        cfg = self.config_init[self.subcommand]
        if cfg.get("ckpt_path") == "last":
            cfg["ckpt_path"] = run_folder.resolve_last(self.trainer, self.subcommand, cfg.get("overwrite"))
        path = cfg.get("ckpt_path")
        if path in (None, "best", "hpc", "registry"):
            return
        if Path(path).is_dir():
            inside = next((p for p in (Path(path) / "last.ckpt", Path(path) / "checkpoints" / "last.ckpt")
                           if p.is_file()), Path(path) / "last.ckpt")
            raise ConfigError(f"--ckpt_path {path} is a folder; give a checkpoint file in it, e.g. --ckpt_path "
                              f"{inside} (or 'last': the run folder's checkpoints/last.ckpt).")
        if not Path(path).is_file():
            raise ConfigError(f"--ckpt_path {path} does not exist; give a .ckpt written by "
                              f"`{messages.PROG} fit`, or 'last'.")
        checks.check_resume(self.model, path, cfg.get("resume_with_changes"))

    def before_fit(self) -> None:
        self._summary.start = time.perf_counter()
        if self.trainer.is_global_zero:
            self._lock = run_folder.lock_run_folder(Path(self.trainer.default_root_dir))
        self._resume()
        cfg = self.config_init[self.subcommand]
        run_folder.guard(self.trainer, cfg.get("ckpt_path") is not None, cfg.get("overwrite"))
        checks.check_schedule(self.trainer, self.model, self.datamodule)

    def before_validate(self) -> None:
        self._resume()
        cfg = self.config_init[self.subcommand]
        checks.check_has_weights(self.model, cfg.get("ckpt_path"), cfg.get("untrained"))
        if not any(a == "--verbose" or a.startswith("--verbose=") for a in self._args):
            cfg["verbose"] = False  # after_validate prints rounded `wcl:` lines instead of Lightning's table

    def after_validate(self) -> None:
        print_validation(self.trainer)

    def before_predict(self) -> None:
        cfg = self.config_init[self.subcommand]
        if cfg.get("ckpt_path") is not None:
            raise ConfigError(f"predict embeds the checkpoint given as --model.checkpoint {cfg['ckpt_path']}, not "
                              "--ckpt_path (which restores a whole run); pass it as --model.checkpoint.")
        if cfg.get("return_predictions") is None:  # a callback writes them; returning them would keep a copy
            cfg["return_predictions"] = False


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m wcl`` and the ``wcl`` console script."""
    messages.quiet()
    try:
        if args is None:  # --config wcl:<name>: a recipe shipped with the package (wcl.recipes)
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
        else:
            args = resolve_config_args(args)
        WCLCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
               save_config_callback=SaveConfig, save_config_kwargs={"overwrite": True}, seed_everything_default=0,
               parser_kwargs={"allow_abbrev": False, "description": help_pages.DESCRIPTION,  # (no abbreviations:
                              # --trainer.max_epoch is a typo, not --trainer.max_epochs)
                              **{name: {"description": help_pages.help_text(name), "allow_abbrev": False}
                                 for name in WCLCLI.subcommands()}})
    except SIGTERMException as stop:  # SIGTERM or Ctrl-C: last.ckpt was saved; a non-zero exit stops `fit && probe`
        sys.exit(128 + int(getattr(stop, "signum", 15)))
    except BrokenPipeError:  # the reader of stdout stopped (`| head`): stop without a traceback, as a SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush of stdout fails otherwise
        sys.exit(128 + signal.SIGPIPE)
    except Exception as err:
        if (lost := messages.lost_rank(err)) is not None:
            print(f"wcl: error: {lost}", file=sys.stderr, flush=True)
            sys.exit(1)
        if (message := messages.user_error(err)) is None:
            raise
        print(f"wcl: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        destroy_process_group()
