"""The layout's rules (docs/architecture.md), read from the source: data walks one way, the HTTP
edge is the top floor, and nothing below it knows HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "boostream"
# The edges: the HTTP server (with the dashboard's page and assets, which it serves) and MCP.
HTTP_EDGE = ("boostream.streaming_server", "boostream.dashboard")
EDGES = (*HTTP_EDGE, "boostream.mcp_server")
CLIENTS = ("boostream.cli", "boostream.client", "boostream.sklearn", "boostream.__main__")
HTTP_LIBRARIES = ("starlette", "sse_starlette", "uvicorn")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function (a lazy import is an import)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from package import module`
    return found


MODULES = {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def own_imports(module: str) -> set[str]:
    """The boostream modules `module` imports (a name imported from a module counts as the module)."""
    return {name for name in MODULES[module] if name in MODULES and name != module}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for imported in own_imports(todo.pop()):
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def test_no_module_imports_another_that_imports_it_back():
    cycles = sorted(
        f"{module} -> {imported}"
        for module in MODULES
        for imported in own_imports(module)
        if module in reachable(imported)
    )
    assert not cycles, cycles


@pytest.mark.parametrize("module", [m for m in MODULES if not within(m, EDGES + CLIENTS)])
def test_below_the_edges_nothing_knows_http_or_imports_an_edge(module):
    known = sorted(name for name in MODULES[module] if within(name, HTTP_LIBRARIES + EDGES + CLIENTS))
    assert not known, f"{module} imports {known}"


def test_mcp_knows_no_http_framework():
    known = sorted(name for name in MODULES["boostream.mcp_server"] if within(name, HTTP_LIBRARIES + HTTP_EDGE))
    assert not known, known


def test_the_cli_takes_only_the_app_factory_and_how_to_serve_it_from_the_server():
    from_server = {name for name in MODULES["boostream.cli"] if within(name, ("boostream.streaming_server",))}
    app = "boostream.streaming_server.app"
    assert from_server <= {app, f"{app}.create_app", f"{app}.uvicorn_options"}, from_server


def test_http_statuses_are_only_at_the_http_edge():
    """No module below the edge raises with, or compares against, an HTTP status number."""
    statuses = set(range(400, 600))
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if within(module, HTTP_EDGE + CLIENTS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                numbers = [n.value for n in ast.walk(node.exc) if isinstance(n, ast.Constant) and type(n.value) is int]
                found += [f"{module}:{node.lineno} raises with {number}" for number in numbers if number in statuses]
    assert not found, found
