"""Help pages: the command's description and version, each subcommand's page (which page lists the model's and
the data's keys), and after a ``--model.help`` / ``--data.help`` page the values the ``--config`` files set."""

from __future__ import annotations

import json
from typing import Any

from jsonargparse import Namespace

from wcl.cli.messages import PROG
from wcl.cli.run_folder import class_path_of, config_files, is_group_help

DESCRIPTION = ("wcl: Weakly Supervised Contrastive Learning (Zheng et al., ICCV 2021). Pretrain with `fit`, evaluate "
               "with `validate` (kNN, linear probe, fine-tuning), embed images with `predict`; every run is a "
               "--config file (configs/) plus keys on the command line.")

# wcl's own flags beside LightningCLI's (each a bool, false by default)
FLAGS = {
    "resume_with_changes": "With --ckpt_path: resume although optimizer-level model arguments (learning rate, "
                           "schedule, weight decay) differ from the checkpoint's; never another network.",
    "overwrite": "fit without --ckpt_path into a folder that holds checkpoints: start over and overwrite them "
                 "(without it, such a fit stops and says how to resume).",
    "untrained": "validate of a pretraining config without --ckpt_path: evaluate the randomly initialised network "
                 "on purpose (the baseline a trained run is compared with).",
}


def version() -> str:
    """``wcl X (torch Y, lightning Z)``."""
    import lightning
    import torch

    import wcl

    return f"wcl {wcl.__version__} (torch {torch.__version__}, lightning {lightning.__version__})"


def help_text(subcommand: str) -> str:
    """The top of ``wcl SUBCOMMAND --help``: which page lists the model's and the data's keys."""
    run = {"fit": "pretraining: wcl.WCL with wcl.WCLDataModule; linear probe: wcl.LinearProbe, fine-tuning: "
                  "wcl.FineTune, both with wcl.LabelledDataModule",
           "validate": "offline kNN: wcl.KNNEval with wcl.WCLDataModule; a probe's or fine-tune's validation: "
                       "wcl.LinearProbe / wcl.FineTune with wcl.LabelledDataModule",
           "predict": "the classes of the config's model and data"}[subcommand]
    return (f"This page lists the trainer's keys. The model's and the data's keys are listed by `{PROG} {subcommand} "
            f"--model.help CLASS` and `--data.help CLASS` ({run}; e.g. `--model.help wcl.WCL`). Those pages show "
            "each class's own defaults and, with --config files on the same line, end with the values the files set; "
            f"`{PROG} {subcommand} --config FILE --print_config` shows every value a run will use.")


def _flat(values: Namespace | dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (values.items() if isinstance(values, dict) else vars(values).items()):
        if isinstance(value, Namespace | dict) and "class_path" not in value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def with_help_class(args: list[str]) -> list[str]:
    """A bare ``--model.help`` / ``--data.help`` (no class after it) names the class the ``--config`` files set, else
    ``wcl.WCL`` / ``wcl.WCLDataModule``, so the page lists that class's keys (jsonargparse's own page for the bare
    flag is LightningModule's, with none)."""
    out = list(args)
    for i, arg in enumerate(out):
        for group, default in (("model", "wcl.WCL"), ("data", "wcl.WCLDataModule")):
            if arg == f"--{group}.help" and (i + 1 == len(out) or out[i + 1].startswith("-")):
                out[i] = f"--{group}.help={class_path_of(config_files(args), group) or default}"
    return out


def print_config_values(parser: Any, subcommand: str, args: list[str]) -> None:
    """After a ``--model.help`` / ``--data.help`` page, which of its keys the ``--config`` files on the same command
    line set (the page itself shows the class's own defaults: ``resnet50``, ``width 64`` for ``wcl.WCL``), as the
    parser merges the files for ``subcommand``, without its defaults."""
    files = config_files(args)
    groups = [g for g in ("model", "data") if any(is_group_help(a, g) for a in args)]
    if not files or not groups:
        return
    exits, parser.exit_on_error = parser.exit_on_error, False
    try:
        given = parser.parse_args([subcommand, *(a for f in files for a in ("--config", f))], defaults=False)
        given = given[subcommand]
    except Exception:  # the page is printed; the run that uses these files reports what is wrong with them
        return
    finally:
        parser.exit_on_error = exits
    for group in groups:
        section = given.get(group)
        values = _flat(section.get("init_args") or {}) if isinstance(section, Namespace) else {}
        if not values:
            continue
        print("\nSet by your --config files (these replace the defaults above; `--print_config` shows every value "
              "a run will use):")
        for key, value in values.items():
            if isinstance(value, tuple):
                value = list(value)
            print(f"  --{group}.{key} {value if isinstance(value, str) else json.dumps(value)}")
