"""The import graph of ``backend/`` (issue 17): no cycles, and no imports hidden inside
functions (which is how cycles were held together) except the few listed with a reason.

Read from the source with ``ast``, as Python resolves it: ``from a import b`` where
``a.b`` is a module is an edge to ``a.b``; a package's ``__init__`` running before its
submodules is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import backend

ROOT = Path(backend.__file__).resolve().parent

# (module, function, imported module): imports inside a function, each with its reason.
ALLOWED_INNER = {
    # Runs in the child process that parses a workbook under its own limits: openpyxl is
    # imported there, never in the worker or the API.
    ("backend.files.xlsx", "convert", "openpyxl"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    if node.level or node.module is None:
        raise AssertionError(f"relative import {ast.unparse(node)}: use the absolute name")
    out = set()
    for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        if sub in modules:
            out.add(sub)
        elif node.module in modules:
            out.add(node.module)
    return out


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    inner: list[tuple[str, str, str]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _targets(node, modules) - {name}
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inside in ast.walk(node):
                    if isinstance(inside, ast.Import):
                        inner += [(name, node.name, a.name) for a in inside.names]
                    elif isinstance(inside, ast.ImportFrom):
                        inner.append((name, node.name, str(inside.module)))
    return graph, inner


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_backend_has_no_import_cycle() -> None:
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_no_import_hides_inside_a_function() -> None:
    _, inner = _graph()
    unexplained = [
        entry
        for entry in inner
        if not any(
            entry[:2] == allowed[:2] and entry[2].startswith(allowed[2])
            for allowed in ALLOWED_INNER
        )
    ]
    assert unexplained == []


def test_the_checker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_and_the_tasks_do_not_import_fastapi() -> None:
    """DESIGN.md: the runtime and the task bodies run in workers, which have no HTTP; the
    schemas are plain pydantic, so bodies build their answers with them."""
    for name, path in _modules().items():
        if not name.startswith(
            ("backend.runtime", "backend.tasks", "backend.db", "backend.files", "backend.schemas")
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported = [str(node.module)]
            else:
                continue
            web = [m for m in imported if m.split(".")[0] in ("fastapi", "starlette")]
            assert not web, f"{name} imports {web}"


def test_routers_use_only_the_runtimes_front_door() -> None:
    """Routers (and what they share in backend/api) use what ``backend.runtime`` exports,
    never its modules, and never ``backend.db`` (DESIGN.md's dependency rule)."""
    graph, _ = _graph()
    for name, imported in graph.items():
        if name.startswith(("backend.routers", "backend.api")):
            reached = sorted(
                m for m in imported if m.startswith(("backend.runtime.", "backend.db"))
            )
            assert not reached, f"{name} imports {reached}"
