# The dependency rules of DESIGN.md ("Layout"), checked on the source with `ast`:
# - pure modules import no trio, socket, multiprocessing or watchfiles (not even inside a function);
# - the workers package imports from `edge` only the table schema, the shm reader and errors.
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PURE_MODULES = [
    "edge/compiler.py",
    "edge/istio.py",
    "edge/table.py",
    "edge/loader.py",
    "workers/router.py",
    "workers/balance.py",
    "workers/headers.py",
    "workers/sni.py",
    "workers/proxy_protocol.py",
    "workers/log_format.py",
    "workers/regex.py",
    "workers/http1_framing.py",
    "workers/paths.py",
    "workers/overload.py",
    "workers/xfcc.py",
    "edge/wire.py",
]
IO_PACKAGES = {"trio", "socket", "multiprocessing", "watchfiles"}
WORKER_ALLOWED_FROM_EDGE = {"edge.table", "edge.shm", "edge.errors"}
# edge/control.py is the supervisor ↔ worker message format: a contract between processes like shm, which
# DESIGN.md does not list yet. Allowed explicitly so that any other edge import still fails.
WORKER_ALLOWED_FROM_EDGE |= {"edge.control"}
# edge/stats_shm.py is the stats segment DESIGN.md describes beside the table segment ("Shared memory"): the
# workers write their slots of it.
WORKER_ALLOWED_FROM_EDGE |= {"edge.stats_shm"}


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


def existing(paths: list[str]) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


@pytest.mark.parametrize("module", existing(PURE_MODULES))
def test_pure_modules_do_no_io(module):
    bad = [(line, name) for line, name in imported_modules(ROOT / module) if name.split(".")[0] in IO_PACKAGES]
    assert bad == [], f"{module} imports I/O modules: {bad}"


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "workers").glob("*.py")))
def test_workers_import_from_edge_only_table_shm_errors(module):
    bad = []
    for line, name in imported_modules(ROOT / module):
        parts = name.split(".")
        if parts[0] != "edge" or len(parts) == 1:
            continue
        if ".".join(parts[:2]) not in WORKER_ALLOWED_FROM_EDGE:
            bad.append((line, name))
    assert bad == [], f"{module} imports from edge beyond table/shm/errors: {bad}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    import trio.lowlevel\n    from socket import socket\n    from edge import compiler\n")
    assert imported_modules(sample) == [(2, "trio.lowlevel"), (3, "socket"), (3, "socket.socket"), (4, "edge"), (4, "edge.compiler")]
