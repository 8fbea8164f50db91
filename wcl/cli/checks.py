"""Checks of a command line before anything runs: the config files, the trainer's keys and the seed, the
accelerator, the callbacks, a resumed checkpoint against the config, and the run's length."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from wcl.cli.messages import note
from wcl.cli.run_folder import config_files, config_section, resolve_class
from wcl.errors import ConfigError


def check_config_files(args: list[str]) -> None:
    """Every ``--config`` file parses as YAML (else: its file, line and column) and sets keys, an overlay (a
    ``model:`` or ``data:`` section without ``class_path``) does not come before the config that names the class,
    and no later config names another class (jsonargparse would keep the first class's arguments of the same names
    under the second: a mixed run). Read before parsing: jsonargparse's own messages name neither the file nor the
    line."""
    loaded = []
    for path in config_files(args):
        if Path(path).is_dir():
            inside = sorted(p.name for p in Path(path).glob("*.yaml"))
            example = f"{Path(path) / inside[0]}" if inside else "configs/quickstart.yaml"
            raise ConfigError(f"--config {path} is a folder{f' (of {len(inside)} YAML files)' if inside else ''}; "
                              f"give one config file, e.g. --config {example}.")
        if not Path(path).is_file():
            if ":" in path:  # `key: value` text: a config jsonargparse reads from the command line itself
                continue
            raise ConfigError(f"the config {path} does not exist; give a YAML file (e.g. configs/quickstart.yaml) "
                              "or a recipe shipped with wcl (e.g. wcl:quickstart).")
        try:
            cfg = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            tab = " (YAML indents with spaces, not tabs)" if "\\t" in problem or "\t" in problem else ""
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}{tab}.") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read the config {path}: {err}.") from None
        if not isinstance(cfg, dict) or not cfg:
            what = "is empty (no keys)" if cfg is None or cfg == {} else f"holds a {type(cfg).__name__}, not keys"
            raise ConfigError(f"the config {path} {what}; give a file of `key: value` lines (as in "
                              "configs/quickstart.yaml), or leave it off the command line.")
        loaded.append((path, cfg))
    for section in ("model", "data"):
        parts = [(path, config_section(path, c, section)) for path, c in loaded]
        named = [i for i, (_, part) in enumerate(parts) if isinstance(part, dict) and "class_path" in part]
        for i, (path, part) in enumerate(parts):
            if isinstance(part, dict) and "class_path" not in part and named and named[0] > i:
                base = parts[named[0]][0]
                raise ConfigError(f"{path} is an overlay (its {section}: has no class_path) and must follow the "
                                  f"config it changes: give --config {base} before --config {path}.")
        if named:
            base, first = parts[named[0]][0], parts[named[0]][1]["class_path"]
            for i in named[1:]:
                path, other = parts[i][0], parts[i][1]["class_path"]
                if not _same_class(first, other):
                    raise ConfigError(f"--config {path} changes {section}.class_path from {first} (set by {base}) to "
                                      f"{other}, which would keep {first}'s {section} arguments of the same names; "
                                      f"give one recipe (--config {path} without {base}), or later configs that "
                                      "change only init_args (no class_path).")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count_or_fraction(v: Any) -> bool:
    return _is_int(v) and v >= 0 or isinstance(v, float) and 0 <= v <= 1


def _duration(v: Any) -> bool:
    """``DD:HH:MM:SS`` (or a dict / timedelta, as Lightning takes it) longer than zero: a zero limit trains nothing."""
    if isinstance(v, str):
        return bool(re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", v)) and any(int(p) for p in v.split(":"))
    if isinstance(v, dict):
        return any(n > 0 for n in v.values() if isinstance(n, int | float))
    seconds = getattr(v, "total_seconds", None)
    return seconds is None or seconds() > 0


def _cpu_devices(v: Any) -> bool:
    """What Lightning's CPU accelerator takes as ``devices``: a number of processes, never device indices."""
    if isinstance(v, str):
        return v.strip() == "auto" or v.strip().isdigit() and int(v) >= 1
    return _is_int(v) and v >= 1


