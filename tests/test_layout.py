# The layout rules of the code, checked on the source with `ast` (every import statement counts: at module level,
# inside a function, under `if TYPE_CHECKING:`):
# - No import cycle anywhere in edge/ or workers/, followed transitively between the repository's own modules.
# - Pure modules do no I/O: neither they nor anything they import (transitively) imports trio, socket, ssl,
#   multiprocessing or watchfiles, and they open no files themselves.
# - The workers import from `edge` only the contracts between the processes (the table schema, the shm segments,
#   the control messages, errors) and the flags table; `edge` imports only pure modules of `workers`.
# - Connection handlers (workers/http/, workers/l4/, workers/tls/) never import the process shell (workers/main.py)
#   or the dispatcher (workers/listeners.py): they get a WorkerContext (workers/context.py).
# - No module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES lines (the README says why a size
#   is what it is; exceptions are listed here with their reason).
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "workers")
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS: dict[str, str] = {}  # "module:function" → why it may be longer

PURE_MODULES = [
    "edge/istio.py",
    "edge/table.py",
    "edge/wire.py",
    "edge/flags.py",
    "edge/explain.py",
    "edge/explain_authz.py",
    "workers/router.py",
    "workers/balance.py",
    "workers/headers.py",
    "workers/proxy_protocol.py",
    "workers/log_format.py",
    "workers/regex.py",
    "workers/jwt.py",
    "workers/authz.py",
    "workers/paths.py",
    "workers/overload.py",
    "workers/route_policies.py",
    "workers/http2/client_rules.py",
    "workers/http/framing.py",
    "workers/http/codec.py",
    "workers/http/codec_h11.py",
    "workers/http/codec_fast.py",
    "workers/http/engines.py",
    "workers/http/request.py",
    "workers/http/replies.py",
    "workers/http/retry.py",
    "workers/http2/limits.py",
    "workers/http2/request.py",
    "workers/tls/sni.py",
    "workers/tls/certs.py",
    "workers/tls/xfcc.py",
] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "edge" / "compiler").glob("*.py"))
IO_PACKAGES = {"trio", "socket", "ssl", "multiprocessing", "watchfiles"}
WORKER_ALLOWED_FROM_EDGE = {
    "edge.table",  # the table schema the workers read
    "edge.shm",  # the table segment
    "edge.errors",
    "edge.control",  # the supervisor ↔ worker messages: a contract between processes, like shm
    "edge.stats_shm",  # the stats segment DESIGN.md describes beside the table segment; workers write their slots
    "edge.flags",  # the flags table: the worker's own argv parser is derived from it (pure)
}
HANDLER_PACKAGES = ("workers.http", "workers.http2", "workers.l4", "workers.tls")
SHELL_MODULES = {"workers.main", "workers.listeners"}


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """Every module an import statement names, with its line: `import a.b` → a.b; `from a import b` → a.b
    (b may be a module) and a."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def repository_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py")) if ".venv" not in p.parts}


MODULES = repository_modules()


def own_imports(path: pathlib.Path) -> set[str]:
    """The repository modules `path` imports (a name that is an attribute of a module counts as that module)."""
    found = set()
    for _, name in imported_modules(path):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


GRAPH = {name: own_imports(path) - {name} for name, path in MODULES.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def closure(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle_anywhere():
    assert import_cycles(GRAPH) == []


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io_even_through_what_they_import(module):
    name = module_name(ROOT / module)
    bad = []
    for each in [name, *sorted(closure(name))]:
        bad += [(each, line, imported) for line, imported in imported_modules(MODULES[each]) if imported.split(".")[0] in IO_PACKAGES]
    assert bad == [], f"{module} reaches I/O modules: {bad}"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_open_no_files(module):
    tree = ast.parse((ROOT / module).read_text())
    calls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"]
    assert calls == [], f"{module} opens files at lines {calls}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("workers.")))
def test_workers_import_from_edge_only_the_contracts(module):
    bad = [(line, name) for line, name in imported_modules(MODULES[module]) if name.startswith("edge.") and ".".join(name.split(".")[:2]) not in WORKER_ALLOWED_FROM_EDGE]
    assert bad == [], f"{module} imports from edge beyond {sorted(WORKER_ALLOWED_FROM_EDGE)}: {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("edge.")))
def test_edge_imports_only_pure_modules_of_workers(module):
    pure = {module_name(ROOT / p) for p in PURE_MODULES}
    bad = sorted(m for m in GRAPH[module] if m.startswith("workers.") and m not in pure)
    assert bad == [], f"{module} imports workers modules that are not pure: {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(HANDLER_PACKAGES)))
def test_handlers_do_not_import_the_worker_shell(module):
    bad = sorted((closure(module) | {module}) & SHELL_MODULES)
    assert bad == [], f"{module} reaches {bad}: handlers get a WorkerContext instead"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (at most {MAX_MODULE_LINES}): split it where its rules split"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_size(module):
    tree = ast.parse(MODULES[module].read_text())
    long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and f"{module}:{node.name}" not in LONG_FUNCTIONS:
                long.append((node.name, length))
    assert long == [], f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"


# ---------------------------------------------------------------------------------------------------------
# The checker itself


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import trio.lowlevel\n    from socket import socket\n    from edge import compiler\n")
    assert imported_modules(sample) == [(2, "trio.lowlevel"), (3, "socket"), (3, "socket.socket"), (4, "edge"), (4, "edge.compiler")]


def test_the_checker_sees_type_checking_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from workers.main import Worker\n")
    assert (3, "workers.main") in imported_modules(sample)


@pytest.mark.parametrize(
    "graph, cycles",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_the_cycle_finder(graph, cycles):
    assert sorted(import_cycles(graph)) == cycles
