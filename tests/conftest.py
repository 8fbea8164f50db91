from pathlib import Path

import pytest
import torch

from tests.helpers import QUICKSTART, run_wcl

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the long end-to-end tests (marked slow): subprocess runs of the quickstart, "
                          "notebooks, launches, fault injection, multi-process runs; -m slow runs only those")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A marker expression that names them (-m slow, -m "slow and not notebooks") chooses them itself.
    if config.getoption("--slow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="long end-to-end test: pytest --slow runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _two_threads():
    # The suite runs on 2 cores; keep tests from oversubscribing them.
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seeded():
    # Every test draws the same random tensors whatever ran before it: a failure reproduces alone.
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> tuple[Path, str]:
    """The README's quickstart, run once per pytest run as a user runs it, in a fresh folder: (that folder, what it
    printed). Its checkpoint, ``runs/quickstart/checkpoints/last.ckpt`` there, is the trained model the README test
    and the evaluation tests read (read only: write elsewhere)."""
    cwd = tmp_path_factory.mktemp("quickstart")
    return cwd, run_wcl(QUICKSTART, cwd)


@pytest.fixture
def cifar10_root() -> Path:
    if not (CIFAR10 / "train").is_dir():
        pytest.skip(f"CIFAR-10 ImageFolder copy not found at {CIFAR10} (only present on the project's machines)")
    return CIFAR10


@pytest.fixture
def eager_compile(monkeypatch) -> list[dict]:
    """``torch.compile`` with dynamo tracing for real but the eager backend (no C++ code generation); the list
    records the keyword arguments of every call."""
    calls: list[dict] = []
    real_compile = torch.compile

    def compile_eagerly(fn, **kwargs):  # noqa: ANN001
        calls.append(kwargs)
        return real_compile(fn, **{**kwargs, "backend": "eager", "mode": None})

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    return calls
