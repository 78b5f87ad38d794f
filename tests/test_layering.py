"""The package's layers, checked on its source: who may import whom.

- the leaves (``config``, ``errors``, ``display``) import nothing of bndl_like;
- ``rmi`` imports only the leaves (it knows nothing of execution);
- ``execute/core`` (the Scheduler) imports nothing of bndl_like outside itself;
- ``execute/driver`` and ``execute/worker`` never import each other, not even through a module
  in between (both use ``execute/messages.py``, the wire between them, and the shared task model);
- no cycle among the modules' top-level imports, and no import inside a function that would
  close one (an import inside a function is for laziness, never to dodge a cycle).

Read from the syntax trees (``ast``), no import executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bndl_like"
LEAVES = ("bndl_like.config", "bndl_like.errors", "bndl_like.display")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The bndl_like modules an import statement in ``module`` names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "bndl_like"]
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "bndl_like":
        return []
    found = []
    for alias in node.names:  # `from package import module` names a module
        candidate = f"{target}.{alias.name}"
        found.append(candidate if candidate in MODULES else target)
    return found


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(top-level imports, imports inside functions) of ``module``, as module names. An import
    under ``if TYPE_CHECKING:`` is for the type checker only and left out."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).update(_resolve(module, child, is_package))
            function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, in_function or function)
    visit(tree, False)
    return top - {module}, inner - {module}


GRAPH = {m: _imports(m) for m in MODULES}


def _reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


TOP = {m: top for m, (top, _) in GRAPH.items()}


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read():
    # a check on the checker: these imports exist today
    assert "bndl_like.execute.messages" in TOP["bndl_like.execute.worker.service"]
    assert "bndl_like.config" in TOP["bndl_like.rmi.node"]
    assert len(MODULES) > 50


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_the_package(leaf):
    top, inner = GRAPH[leaf]
    assert not top | inner, f"{leaf} imports {sorted(top | inner)}"


def test_rmi_imports_only_the_leaves():
    wrong = {m: sorted(i for i in top | inner if not _in(i, "bndl_like.rmi") and i not in LEAVES)
             for m, (top, inner) in GRAPH.items() if _in(m, "bndl_like.rmi")}
    assert not {m: w for m, w in wrong.items() if w}


def test_the_scheduler_core_imports_nothing_of_the_package():
    core = [m for m in MODULES if _in(m, "bndl_like.execute.core")]
    if not core:
        pytest.skip("no execute/core package yet")
    wrong = {m: sorted(i for i in GRAPH[m][0] | GRAPH[m][1] if not _in(i, "bndl_like.execute.core"))
             for m in core}
    assert not {m: w for m, w in wrong.items() if w}


@pytest.mark.parametrize("side, other", [("driver", "worker"), ("worker", "driver")])
def test_driver_and_worker_never_import_each_other(side, other):
    mine = [m for m in MODULES if _in(m, f"bndl_like.execute.{side}")]
    assert mine
    # what importing it imports, and what its functions import (a module they import lazily may
    # import anything: e.g. the fork server imports the worker's code in its own process)
    wrong = {m: sorted(r for r in _reachable(m, TOP) | GRAPH[m][1] if _in(r, f"bndl_like.execute.{other}"))
             for m in mine}
    assert not {m: w for m, w in wrong.items() if w}


def _cycle_through(start: str, edges: dict[str, set[str]]) -> bool:
    return start in _reachable(start, edges)


def test_no_import_cycle():
    cyclic = sorted(m for m in MODULES if _cycle_through(m, TOP))
    assert not cyclic


def test_no_import_inside_a_function_dodges_a_cycle():
    dodges = []
    for module, (_, inner) in GRAPH.items():
        for target in inner:
            # as a top-level import, would it close a cycle back to this module?
            if module in _reachable(target, TOP) or target == module:
                dodges.append((module, target))
    assert not dodges, f"imports inside functions that would be cycles at the top: {sorted(dodges)}"
