"""mkdocs hooks: the notebooks' figures as site files, and the error catalogue generated from tests/test_errors.py.

The catalogue is read from the test file's syntax tree (nothing is imported or run), so the page lists exactly the
bad inputs the suite checks: every test that calls ``_fails(capsys, ARGS, *NEEDLES)``, and, where ``ARGS`` or the
needles come from a table of cases (``extra, needles = CASES[case]``, a module-level dict or one written in the test),
one row per case of that table. A new test or a new table of cases appears on the next build.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "notebooks" / "figures"
ERROR_TESTS = ROOT / "tests" / "test_errors.py"
MARKER = "<!-- error-catalogue -->"


@dataclass
class Case:
    family: str  # the test's name, as words
    name: str  # the case's name in its table, or the test's docstring
    command: list[str]
    needles: list[str] = field(default_factory=list)


def _words(test_name: str) -> str:
    text = test_name.removeprefix("test_").replace("_", " ")
    return text[:1].upper() + text[1:]


class _Renderer:
    """Shows an expression of the test file as text a user could type: string constants as they are, paths under
    ``ROOT`` relative to the repository, other names as ``<name>``."""

    def __init__(self, module: dict[str, ast.expr], local: dict[str, ast.expr],
                 tables: dict[str, tuple[int | None, dict[str, ast.expr]]], case: str | None):
        self.module, self.local, self.tables, self.case = module, local, tables, case

    def text(self, node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            return str(node.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and node.args:
            return self.text(node.args[0])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left, right = self.text(node.left), self.text(node.right)
            return right if left == "" else f"{left}/{right}"
        if isinstance(node, ast.JoinedStr):
            return "".join(self.text(v.value) if isinstance(v, ast.FormattedValue) else str(v.value)
                           for v in node.values)
        if isinstance(node, ast.Name):
            if node.id == "ROOT":
                return ""
            if node.id in self.tables and self.case is not None:
                return self.text(_pick(self.tables[node.id], self.case))
            bound = self.local.get(node.id, self.module.get(node.id))
            if bound is not None and not isinstance(bound, ast.List | ast.Tuple | ast.Dict):
                return self.text(bound)
            return "DIR" if node.id == "tmp_path" else node.id.upper()
        return "…"

    def items(self, node: ast.expr) -> list[str]:
        """A list expression as strings: starred tables of cases expanded for ``case``, starred sizing lists
        (``*TINY``) left out, a name bound to a list followed."""
        if isinstance(node, ast.Name) and isinstance(bound := self.local.get(node.id), ast.List):
            return self.items(bound)
        if isinstance(node, ast.Name) and node.id in self.tables and self.case is not None:
            return self.items(_pick(self.tables[node.id], self.case))
        if not isinstance(node, ast.List | ast.Tuple):
            return [self.text(node)]
        out: list[str] = []
        for element in node.elts:
            if isinstance(element, ast.Starred):
                inner = element.value
                if isinstance(inner, ast.Name) and (inner.id in self.tables or inner.id in self.local):
                    out += self.items(inner)
                continue  # a module-level list such as TINY: the test's sizes
            out.append(self.text(element))
        return out


def _pick(table: tuple[int | None, dict[str, ast.expr]], case: str) -> ast.expr:
    position, rows = table
    row = rows[case]
    return row.elts[position] if position is not None and isinstance(row, ast.Tuple) else row


def _user_command(args: list[str]) -> list[str]:
    """Drop what only the test needs: its temporary output folder (``--trainer.default_root_dir DIR``) and its
    own callbacks (``--trainer.callbacks+=tests.helpers.X`` and their ``--trainer.callbacks.KEY=VALUE``)."""
    out, i, test_callback = [], 0, False
    while i < len(args):
        if args[i] == "--trainer.default_root_dir" and i + 1 < len(args) and args[i + 1] in ("DIR", "DIR/run"):
            i += 2
            continue
        if args[i].startswith("--trainer.callbacks+=tests."):
            test_callback = True
        elif not args[i].startswith("--trainer.callbacks."):
            test_callback = False
        if test_callback:
            i += 1
            continue
        out.append(args[i])
        i += 1
    return out


def _entry_module(tree: ast.Module) -> dict[str, str]:
    """Imported names to the module whose command line they are (``main`` of ``wcl.cli``: ``python -m wcl``)."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wcl"):
            for alias in node.names:
                module = "wcl" if node.module == "wcl.cli" else node.module
                names[alias.asname or alias.name] = module
    return names


