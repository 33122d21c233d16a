"""The import graph of the ``vmiseq`` package (with ``kernels/``, installed as ``vmiseq.kernels``)
has no cycle, counting imports inside functions too (a lazy import hides a cycle from the
interpreter, not from a reader), and its floors point down: kernels <- ops <- layers <- models.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` statement anywhere in a module, relative imports resolved, ``from pkg
import name`` counted as an import of the submodule ``pkg.name`` when that is a module of
the tree and of ``pkg`` otherwise. A module's implicit import of its parent packages is not
an edge (a package's ``__init__`` re-exporting its submodules is the normal layout).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (folder, the dotted name it is installed as): pyproject.toml maps kernels/ to vmiseq.kernels
PACKAGES = ((ROOT / "vmiseq", "vmiseq"), (ROOT / "kernels", "vmiseq.kernels"))
# each floor imports only from the floors before it
FLOORS = ("vmiseq.kernels", "vmiseq.ops", "vmiseq.layers", "vmiseq.models")


def module_files(packages) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every .py below the package folders."""
    found = {}
    for folder, dotted in packages:
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join([dotted, *parts])] = (path, is_package)
    return found


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start at its package
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph(packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of the tree it imports (anywhere in its body)."""
    modules = module_files(packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                pkg = _resolve(name, is_package, node.level, node.module)
                targets = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in modules else pkg for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "vmiseq.ops.scan" in graph and "vmiseq.kernels.triton_scan" in graph  # the whole tree was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_floors_import_only_downwards():
    """kernels imports nothing from ops, ops nothing from layers or models, layers nothing from models."""
    def floor(module: str) -> int | None:
        return next((i for i, f in enumerate(FLOORS) if module == f or module.startswith(f + ".")), None)

    upward = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        if floor(a) is not None and floor(b) is not None and floor(b) > floor(a)
    ]
    assert not upward, "imports from a higher floor:\n" + "\n".join(sorted(upward))


def test_the_checker_sees_lazy_and_relative_cycles(tmp_path):
    """The checks above can fail: a cycle closed by an import inside a function, through a
    relative ``from . import``, and one through a package's ``__init__`` are all found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n    return c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import os\n\ndef g():\n    from ..a import x\n")
    graph = import_graph([(pkg, "pkg")])
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph([(pkg, "pkg")])) is None
    (pkg / "sub" / "__init__.py").write_text("from .c import g\n")
    (pkg / "sub" / "c.py").write_text("from pkg.sub import g\n")  # a module importing its own package
    cycle = find_cycle(import_graph([(pkg, "pkg")]))
    assert cycle[0] == cycle[-1] and sorted(cycle[1:]) == ["pkg.sub", "pkg.sub.c"]


@pytest.mark.parametrize("module,level,target,expected", [
    ("vmiseq.ops.scan", 1, "checks", "vmiseq.ops.checks"),
    ("vmiseq.ops.scan", 2, "kernels", "vmiseq.kernels"),
    ("vmiseq.ops", 1, "scan", "vmiseq.ops.scan"),  # in a package's __init__, "." is the package
    ("vmiseq.ops.scan", 2, None, "vmiseq"),
    ("vmiseq.ops.scan", 0, "torch", "torch"),
])
def test_relative_imports_resolve(module, level, target, expected):
    assert _resolve(module, module == "vmiseq.ops", level, target) == expected
