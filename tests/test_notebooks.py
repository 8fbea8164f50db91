"""Every notebook runs top to bottom with small settings (WCL_NOTEBOOK_FAST=1), so a broken one fails CI."""

import os
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/tmp/|/Users/|[A-Z]:\\\\)")


def _texts(nb) -> list[str]:  # noqa: ANN001
    return ["".join(o.get("text", "")) + "".join(str(v) for k, v in o.get("data", {}).items() if k.startswith("text"))
            for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _tracked_changes() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # One shared run folder: notebook 01's checkpoints feed 02 and 03, as for a user.
    # The kernels inherit this environment; PYTHONPATH makes them import this checkout's wcl, not an installed one.
    path = tmp_path_factory.mktemp("notebook_run")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WCL_NOTEBOOK_FAST", "1")
        env.setenv("WCL_NOTEBOOK_RUN", str(path))
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        yield path


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_weak_labels.ipynb", "03_evaluate.ipynb",
                                          "04_explore.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_clean(path):
    """What a reader sees on GitHub: no folder of the machine that ran it, no raw terminal escape codes."""
    texts = _texts(nbformat.read(path, as_version=4))
    assert not [t for t in texts if MACHINE_PATH.search(t)], [MACHINE_PATH.search(t).group(0) for t in texts
                                                              if MACHINE_PATH.search(t)]
    assert not [t for t in texts if "\x1b[" in t]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, run_dir):
    before = _tracked_changes()
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert not [t for t in _texts(nb) if "\x1b[" in t]  # no escape codes, also in what it prints now
    assert _tracked_changes() == before  # running a notebook rewrites no file of the repository


def test_explore_notebook_outputs_are_clean():
    """04 is committed with outputs: no terminal colour codes and no paths of the machine that ran it."""
    nb = nbformat.read(NOTEBOOKS[-1], as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert text and "\x1b[" not in text
    for machine in ("/work/", "/tmp/", "/home/", "/root/"):
        assert machine not in text, machine