def _devices(v: Any) -> bool:
    if isinstance(v, str):
        if v.strip() == "auto":
            return True
        parts = [p for p in v.split(",") if p.strip()]
        if len(parts) == 1 and "," not in v:
            return bool(re.fullmatch(r"\s*-?\d+\s*", v)) and _devices(int(v))
        return bool(parts) and all(p.strip().isdigit() for p in parts)
    if isinstance(v, list | tuple):
        return bool(v) and all(_is_int(d) and d >= 0 for d in v)
    return _is_int(v) and (v >= 1 or v == -1)


# trainer key: (accepts the value, what it must be). None (Lightning's default) is accepted where Lightning takes it.
TRAINER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_epochs": (lambda v: v is None or _is_int(v) and (v >= 1 or v == -1),
                   "an int >= 1 (or -1, endless, with --trainer.max_steps N)"),
    "max_steps": (lambda v: _is_int(v) and (v >= 1 or v == -1), "an int >= 1 (or -1: no step limit)"),
    "min_epochs": (lambda v: v is None or _is_int(v) and v >= 0, "an int >= 0"),
    "min_steps": (lambda v: v is None or _is_int(v) and v >= 0, "an int >= 0"),
    "max_time": (lambda v: v is None or _duration(v),
                 "a duration DD:HH:MM:SS longer than zero (e.g. 00:12:00:00 for 12 hours; null: no time limit)"),
    **{f"limit_{s}_batches": (lambda v: v is None or _count_or_fraction(v),
                              "a number of batches >= 0 or a fraction in [0, 1] of the loader")
       for s in ("train", "val", "test", "predict")},
    "overfit_batches": (lambda v: _count_or_fraction(v), "a number of batches >= 0 or a fraction in [0, 1]"),
    "val_check_interval": (lambda v: v is None or _is_int(v) and v >= 1 or isinstance(v, float) and 0 < v <= 1,
                           "a number of training batches >= 1 or a fraction in (0, 1] of an epoch"),
    "check_val_every_n_epoch": (lambda v: v is None or _is_int(v) and v >= 1,
                                "an int >= 1 (or null: validate by --trainer.val_check_interval only)"),
    "num_sanity_val_steps": (lambda v: v is None or _is_int(v) and v >= -1, "an int >= 0 (or -1: every batch)"),
    "log_every_n_steps": (lambda v: v is None or _is_int(v) and v >= 1,
                          "an int >= 1 (0 would log no training metric at all)"),
    "accumulate_grad_batches": (lambda v: _is_int(v) and v >= 1, "an int >= 1 (1: no accumulation)"),
    "gradient_clip_val": (lambda v: v is None or isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
                          "a number >= 0 (0 or null: no clipping)"),
    "gradient_clip_algorithm": (lambda v: v in (None, "norm", "value"), "norm or value"),
    "devices": (_devices, "an int >= 1, -1 (all), auto, or a list of device indices such as [0, 1] or \"0,1\""),
    "num_nodes": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "fast_dev_run": (lambda v: isinstance(v, bool) or _is_int(v) and v >= 0, "true, false or a number of batches"),
    "reload_dataloaders_every_n_epochs": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}


# The subcommand's own limit_*_batches key at 0: the run would do nothing (what it says, after the key and the 0).
NO_BATCH = {
    "fit": ("limit_train_batches", "trains nothing; give a number of batches >= 1 or a fraction in (0, 1] of the "
                                   "epoch (or run validate instead of fit)."),
    "validate": ("limit_val_batches", "evaluates nothing, so validate would log no metric; give a number of batches "
                                      ">= 1 or a fraction in (0, 1] of the val split (1.0: all of it)."),
    "predict": ("limit_predict_batches", "embeds nothing, so predict would write no embedding; give a number of "
                                         "batches >= 1 or a fraction in (0, 1] of each split (1.0: all of it)."),
}


