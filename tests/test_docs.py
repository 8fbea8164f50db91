"""The documentation: the README is a front page, the site builds (``mkdocs build --strict``), every ``python -m
wcl`` command it shows names configs and keys that exist, the quickstart's expected output is one text, the error
catalogue is generated from the tests, and the product speaks of the software, not of how it was made."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_readme import EVAL_SENTENCE, RANDOM_SENTENCE, readme_block
from wcl.recipes import PREFIX, recipe_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"\s*$', re.M)
PLACEHOLDER = re.compile(r"…|<|^\[-|^[A-Z_]+(\.[a-z]+)?$|^\$")


def expand(text: str) -> str:
    """``text`` with pymdownx.snippets' ``--8<-- "FILE"`` / ``--8<-- "FILE:section"`` lines replaced by what they
    include, as the site shows it (a section lies between ``--8<-- [start:NAME]`` and ``--8<-- [end:NAME]``)."""

    def include(match: re.Match) -> str:
        body = (ROOT / match.group(1)).read_text()
        if match.group(2):
            start, end = f"--8<-- [start:{match.group(2)}]", f"--8<-- [end:{match.group(2)}]"
            assert start in body and end in body, f"{match.group(1)} has no section {match.group(2)}"
            body = body.split(start, 1)[1].split("\n", 1)[1].split(end, 1)[0].rsplit("\n", 1)[0]
        return body

    return SNIPPET.sub(include, text)


def pages() -> dict[str, str]:
    """The README and every page of the site, snippets expanded: {path relative to the repository: text}."""
    texts = {"README.md": README.read_text()}
    texts.update({str(p.relative_to(ROOT)): expand(p.read_text()) for p in sorted(DOCS.rglob("*.md"))})
    return texts


def _command_lines(text: str) -> list[str]:
    """Command lines in fenced code blocks (``\\`` continuations joined) and in inline code spans."""
    lines = []
    for block in re.findall(r"^\s*```[\w-]*\n(.*?)^\s*```", text, re.S | re.M):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return lines


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every ``python -m wcl …`` / ``wcl …`` command the README and the site show: (page, arguments after the
    program), ``#`` comments and environment assignments dropped."""
    found = []
    program = re.compile(r"(?:^|\s)(?:python3? -m wcl|-m wcl|^wcl) (fit|validate|predict)\b(.*)$")
    for page, text in pages().items():
        for line in _command_lines(text):
            match = program.search(line)
            if match:
                found.append((page, [match.group(1), *shlex.split(match.group(2), comments=True)]))
    return found


def _concrete(args: list[str]) -> bool:
    """A command as a user types it, not a pattern with placeholders (``--config FILE``, ``…``, ``$CKPT``)."""
    return not any(PLACEHOLDER.search(a) for a in args)


def _config_file(name: str) -> Path:
    return recipe_path(name[len(PREFIX):], ROOT / "configs") if name.startswith(PREFIX) else ROOT / name


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for command in ('pip install -e ".[dev]"', "pip install -e .`",
                    "pip install torch --index-url https://download.pytorch.org/whl/cpu",
                    "python -m wcl fit --config configs/quickstart.yaml"):
        assert command in text, command
    for section in ("## Install", "## Quickstart", "## Results", "## Configs", "## Documentation",
                    "## Supported versions", "## Limitations", "## Tests", "## Citation", "## License"):
        assert f"\n{section}\n" in text, section
    tests = text.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    block = tests.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.splitlines()] == ["pytest", "pytest --slow"]
    assert "GPU / full scale" in text and "not measured yet" in text
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the wcl authors" in license_text


def test_the_site_shows_the_readme_quickstart_and_its_figures():
    """The getting-started page includes the README's quickstart section, so both show one text: the expected
    output block and the sentences tests/test_readme.py checks against real runs."""
    page = pages()["docs/getting-started.md"]
    block = "\n".join(readme_block(README.read_text()))
    assert "At the end it prints\n\n```\n" + block + "\n```" in page
    for pattern in (RANDOM_SENTENCE, EVAL_SENTENCE):
        assert pattern.search(page).group(0) == pattern.search(README.read_text()).group(0)


def test_every_page_is_in_the_navigation_and_every_link_resolves():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", ""))["nav"]

    def leaves(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in leaves(item)]
        return [p for value in node.values() for p in leaves(value)]

    listed = leaves(nav)
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(listed) == on_disk
    for page, text in pages().items():
        base = (ROOT / page).parent
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[\w-]+)?\)", text):
            if "://" in target:
                continue
            assert (base / target).exists() or (page.startswith("docs/") and (base / target).name in
                                                 {p.name for p in (ROOT / "notebooks" / "figures").glob("*.png")}), \
                f"{page} links to {target}, which does not exist"


def test_documented_commands_name_configs_that_exist():
    commands = documented_commands()
    concrete = [(page, args) for page, args in commands if _concrete(args)]
    assert len(concrete) >= 30, len(concrete)  # the extraction finds the pages' commands
    pages_with_commands = {page for page, _ in concrete}
    assert {"README.md", "docs/guide/backbones.md", "docs/guide/few-labels.md", "docs/guide/distributed.md"} <= \
        pages_with_commands
    for page, args in commands:
        for i, arg in enumerate(args[:-1]):
            if arg in ("--config", "-c") and _concrete([args[i + 1]]):
                assert _config_file(args[i + 1]).is_file(), f"{page}: {' '.join(args)} names no file {args[i + 1]}"


def _run_cli(args: list[str]) -> tuple[int, str]:
    from wcl.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code or 0
    return code, err.getvalue()


