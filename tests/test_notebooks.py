"""Every notebook runs top to bottom with small settings (WCL_NOTEBOOK_FAST=1), so a broken one fails CI."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    # One shared run folder: notebook 01's checkpoints feed 02 and 03, as for a user.
    path = tmp_path_factory.mktemp("notebook_run")
    os.environ["WCL_NOTEBOOK_FAST"] = "1"
    os.environ["WCL_NOTEBOOK_RUN"] = str(path)
    yield path
    os.environ.pop("WCL_NOTEBOOK_FAST")
    os.environ.pop("WCL_NOTEBOOK_RUN")


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_weak_labels.ipynb", "03_evaluate.ipynb",
                                          "04_explore.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, run_dir):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_explore_notebook_outputs_are_clean():
    """04 is committed with outputs: no terminal colour codes and no paths of the machine that ran it."""
    nb = nbformat.read(NOTEBOOKS[-1], as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert text and "\x1b[" not in text
    for machine in ("/work/", "/tmp/", "/home/", "/root/"):
        assert machine not in text, machine