def check_trainer(trainer: dict[str, Any], seed: Any, subcommand: str) -> None:
    """The trainer's keys and the seed, checked before anything is built (Lightning checks some of them later, as
    exceptions of its own, and some not at all)."""
    for key, (accepts, need) in TRAINER_RULES.items():
        if key in trainer and not accepts(trainer[key]):
            raise ConfigError(f"trainer.{key} must be {need}; got {trainer[key]!r}.")
    if subcommand in NO_BATCH and trainer.get(key := NO_BATCH[subcommand][0]) in (0, 0.0):
        raise ConfigError(f"trainer.{key} 0 {NO_BATCH[subcommand][1]}")
    if subcommand == "fit":
        _check_minimum(trainer, "epochs")
        _check_minimum(trainer, "steps")
    _check_cpu_devices(trainer.get("accelerator"), trainer.get("devices"))
    strategy = trainer.get("strategy")
    if isinstance(strategy, str):
        from lightning.pytorch.strategies import StrategyRegistry

        known = StrategyRegistry.available_strategies()
        if strategy.lower() != "auto" and strategy.lower() not in known:
            shown = ", ".join(n for n in known if n in ("ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp"))
            raise ConfigError(f"trainer.strategy {strategy} is not a strategy Lightning knows; use auto, {shown} "
                              "(or another of lightning.pytorch.strategies.StrategyRegistry).")
    if not isinstance(seed, bool) and seed is not None and not (_is_int(seed) and 0 <= seed < 2**32):
        raise ConfigError(f"seed_everything must be an int in [0, 4294967295] (or true: a random seed, recorded); "
                          f"got {seed!r}.")


def _check_minimum(trainer: dict[str, Any], unit: str) -> None:
    """``min_epochs`` (``min_steps``) above ``max_epochs`` (``max_steps``): the maximum ends the run first."""
    low, high = trainer.get(f"min_{unit}"), trainer.get(f"max_{unit}")
    if _is_int(low) and _is_int(high) and high >= 1 and low > high:
        raise ConfigError(f"trainer.min_{unit} {low} is more than trainer.max_{unit} {high}, which ends the run "
                          f"first; raise --trainer.max_{unit} to at least {low}, or lower --trainer.min_{unit}.")


def _check_cpu_devices(accelerator: Any, devices: Any) -> None:
    """Device indices (``[0]``, ``"0,1"``) on the CPU accelerator, named or chosen by ``auto`` where no GPU is
    visible: Lightning's TypeError, as the key and the fix."""
    if accelerator not in (None, "auto", "cpu") or devices is None or _cpu_devices(devices):
        return
    if accelerator != "cpu" and (torch.cuda.is_available() or _mps_available()):
        return
    which = "the CPU accelerator" if accelerator == "cpu" else "the CPU accelerator (auto: no GPU is visible here)"
    raise ConfigError(f"trainer.devices {devices!r} with {which} must be an int > 0, the number of processes (e.g. "
                      "--trainer.devices 1); device indices such as [0] name GPUs, for --trainer.accelerator gpu.")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def check_accelerator(name: Any) -> None:
    """``--trainer.accelerator gpu`` (cuda, mps) where there is none: the key and the fix, not a backend error."""
    if not isinstance(name, str) or name not in ("gpu", "cuda", "mps"):
        return
    mps = _mps_available()
    if (name == "cuda" and torch.cuda.is_available()) or (name == "mps" and mps) or \
            (name == "gpu" and (torch.cuda.is_available() or mps)):
        return
    raise ConfigError(f"trainer.accelerator {name}: no such device is visible here (torch.cuda.is_available() is "
                      f"{torch.cuda.is_available()}); use --trainer.accelerator auto (the GPU when there is one) or "
                      "cpu, or check CUDA_VISIBLE_DEVICES and that torch was built with CUDA.")


def check_callbacks(callbacks: list[Any]) -> None:
    """No callback class twice where its state in a checkpoint would be ambiguous (an overlay such as
    configs/multicrop.yaml given twice appends its callback twice)."""
    seen: dict[str, Any] = {}
    for cb in callbacks:
        key = getattr(cb, "state_key", None)
        if key in seen and type(seen[key]) is type(cb):
            name = f"{type(cb).__module__}.{type(cb).__qualname__}"
            raise ConfigError(f"trainer.callbacks holds {name} twice (a config that appends it given twice, or it is "
                              "also on the command line); give each --config once and keep one of them.")
        seen[key] = cb


def _same_class(a: Any, b: Any) -> bool:
    """Two ``class_path`` values name one class (``wcl.WCL`` and ``wcl.module.WCL`` alike)."""
    if a == b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    found = resolve_class(a), resolve_class(b)
    return found[0] is not None and found[0] is found[1]


