"""Who may import whom (docs/architecture.md): no import cycles, the core never imports a front end,
each module imports only from its layer or below; and the package's lazy names agree with its typing.

Imports are read from the source (``ast``), those inside functions included: a cycle hidden in a
function body is still a cycle. Only ``if TYPE_CHECKING:`` blocks are exempt.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import modelfix

# The checkout's sources, whichever copy of modelfix is imported (a suite may run against an installed wheel).
ROOT = Path(__file__).resolve().parents[1] / "modelfix"
JUPYTER = ROOT.parent / "jupyter_ext" / "modelfix_jupyter"

# The layers of docs/architecture.md, bottom to top: a module imports from its own layer or below.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0. leaves: no state, nothing of modelfix but errors
    (
        "errors",
        "hashing",
        "events",
        "eviction",
        "safefs",
        "lockfile_lines",
        "lockfile_files",
        "pin_paths",
        "setting_values",
        "selection",
        "estimate",
        "retry",
        "hooks",
        "testing.gguf",
    ),
    # 1. records and the disk: the lockfile, settings, the store's parts, reading bytes
    (
        "jobs",
        "config",
        "lockfile",
        "settings",
        "views",
        "leases",
        "layers",
        "store",
        "joins",
        "transports",
        "hub_api",
        "handle",
        "probe",
        "snapshot_file",
        "placement",
    ),
    # 2. engines: where files come from, the fetcher, the pool, cache care, locking, routing
    ("sources", "fetch", "tiers", "care", "pool", "locking", "routing", "obtain"),
    # 3. materializing: the warm and the cold path
    ("resolver",),
    # 4. the API every front end shares
    ("project", "snapshots", ""),
    # 5. front ends (the notebook's package, modelfix_jupyter, sits here too)
    (
        "pytest_plugin",
        "_pytest_options",
        "_pytest_hooks",
        "_pytest_report",
        "_pytest_breadcrumbs",
        "_pytest_snapshots",
        "_ipython",
        "cli",
        "cli.cache",
        "cli.doctor",
        "cli.inspect_model",
        "cli.lock",
        "cli.progress",
        "cli.run",
        "__main__",
    ),
)
FRONT_ENDS = {f"modelfix.{name}" if name else "modelfix" for name in LAYERS[-1]}
TOOLS = ("modelfix.testing",)  # the test helpers: a package of their own, layered apart


def _name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports (``from . import x`` names the submodule x)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            found.update(submodules or [target])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    resolved = set()
    for imported in found:
        name = imported
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            resolved.add(name)
    return resolved


def _graph(*roots: Path) -> dict[str, set[str]]:
    files = {_name(p, root): p for root in roots for p in root.rglob("*.py")}
    known = set(files) | {"modelfix_jupyter"}
    return {module: _imports(path, module, known) for module, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start, imports in graph.items():
        if start in index:
            continue
        work = [(start, iter(sorted(imports)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


GRAPH = _graph(ROOT)


def test_the_checker_finds_a_cycle_hidden_in_a_function_body(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import x\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")

    graph = _graph(package)

    assert _cycles(graph) == [["pkg.a", "pkg.b"]]
    assert "pkg.a" not in graph["pkg.c"]  # TYPE_CHECKING imports are exempt


def test_modelfix_has_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_core_never_imports_a_front_end():
    core = {m for m in GRAPH if m not in FRONT_ENDS and not m.startswith(TOOLS)}
    wrong = {m: sorted(i for i in GRAPH[m] if i in FRONT_ENDS or i == "modelfix_jupyter") for m in sorted(core)}
    assert {m: found for m, found in wrong.items() if found} == {}


def test_every_module_has_a_layer_and_imports_only_its_layer_or_below():
    layer = {f"modelfix.{name}" if name else "modelfix": depth for depth, names in enumerate(LAYERS) for name in names}
    unplaced = sorted(m for m in GRAPH if m not in layer and not m.startswith(TOOLS))
    assert unplaced == [], "give each new module a layer here and in docs/architecture.md"
    upward = {
        m: sorted(i for i in imports if i in layer and layer[i] > layer[m])
        for m, imports in GRAPH.items()
        if m in layer
    }
    assert {m: found for m, found in upward.items() if found} == {}


def test_the_test_helpers_import_nothing_of_the_core():
    tools = {
        m: sorted(i for i in imports if not i.startswith(TOOLS)) for m, imports in GRAPH.items() if m.startswith(TOOLS)
    }
    assert {m: found for m, found in tools.items() if found} == {}


def test_the_notebook_front_end_cycles_with_nothing():
    graph = _graph(ROOT, JUPYTER)
    assert _cycles(graph) == []
    assert all("modelfix_jupyter" not in imports for m, imports in graph.items() if m not in FRONT_ENDS)


def test_the_lazy_names_their_typing_and_all_agree():
    """``import modelfix`` stays cheap (names load on first use), yet type checkers see every name."""
    tree = ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8"))
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.dump(statement)
                for alias in statement.names:
                    typed[alias.asname or alias.name] = f"modelfix.{statement.module}"
    assert typed == modelfix._LAZY
    eager = {
        a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "errors" for a in n.names
    }
    assert sorted(modelfix.__all__) == sorted(set(modelfix._LAZY) | eager)
    assert len(modelfix.__all__) == len(set(modelfix.__all__))
    for name in modelfix.__all__:
        assert getattr(modelfix, name) is not None, name


@pytest.mark.parametrize("name", sorted(modelfix.errors.__all__))
def test_every_error_is_exported_from_modelfix_except_the_internal_ones(name):
    value = getattr(modelfix.errors, name)
    if not isinstance(value, type):
        return  # redact
    if name == "NoRoom":  # internal: the store and the pool turn it into their own errors
        assert name not in modelfix.__all__
    else:
        assert name in modelfix.__all__ and getattr(modelfix, name) is value
        assert f"{name} " in modelfix.errors.__doc__, "draw it in the tree of modelfix.errors"


def test_every_exception_class_lives_in_errors():
    """One home: an exception class defined elsewhere is a signal that never leaves its module."""
    allowed = {("modelfix.retry", "Transient"), ("modelfix.fetch", "_NoRanges")}
    found = set()
    for module in GRAPH:
        if module.startswith(TOOLS):
            continue
        path = ROOT.parent / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT.parent / module.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception", "Missing")) for b in node.bases
            ):
                found.add((module, node.name))
    assert {(m, c) for m, c in found if m != "modelfix.errors"} <= allowed


def test_import_modelfix_loads_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, modelfix; "
        "print(sorted(m for m in ('llama_cpp', 'huggingface_hub', 'fsspec', 'pluggy', 'tomlkit') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_module_imports_in_a_fresh_process():
    """Also the modules no test happens to import (a front end's helper, a tool)."""
    import subprocess
    import sys

    names = sorted(m for m in GRAPH if not m.startswith(TOOLS) and m != "modelfix.__main__")
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert importlib.import_module("modelfix.project").Project is modelfix.Project


def test_the_layers_here_are_the_layers_of_the_architecture_page():
    import re

    page = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d)\. [^|]+\| ([^|]+) \|", page, re.MULTILINE)
    documented = {int(depth): set(re.findall(r"`([\w.*]+)`", names)) for depth, names in rows}
    expected = {
        depth: {
            "modelfix"
            if not name
            else "_pytest_*"
            if name.startswith("_pytest_")
            else "cli.*"
            if "." in name and name.startswith("cli")
            else name
            for name in names
            if name != "__main__"
        }
        | ({"modelfix_jupyter"} if depth == len(LAYERS) - 1 else set())
        for depth, names in enumerate(LAYERS)
    }
    assert documented == expected
