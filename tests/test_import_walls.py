"""The three rooms keep their walls: atlas never imports torch or textual,
builders never import textual, tui never imports torch.

Two checks: a static one over every import statement (like an import-linter
contract, lazy imports inside functions included), and a dynamic one that
imports the real modules in a fresh interpreter and looks at sys.modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from atlas.synthetic import build_synthetic_atlas

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("torch", "transformers", "safetensors", "gguf", "accelerate")
FORBIDDEN = {
    "atlas": (*HEAVY, "textual", "textual_plotext", "builders", "tui"),
    "builders": ("textual", "textual_plotext", "tui"),
    "tui": (*HEAVY, "builders"),
}


def _modules(package: str) -> list[str]:
    pkg = ROOT / package
    out = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] == "__main__":
            continue
        out.append(".".join(parts))
    return out


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import statement in a file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
            "import_module",
            "__import__",
        ):
            # importlib.import_module("torch") is an import too, when the name is a literal
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_static_import_contract(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    if not files:
        pytest.skip(f"{package}/ has no modules yet")
    bad = [
        f"{f.relative_to(ROOT)}:{line} imports {mod}"
        for f in files
        for line, mod in _imports(f)
        if mod in FORBIDDEN[package]
    ]
    assert not bad, "\n".join(bad)


def test_static_checker_catches_lazy_imports(tmp_path: Path) -> None:
    """The scanner sees imports hidden in functions and import_module calls."""
    f = tmp_path / "m.py"
    f.write_text(
        "import os\n"
        "def f():\n    import torch.nn as nn\n"
        "def g():\n    from textual.app import App\n"
        "def h():\n    import importlib\n    return importlib.import_module('transformers.models')\n"
    )
    assert {m for _, m in _imports(f)} == {"os", "torch", "textual", "importlib", "transformers"}


def _run(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_REPORT = "import sys, json; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {names!r})))"


def test_atlas_and_cli_import_no_torch_or_textual(tmp_path: Path) -> None:
    db = build_synthetic_atlas(tmp_path / "a.db", n_features=40, layers=(1,), d_vocab=200)
    # numpy too: reading commands do not need it and it is most of the start-up time
    names = {"torch", "textual", "transformers", "safetensors", "builders", "tui", "numpy"}
    code = (
        "import atlas, atlas.cli\n"
        "from click.testing import CliRunner\n"
        f"db = {str(db)!r}\n"
        "r = CliRunner()\n"
        "for argv in (['show', 'L1.res/3'], ['info'], ['search', '--promotes', 'the'], ['top', 'du_max']):\n"
        "    res = r.invoke(atlas.cli.cli, [*argv, '--db', db])\n"
        "    assert res.exit_code == 0, (argv, res.output)\n"
        "assert r.invoke(atlas.cli.cli, ['-h']).exit_code == 0  # listing the lazy commands imports none\n"
        + _REPORT.format(names=names)
    )
    assert _run(code) == []


def test_all_atlas_modules_import_without_torch_or_textual() -> None:
    mods = _modules("atlas")
    code = f"import importlib\nfor m in {mods!r}:\n    importlib.import_module(m)\n" + _REPORT.format(
        names={"torch", "textual", "transformers", "builders", "tui"}
    )
    assert _run(code) == []


def test_builders_never_import_textual() -> None:
    mods = _modules("builders")
    if not mods:
        pytest.skip("builders/ has no modules yet")
    code = f"import importlib\nfor m in {mods!r}:\n    importlib.import_module(m)\n" + _REPORT.format(
        names={"textual", "tui"}
    )
    assert _run(code) == []


def test_tui_never_imports_torch() -> None:
    mods = _modules("tui")
    if not mods:
        pytest.skip("tui/ has no modules yet")
    code = f"import importlib\nfor m in {mods!r}:\n    importlib.import_module(m)\n" + _REPORT.format(
        names={"torch", "transformers", "safetensors", "builders"}
    )
    assert _run(code) == []


# ---------------------------------------------------------------- no import cycles
def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)


def _import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the project modules it imports, at any depth (lazy imports in functions too).

    ``from a import b`` counts as importing ``a.b`` when that is a module. Imports only
    a type checker runs (``if TYPE_CHECKING:``) do not count, and neither does a module
    importing one of its own parent packages: Python has loaded those before the module.
    """
    paths = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            paths[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        found: set[str] = set()
        todo = [ast.parse(path.read_text(encoding="utf-8"))]
        while todo:
            for node in ast.iter_child_nodes(todo.pop()):
                if _is_type_checking(node):
                    todo.extend(node.orelse)
                    continue
                if isinstance(node, ast.Import):
                    found |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found |= {
                        f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                        for a in node.names
                    }
                todo.append(node)
        parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        graph[module] = {m for m in found if m in paths and m != module and m not in parents}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    """No two modules of atlas/, builders/ and tui/ import each other, directly or round a loop.

    The CLI's lazy commands are imports too (by name, in LAZY_COMMANDS).
    """
    import atlas.cli

    graph = _import_graph(ROOT, ("atlas", "builders", "tui"))
    graph["atlas.cli"] |= {module for module, *_ in atlas.cli.LAZY_COMMANDS.values()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_lazy_and_from_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg.a import f\n")  # a package importing its module: no cycle
    (pkg / "a.py").write_text("import pkg\n\ndef f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.c\nimport pkg.c\n")
    (pkg / "c.py").write_text("from pkg.a import f\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    assert _cycles(_import_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.b", "pkg.c"]]