def _differs(a: Any, b: Any) -> bool:
    """Config values compared as plain data (tuples and lists alike)."""
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return norm(a) != norm(b)


def check_resume(model: LightningModule, path: str | Path, with_changes: bool) -> None:
    """``--ckpt_path`` resumes this config: the checkpoint must be of the same model class with the same
    arguments; ``--resume_with_changes true`` accepts other arguments that keep the network's tensors and the
    optimizer's state (learning rate, schedule, weight decay, loss settings), never another network."""
    from wcl.eval.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path, "--ckpt_path")
    saved = ckpt.get("hyper_parameters", {})
    saved_class, mine = saved.get("_class_path"), type(model)
    if saved_class is not None and resolve_class(saved_class) is not mine:
        raise ConfigError(
            f"--ckpt_path {path} holds a {saved_class} run, but this config runs {mine.__name__}; --ckpt_path only "
            f"resumes the same run. To evaluate or fine-tune a pretrained checkpoint, pass --model.checkpoint "
            f"{path} instead.")
    changed = {k: v for k, v in model.hparams.items() if k in saved and not k.startswith("_") and _differs(saved[k], v)}
    listed = "; ".join(f"model.{k}: {saved[k]!r} in the checkpoint, {v!r} here" for k, v in changed.items())
    if changed and not with_changes:
        raise ConfigError(f"--ckpt_path {path} was trained with other model arguments ({listed}). Resume with the "
                          "checkpoint's values, or pass --resume_with_changes true to continue with these.")
    theirs, ours = ckpt.get("state_dict", {}), model.state_dict()
    shapes = sorted(k for k in set(theirs) | set(ours) if k not in theirs or k not in ours
                    or tuple(theirs[k].shape) != tuple(ours[k].shape))
    layout = [k for k in ("optimizer", "exclude_bias_norm") if k in changed]  # the optimizer's saved state
    if shapes or layout:
        what = f"the optimizer's state ({', '.join(layout)})" if layout else f"the network ({len(shapes)} tensors)"
        listed = listed or f"tensors such as {shapes[0]} differ from this config's"
        raise ConfigError(f"--ckpt_path {path}: {listed} — that changes {what}, which a resume cannot carry over; "
                          "--resume_with_changes only continues with other optimizer-level settings (learning "
                          "rate, schedule, weight decay). Start a new run in another --trainer.default_root_dir "
                          "(a probe or fine-tune takes these weights with --model.checkpoint).")


def check_has_weights(model: LightningModule, ckpt_path: str | None, untrained: bool) -> None:
    """``validate`` of a pretraining config evaluates trained weights (or the random network when asked to)."""
    from wcl.module import WCL

    if isinstance(model, WCL) and ckpt_path is None and not untrained:
        raise ConfigError(
            "validate of a pretraining config (wcl.WCL) without --ckpt_path would evaluate a randomly "
            "initialised network; pass --ckpt_path <run>/checkpoints/last.ckpt, or evaluate a pretrained "
            "backbone with --config configs/knn/quickstart.yaml --model.checkpoint <run>/checkpoints/last.ckpt "
            "(--untrained true evaluates the random network on purpose, as a baseline).")


def check_schedule(trainer: Trainer, model: LightningModule, datamodule: LightningDataModule) -> None:
    """A run needs a length (the learning-rate schedule spans it); settings that quietly waste it get a line."""
    from wcl.module import WCL

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
            note(f"model.warmup_epochs {hp.warmup_epochs:g} is not shorter than the run ({run}): the learning rate "
                 "is still warming up when the run ends and never reaches its peak; lower --model.warmup_epochs.")
        if hp.knn_every_n_epochs == 0:
            note("model.knn_every_n_epochs is 0: the online kNN is off, also after the last epoch (no "
                 "val/knn_top1); set it to N >= 1 to evaluate every N epochs and at the end.")
    splits = getattr(getattr(datamodule, "source", None), "splits", None)
    if splits is not None and splits.val is None:
        note(f"{datamodule.source.root} has no val/ (or test/) folder: online evaluation is off (no kNN or "
             "linear accuracy during the run); add a val/<class>/ split to measure it.")
