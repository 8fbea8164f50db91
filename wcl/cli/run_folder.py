"""The run folder: its name for composed configs (``runs/quickstart+multicrop``), one fit at a time in it (a lock),
no fresh fit over an earlier run's checkpoints, and every output folder writable before the first step."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import IO, Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from wcl.errors import ConfigError

LOCK_NAME = ".wcl.lock"


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` (``-c``) files of a command line, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def root_dir_of(path: str) -> str | None:
    """``trainer.default_root_dir`` of one config file (set in itself or in a trainer file it names), if it sets one.
    Read from the file: the parsed config holds the merged value, not which file set it."""
    cfg = load_config(path)
    trainer = cfg.get("trainer") if isinstance(cfg, dict) else None
    if isinstance(trainer, str):
        trainer = load_config(str(Path(path).parent / trainer))
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    return str(root) if root else None


def load_config(path: str) -> Any:
    """The YAML of the config file at ``path``; ``None`` where it cannot be read or parsed (the checks before parsing
    say why, :func:`wcl.cli.checks.check_config_files`)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def resolve_class(class_path: str) -> type | None:
    """The class a config's ``class_path`` names (``wcl.WCL``), or ``None`` where there is none."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def config_section(path: str, cfg: dict, section: str) -> object:
    """``cfg[section]`` of the config file at ``path``, read from the file it names where it is one (``data:
    data.yaml``, beside the config)."""
    part = cfg.get(section)
    if isinstance(part, str) and part.endswith((".yaml", ".yml")):
        try:
            return yaml.safe_load((Path(path).parent / part).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return part  # jsonargparse says what is wrong with it
    return part


def class_path_of(files: list[str], section: str) -> str | None:
    """The ``class_path`` of ``section`` (``model`` / ``data``) that the last of the config ``files`` naming one
    sets; ``None`` when none does."""
    found = None
    for path in files:
        cfg = load_config(path)
        part = config_section(path, cfg, section) if isinstance(cfg, dict) else None
        if isinstance(part, dict) and isinstance(part.get("class_path"), str):
            found = part["class_path"]
    return found


def is_group_help(arg: str, group: str | None = None) -> bool:
    """``--model.help`` / ``--model.help=CLASS`` (of ``group``, or of any group)."""
    name = arg.split("=", 1)[0]
    return name.endswith(".help") and (group is None or name == f"--{group}.help")


def with_run_folder(args: list[str]) -> list[str]:
    """Overlays get their own run folder: ``--config configs/quickstart.yaml --config configs/multicrop.yaml``
    writes to ``runs/quickstart+multicrop``, not over the quickstart's checkpoints. The folder is the one the last
    config that sets ``trainer.default_root_dir`` names, plus ``+<name>`` for each config composed after it; a
    ``--trainer.default_root_dir`` on the command line is used as given. Returns ``args`` with the folder added."""
    if any(a.startswith(("--trainer.default_root_dir", "--trainer=")) or a == "--trainer" for a in args):
        return args
    if any(a in ("-h", "--help") or is_group_help(a) for a in args):
        return args  # a help page: no run, and a key after `--model.help CLASS` would be taken as its argument
    files = config_files(args)
    setting = [(i, root) for i, f in enumerate(files) if (root := root_dir_of(f))]
    if not setting or setting[-1][0] == len(files) - 1:
        return args
    i, root = setting[-1]
    return [*args, "--trainer.default_root_dir", root.rstrip("/") + "".join(f"+{Path(f).stem}" for f in files[i + 1:])]


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


def _checkpoints(folder: Path) -> str:
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def check_no_checkpoints(folder: Path) -> None:
    """A fit that starts from scratch must not overwrite an earlier run's checkpoints without being told to."""
    if names := _checkpoints(folder):
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


def checkpoint_folders(trainer: Trainer) -> list[Path]:
    """The checkpoint callbacks' folders; wcl's ``Checkpoint`` gets its default (``<root>/checkpoints``) now, before
    Lightning looks for ``--ckpt_path last`` in it (Lightning sets it only at setup)."""
    from wcl.callbacks import Checkpoint

    for cb in trainer.callbacks:
        if isinstance(cb, Checkpoint):
            cb.default_dirpath(trainer)
    return [Path(cb.dirpath) for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]


def resolve_last(trainer: Trainer, subcommand: str, overwrite: bool) -> Path | None:
    """``--ckpt_path last``: the run folder's ``last.ckpt``, or ``None`` (a fit starts from the beginning) where the
    folder holds no checkpoint at all. A folder with other checkpoints but no ``last.ckpt`` is refused (starting
    over among them would rotate them away), as is any other subcommand without one."""
    from wcl.callbacks import Checkpoint

    cb = next((c for c in trainer.callbacks if isinstance(c, Checkpoint)), None)
    folder = Path(cb.default_dirpath(trainer)) if cb is not None else None
    last = folder / "last.ckpt" if folder is not None else None
    if last is not None and last.is_file():
        return last
    if subcommand != "fit":
        raise ConfigError(f"--ckpt_path last: there is no checkpoint at {last}; give the .ckpt to {subcommand} "
                          "with --ckpt_path PATH.")
    if folder is not None and (names := _checkpoints(folder)) and not overwrite:
        raise ConfigError(f"--ckpt_path last: {folder} has no last.ckpt but holds other checkpoints ({names}); "
                          f"resume one of them with --ckpt_path {folder}/NAME.ckpt, or start over with "
                          "--overwrite true (without --ckpt_path).")
    print(f"wcl: no checkpoint to resume at {last}; starting from the beginning", flush=True)
    return None


def guard(trainer: Trainer, resuming: bool, overwrite: bool) -> None:
    """Before a fit writes anything (and after rank 0 took the lock): a fresh fit does not overwrite an earlier
    run's checkpoints, and every output folder is writable."""
    folders = checkpoint_folders(trainer)
    if not resuming and not overwrite:
        for folder in folders:
            check_no_checkpoints(folder)
    if trainer.is_global_zero:
        for folder in folders:
            check_writable(folder, "the checkpoint folder", "fix the callback's dirpath or --trainer.default_root_dir")
        for logger in trainer.loggers:
            folder = getattr(logger, "root_dir", None) or getattr(logger, "save_dir", None)
            if folder and "://" not in str(folder):
                check_writable(Path(folder), f"the {type(logger).__name__} folder",
                               "remove what is in the way or choose another --trainer.default_root_dir")