@pytest.mark.slow
def test_documented_commands_parse_with_their_keys(monkeypatch):
    """Each concrete command of the README and the site, as the command line parses it (``--print_config``: every
    config exists, composes, and every key is one the classes take; help pages print)."""
    monkeypatch.chdir(ROOT)
    failures = []
    seen = set()
    for page, args in documented_commands():
        if not _concrete(args) or tuple(args) in seen:
            continue
        seen.add(tuple(args))
        helps = any(a in ("-h", "--help") or a.endswith(".help") for a in args)
        code, err = _run_cli(args if helps else [*args, "--print_config"])
        if code != 0:
            failures.append(f"{page}: python -m wcl {' '.join(args)}\n    {err.strip()[-400:]}")
    assert not failures, "\n".join(failures)


# The product speaks of the software: what it does, measured on what, when, with which command.
HISTORY = re.compile(r"\bissues?\b|\bround \d|\brounds? of\b|\bsessions?\b|\blent\b|\bgoals?\b|this project\b|"
                     r"\bour\b|\bwe\b|\bused to\b|\bno longer\b|\brebuilt\b|\bthe rebuild\b|\bformer(ly)?\b", re.I)


def _notebook_markdown() -> dict[str, str]:
    out = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
        out[str(path.relative_to(ROOT))] = "\n".join(markdown)
    return out


def test_no_development_history_in_the_product():
    texts = {**pages(), "BENCHMARKS.md": (ROOT / "BENCHMARKS.md").read_text(), **_notebook_markdown()}
    found = [f"{name}: …{text[max(0, m.start() - 40):m.end() + 40]!r}…" for name, text in texts.items()
             for m in HISTORY.finditer(text)]
    assert not found, "\n".join(found)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_error_catalogue_lists_every_case_of_the_error_tests():
    import ast

    hooks = _hooks()
    source = (ROOT / "tests" / "test_errors.py").read_text()
    cases = hooks.error_cases(source)
    tree = ast.parse(source)
    tables = [node.value for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)]
    keys = {k.value for table in tables for k in table.keys if isinstance(k, ast.Constant)}
    assert keys and keys <= {c.name for c in cases}, keys - {c.name for c in cases}
    failing_tests = {hooks._words(f.name) for f in tree.body if isinstance(f, ast.FunctionDef)
                     and any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "_fails" for n in ast.walk(f))}
    assert failing_tests == {c.family for c in cases}
    assert all(c.command[0].startswith("python -m wcl") and c.needles for c in cases)
    assert str(ROOT) not in hooks.render_catalogue(cases)  # paths under the repository shown relative to it


def test_error_catalogue_takes_new_families_of_cases():
    """Tables of cases in new shapes: a second module-level table, a one-name unpacking, an inline table, and a test
    of another entry point."""
    source = '''
from wcl.export import main as export_main
QUICK = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["--data.batch_size", "4"]
DATA_CASES = {"negative workers": (["--data.num_workers", "-1"], ["data.num_workers"])}
PROBE_CASES = {"fraction 2": ["--data.label_fraction", "2"]}


def test_bad_data(case, capsys):
    extra, needles = DATA_CASES[case]
    _fails(capsys, ["fit", "--config", QUICK, *TINY, *extra], *needles)


def test_bad_probe(case, capsys):
    extra = PROBE_CASES[case]
    _fails(capsys, ["fit", "--config", str(ROOT / "configs" / "linear" / "quickstart.yaml"), *extra], "fraction")


def test_inline(case, capsys, tmp_path):
    args, needle = {"no root": (["--data.root", str(tmp_path / "none")], "none")}[case]
    _fails(capsys, ["fit", "--config", QUICK, *args], needle)


def test_export(capsys, tmp_path):
    """Export refuses a folder."""
    _fails(capsys, ["in.ckpt", str(tmp_path)], "is a folder", entry=export_main)
'''
    hooks = _hooks()
    rows = {(c.family, c.name): (" ".join(c.command), c.needles) for c in hooks.error_cases(source)}
    assert rows == {
        ("Bad data", "negative workers"): ("python -m wcl fit --config configs/quickstart.yaml --data.num_workers -1",
                                           ["data.num_workers"]),
        ("Bad probe", "fraction 2"): ("python -m wcl fit --config configs/linear/quickstart.yaml "
                                      "--data.label_fraction 2", ["fraction"]),
        ("Inline", "no root"): ("python -m wcl fit --config configs/quickstart.yaml --data.root DIR/none", ["none"]),
        ("Export", "Export refuses a folder."): ("python -m wcl.export in.ckpt DIR", ["is a folder"]),
    }
    assert "### Bad data" in hooks.render_catalogue(hooks.error_cases(source))


@pytest.mark.slow
def test_site_builds_strict_with_the_api_reference_and_the_catalogue(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def text(page: str) -> str:
        return re.sub(r"<[^>]+>", "", (site / page / "index.html").read_text())

    assert "nt_xent_loss" in text("reference/losses") and "NT-Xent over B pairs" in text("reference/losses")
    assert "weak_labels" in text("reference/graph") and "knn_table" in text("reference/neighbors")
    assert "WCLDataModule" in text("reference/data") and "KnnMultiCrop" in text("reference/callbacks")
    assert "WCL" in text("reference/models") and "LinearProbe" in text("reference/models")
    catalogue = text("troubleshooting")
    assert "unknown model key" in catalogue and "--model.widht 8" in catalogue and "error-catalogue" not in catalogue
    assert "wcl: final val/knn_top1 = " in text("getting-started")
    assert (site / "figures" / "weak_labels.png").is_file()
