"""The shipped recipes: ``--config wcl:<name>`` names a config file that comes with the package.

``wcl:quickstart`` is ``configs/quickstart.yaml``, ``wcl:cifar10/wcl`` is ``configs/cifar10/wcl.yaml``. A wheel
carries the configs inside the package (``wcl/configs``, copied there when the wheel is built); a checkout or an
editable install reads the repository's ``configs/``. Configs that name each other (``data: data.yaml``,
``model: ../cifar10/model.yaml``) keep working, as the names resolve to the files themselves.

``python -m wcl.recipes`` lists the recipes; ``python -m wcl.recipes --copy DIR`` writes them out to edit.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
from pathlib import Path

from wcl.errors import ConfigError

PREFIX = "wcl:"
_PACKAGE = Path(__file__).resolve().parent


def recipes_dir() -> Path:
    """The folder of the shipped configs: ``wcl/configs`` in an installed wheel, else the repository's
    ``configs/`` next to the package (a checkout or an editable install)."""
    for folder in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if folder.is_dir():
            return folder
    raise ConfigError(f"the shipped configs are missing: neither {_PACKAGE / 'configs'} nor "
                      f"{_PACKAGE.parent / 'configs'} exists; reinstall wcl (pip install wcl) or give --config a file.")


def recipe_names(root: Path) -> list[str]:
    """Every recipe under ``root`` as ``--config wcl:`` takes it: the path without ``.yaml``, sorted."""
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def recipe_path(name: str, root: Path) -> Path:
    """The file of recipe ``name`` (``quickstart``, ``cifar10/wcl``; ``.yaml`` may be given) under ``root``."""
    stem = name.removesuffix(".yaml").strip("/")
    path = (root / f"{stem}.yaml").resolve()
    if stem and path.is_file() and path.is_relative_to(root.resolve()):
        return path
    names = recipe_names(root)
    close = difflib.get_close_matches(stem, names, n=1)
    hint = f"did you mean {PREFIX}{close[0]}? " if close else ""
    raise ConfigError(f"--config {PREFIX}{name}: no such shipped recipe; {hint}the recipes are the .yaml files under "
                      f"{root}, named without .yaml (e.g. {PREFIX}quickstart, {PREFIX}cifar10/wcl); "
                      "`python -m wcl.recipes` lists them.")


def resolve_config_args(args: list[str], root: Path | None = None) -> list[str]:
    """``args`` with each ``--config wcl:NAME`` (also ``-c wcl:NAME``, ``--config=wcl:NAME``) replaced by the
    recipe's file; everything else as given. ``root`` defaults to :func:`recipes_dir` (looked up only when a
    ``wcl:`` name is given)."""
    out = list(args)
    for i, arg in enumerate(out):
        if not isinstance(arg, str):
            continue
        if arg.startswith("--config=" + PREFIX):
            name, flag = arg.split("=", 1)[1], "--config="
        elif i > 0 and out[i - 1] in ("--config", "-c") and arg.startswith(PREFIX):
            name, flag = arg, ""
        else:
            continue
        root = recipes_dir() if root is None else root
        out[i] = flag + str(recipe_path(name[len(PREFIX):], root))
    return out


def copy_recipes(root: Path, folder: Path) -> None:
    """Write the recipes under ``root`` to ``folder`` as a tree; refuses to overwrite a file already there."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--copy {folder} is a file, not a folder; give a folder.")
    if taken := [n for n in recipe_names(root) if (folder / f"{n}.yaml").exists()]:
        raise ConfigError(f"--copy {folder} already holds {folder / taken[0]}.yaml (and {len(taken) - 1} more "
                          "recipes); give a new folder, so that no edited file is overwritten.")
    shutil.copytree(root, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def main(argv: list[str] | None = None) -> None:
    """``python -m wcl.recipes``: list the shipped recipes, or copy them to a folder to edit."""
    parser = argparse.ArgumentParser(prog="python -m wcl.recipes",
                                     description="The configs shipped with wcl, usable as --config wcl:<name>.")
    parser.add_argument("--copy", metavar="DIR", type=Path,
                        help="write the recipes (their folder tree, so that data: data.yaml still resolves) to DIR")
    opts = parser.parse_args(argv)
    try:
        root = recipes_dir()
        if opts.copy is not None:
            copy_recipes(root, opts.copy)
    except (ConfigError, OSError) as err:
        print(f"python -m wcl.recipes: error: {err}", file=sys.stderr)
        sys.exit(2)
    if opts.copy is not None:
        print(f"wrote {len(recipe_names(root))} recipes to {opts.copy}")
        return
    print(f"recipes in {root} (python -m wcl fit --config {PREFIX}<name>):")
    for name in recipe_names(root):
        print(f"  {PREFIX}{name}")


if __name__ == "__main__":
    main()