def _case_tables(function: ast.FunctionDef, module: dict[str, ast.expr]) -> dict[str, tuple[int | None, dict]]:
    """``a, b = TABLE[case]`` (or ``a = TABLE[case]``) in a test: each target name to (its position in a row, None
    for the whole row; {case name: row})."""
    tables: dict[str, tuple[int | None, dict]] = {}
    for node in ast.walk(function):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript)):
            continue
        table = node.value.value
        if isinstance(table, ast.Name):
            table = module.get(table.id)
        if not isinstance(table, ast.Dict):
            continue
        rows = {k.value: v for k, v in zip(table.keys, table.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        target = node.targets[0]
        if isinstance(target, ast.Name):
            tables[target.id] = (None, rows)
        elif isinstance(target, ast.Tuple):
            tables.update({name.id: (i, rows) for i, name in enumerate(target.elts) if isinstance(name, ast.Name)})
    return tables


def _parametrized_cases(function: ast.FunctionDef) -> str:
    """The ids of ``@pytest.mark.parametrize("case", [...])`` written out as a list of strings, joined."""
    for decorator in function.decorator_list:
        if (isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("parametrize")
                and len(decorator.args) >= 2 and isinstance(decorator.args[1], ast.List)):
            ids = [e.value for e in decorator.args[1].elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            return "; ".join(ids)
    return ""


def error_cases(source: str) -> list[Case]:
    """Every bad input the test file checks with ``_fails``, in the file's order."""
    tree = ast.parse(source)
    module = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    entries = _entry_module(tree)
    cases: list[Case] = []
    for function in tree.body:
        if not (isinstance(function, ast.FunctionDef) and function.name.startswith("test_")):
            continue
        local = {t.id: node.value for node in ast.walk(function) if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        tables = _case_tables(function, module)
        doc = (ast.get_docstring(function) or "").split("\n\n")[0].replace("\n", " ")
        ids = _parametrized_cases(function)
        calls = [n for n in ast.walk(function) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id == "_fails" and len(n.args) >= 2]
        for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset)):
            entry = next((kw.value.id for kw in call.keywords if kw.arg == "entry" and
                          isinstance(kw.value, ast.Name)), "main")
            program = "python -m " + entries.get(entry, "wcl")
            used = {n.id for n in ast.walk(call) if isinstance(n, ast.Name)} | \
                {n.id for name in ast.walk(call) if isinstance(name, ast.Name) and isinstance(local.get(name.id),
                                                                                           ast.List)
                 for n in ast.walk(local[name.id]) if isinstance(n, ast.Name)}
            keyed = [rows for name, (_, rows) in tables.items() if name in used]
            names = list(keyed[0]) if keyed else [None]
            for case in names:
                render = _Renderer(module, local, tables, case)
                args = render.items(call.args[1])
                needles = [n for arg in call.args[2:] for n in render.items(
                    arg.value if isinstance(arg, ast.Starred) else ast.List(elts=[arg]))]
                cases.append(Case(_words(function.name), case or ids or doc, [program, *_user_command(args)],
                                  needles))
    return cases


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def render_catalogue(cases: list[Case]) -> str:
    """The catalogue as markdown: one table per test, one row per case."""
    out = [f"{len(cases)} bad inputs, each checked by `tests/test_errors.py` for exit code 2, one line "
           "`wcl: error: …` (`wcl.export: error: …` for the export), no traceback, and the words in the last column.",
           ""]
    family = None
    for case in cases:
        if case.family != family:
            family = case.family
            out += ["", f"### {family}", "", "| case | command | the line names |", "|---|---|---|"]
        command = " ".join(case.command)
        out.append(f"| {case.name.replace('|', '/') or '—'} | {_code(command)} | "
                   f"{', '.join(_code(n) for n in case.needles) or '—'} |")
    return "\n".join(out) + "\n"


def on_files(files, config):  # noqa: ANN001, ANN201 (mkdocs hook)
    """The notebooks' figures are served as ``figures/<name>.png`` (one copy, in notebooks/figures)."""
    from mkdocs.structure.files import File

    for png in sorted(FIGURES.glob("*.png")):
        files.append(File(f"figures/{png.name}", src_dir=str(ROOT / "notebooks"), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):  # noqa: ANN001, ANN201 (mkdocs hook)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render_catalogue(error_cases(ERROR_TESTS.read_text())))
    return markdown
