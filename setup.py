"""Build hook: the wheel carries the recipes (``configs/``) inside the package as ``wcl/configs``, so that
``--config wcl:<name>`` works without the repository (``wcl/recipes.py``). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"


class BuildWithRecipes(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads the repository's configs/ itself
            shutil.copytree(CONFIGS, Path(self.build_lib) / "wcl" / "configs", dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names if not n.endswith(".yaml")
                                                          and not (Path(folder) / n).is_dir()])


setup(cmdclass={"build_py": BuildWithRecipes})
