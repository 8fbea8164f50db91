"""The shipped recipes (``--config wcl:<name>``) and the package installed from a wheel, outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from wcl.cli import main
from wcl.errors import ConfigError
from wcl.recipes import copy_recipes, recipe_names, recipe_path, recipes_dir, resolve_config_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def test_recipe_names_resolve_to_the_repository_configs_in_a_checkout():
    assert recipes_dir() == CONFIGS
    args = ["fit", "--config", "wcl:quickstart", "-c", "wcl:cifar10/wcl.yaml", "--config=wcl:multicrop",
            "--data.root", "wcl:not-a-config"]
    assert resolve_config_args(args) == ["fit", "--config", str(CONFIGS / "quickstart.yaml"), "-c",
                                         str(CONFIGS / "cifar10" / "wcl.yaml"),
                                         f"--config={CONFIGS / 'multicrop.yaml'}", "--data.root", "wcl:not-a-config"]
    assert resolve_config_args(["fit", "--config", "configs/quickstart.yaml"]) == ["fit", "--config",
                                                                                  "configs/quickstart.yaml"]
    names = recipe_names(CONFIGS)
    assert {"quickstart", "multicrop", "cifar10/wcl", "fewlabel/label_graph"} <= set(names)
    assert len(names) == len(list(CONFIGS.rglob("*.yaml")))


@pytest.mark.parametrize("name,hint", [("quickstar", "did you mean wcl:quickstart?"), ("../pyproject", "recipes"),
                                       ("", "recipes"), ("cifar10", "recipes")])
def test_an_unknown_recipe_is_one_line_naming_it(name, hint):
    with pytest.raises(ConfigError) as err:
        recipe_path(name, CONFIGS)
    assert f"wcl:{name}" in str(err.value) and hint in str(err.value) and "\n" not in str(err.value)


def test_the_command_line_takes_recipe_names(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # outside the repository: the names do not depend on the working folder
    with pytest.raises(SystemExit):
        main(["fit", "--config", "wcl:quickstart", "--config", "wcl:multicrop", "--print_config"])
    out = capsys.readouterr().out
    assert "default_root_dir: runs/quickstart+multicrop\n" in out and "class_path: wcl.callbacks.KnnMultiCrop" in out
    with pytest.raises(SystemExit):  # wcl.yaml names data: data.yaml and model: model.yaml next to it
        main(["fit", "--config", "wcl:cifar100/wcl", "--print_config"])
    out = capsys.readouterr().out
    assert "root: data/cifar100" in out and "optimizer: lars" in out
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", "wcl:quickstar"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith("wcl: error: --config wcl:quickstar: no such shipped recipe")


def test_copy_writes_the_tree_and_refuses_to_overwrite(tmp_path):
    copy_recipes(CONFIGS, tmp_path / "mine")
    assert (tmp_path / "mine" / "cifar10" / "data.yaml").read_text() == (CONFIGS / "cifar10" / "data.yaml").read_text()
    with pytest.raises(ConfigError, match="already holds"):
        copy_recipes(CONFIGS, tmp_path / "mine")


def _source_tree(dest: Path) -> Path:
    """The files a clean clone of this checkout has (tracked, and new files git does not ignore), without the
    build outputs and caches a working copy collects."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_installs_outside_the_repository_and_runs_the_quickstart(tmp_path):
    """Build a wheel from a clean copy of the checkout, install it into a new virtual environment (with the system's
    site-packages for torch and the other dependencies: nothing is downloaded), and run the quickstart by its
    recipe name from a folder that is not the repository."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the checkout's files")
    source = _source_tree(tmp_path / "clone")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dist), str(source)], check=True, capture_output=True, text=True, timeout=600)
    wheel = next(dist.glob("wcl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "wcl/configs/quickstart.yaml" in names and "wcl/configs/cifar10/data.yaml" in names
    assert any(n.startswith("wcl/data/bundled/") for n in names) and "wcl/recipes.py" in names
    assert not any(n.startswith(("tests/", "configs/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")

    def run(*args: str) -> str:
        proc = subprocess.run([*args], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    where = run(str(python), "-c", "import wcl, wcl.recipes; print(wcl.__file__); print(wcl.recipes.recipes_dir())")
    assert str(ROOT) not in where and where.count(str(env_dir)) == 2, where
    assert "wcl:cifar10/wcl" in run(str(python), "-m", "wcl.recipes")
    out = run(str(env_dir / "bin" / "wcl"), "fit", "--config", "wcl:quickstart", "--trainer.max_epochs", "1",
              "--data.train_per_class", "100", "--data.val_per_class", "20", "--trainer.enable_progress_bar", "false")
    assert "wcl: final val/knn_top1 = " in out, out[-2000:]
    assert (work / "runs" / "quickstart" / "checkpoints" / "last.ckpt").is_file()
    printed = run(str(python), "-m", "wcl", "fit", "--config", "wcl:cifar10/wcl", "--config", "wcl:multicrop",
                  "--print_config")
    assert "root: data/cifar10" in printed and "default_root_dir: runs/cifar10_wcl+multicrop" in printed
