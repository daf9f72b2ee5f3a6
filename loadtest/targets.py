# Starting and stopping the processes of one benchmark run: the nginx backend, the reference proxies
# (nginx, proxy.py) and edge.
#
# Rules:
# - every process is a direct child started with Popen, in its own session (a Ctrl-C reaches only the
#   runner, which then stops everything in order) and with PR_SET_PDEATHSIG=SIGTERM, so a runner that
#   is killed outright still takes its nginx masters, proxy.py and edge supervisors with it;
# - output goes to <name>.log in the run's temp dir; a start failure quotes its tail;
# - a process is stopped by PID: its tree is recorded, the root gets SIGTERM, and whatever of that tree
#   (same pid AND same start time) is still alive after STOP_TIMEOUT_S gets SIGKILL;
# - every wait is bounded: READY_TIMEOUT_S to come up, PROBE_TIMEOUT_S per HTTP probe.
from __future__ import annotations

import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtest import confgen, procstat
from loadtest.mix import MixEntry

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 15
INSTALL_TIMEOUT_S = 600

LOADTEST_DIR = Path(__file__).resolve().parent
REFVENV = LOADTEST_DIR / ".refvenv"
REFS_DIR = LOADTEST_DIR / "refs"
PROXYPY_VERSION = "2.4.10"  # the plugin in refs/ uses proxy.py internals checked against this version
PROXYPY_PLUGIN = "proxypy_plugin.BackendReverseProxy"

_PR_SET_PDEATHSIG = 1


class StartFailed(Exception):
    """A target could not be started or does not answer correctly; the message says why."""


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    # every (pid -> start time) ever seen in this tree, so that stop() also finds children orphaned
    # by a crashed root
    known: dict[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        tree = procstat.process_tree(self.popen.pid) if self.alive() else []
        for pid in tree:
            stat = procstat.read_stat(pid)
            if stat is not None:
                self.known.setdefault(pid, stat.starttime)
        return tree

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def spawn(name: str, argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> Proc:
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 -- the runner has no threads
        )
    proc = Proc(name, popen, log_path)
    proc.pids()
    return proc


def _still_running(pid: int, starttime: int) -> bool:
    """The same process (pid and start time) exists and is not a zombie."""
    try:
        text = (procstat.PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    stat = procstat.parse_stat(text)
    state = text.rpartition(")")[2].split()[0]
    return stat.starttime == starttime and state not in ("Z", "X")


def stop(proc: Proc) -> None:
    """SIGTERM the root, give its tree STOP_TIMEOUT_S to exit, SIGKILL what is left; reaps the root."""
    proc.pids()
    if proc.alive():
        try:
            proc.popen.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(
        _still_running(pid, start) for pid, start in proc.known.items() if pid != proc.pid
    ):
        time.sleep(POLL_INTERVAL_S)
    for pid, start in proc.known.items():
        if _still_running(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.popen.poll() is None:
        proc.popen.kill()
    proc.popen.wait(timeout=STOP_TIMEOUT_S)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, entry: MixEntry, path: str | None = None) -> int | str:
    """Status of one request, or a short error text; never raises for network trouble."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        body = b"x" * entry.body_bytes if entry.body_bytes else None
        headers = {"Host": entry.host}
        if body:
            headers["Content-Type"] = "application/octet-stream"
        conn.request(entry.method, path or entry.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def wait_ready(proc: Proc, is_ready: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartFailed(
                f"{what} exited with code {proc.popen.returncode} while starting; log tail:\n{proc.log_tail()}"
            )
        if is_ready():
            return
        time.sleep(POLL_INTERVAL_S)
    raise StartFailed(f"{what} not ready after {timeout:.0f} s; log tail:\n{proc.log_tail()}")


def probe(port: int, entries: tuple[MixEntry, ...]) -> list[str]:
    """Every request of the mix must answer 2xx; returns the failures."""
    failures = []
    for entry in entries:
        status = http_status(port, entry)
        if not (isinstance(status, int) and 200 <= status < 300):
            failures.append(f"{entry.method} {entry.host}{entry.path} -> {status}")
    return failures


@dataclass
class Target:
    name: str
    kind: str  # backend | nginx | proxy.py | edge
    port: int  # where the load goes
    proc: Proc  # whose processes are measured
    extra: dict = field(default_factory=dict)  # ports and settings, for the JSON results
    error: str | None = None
    host: str | None = None  # Host header of the plain load (None: the URL's, 127.0.0.1:PORT)


# --- nginx (backend and reference proxy) ---------------------------------------------------------

def _start_nginx(name: str, conf_text: str, tmp: Path, port: int) -> Proc:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp / f"{name}.conf"
    conf.write_text(conf_text)
    (tmp / f"{name}-temp").mkdir(exist_ok=True)
    argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / f"{name}-error.log")]
    proc = spawn(name, argv, tmp)

    def ready() -> bool:
        return http_status(port, MixEntry("GET", "127.0.0.1", "/", 0, 1)) == 200

    try:
        wait_ready(proc, ready, f"nginx ({name})")
    except StartFailed as exc:
        errors = (tmp / f"{name}-error.log")
        detail = errors.read_text(errors="replace")[-2000:] if errors.exists() else ""
        stop(proc)
        raise StartFailed(f"{exc}\n{detail}".rstrip()) from None
    return proc


def start_backend(tmp: Path, workers: int) -> Target:
    port = free_port()
    proc = _start_nginx("backend", confgen.backend_nginx_conf(tmp, port, workers), tmp, port)
    return Target("direct", "backend", port, proc, {"port": port, "workers": workers})


def start_nginx_proxy(tmp: Path, backend_port: int, workers: int) -> Target:
    port = free_port()
    proc = _start_nginx("nginx-proxy", confgen.proxy_nginx_conf(tmp, port, backend_port, workers), tmp, port)
    return Target("nginx-proxy", "nginx", port, proc, {"port": port, "workers": workers})


# --- proxy.py ------------------------------------------------------------------------------------

def proxypy_bin() -> Path:
    return REFVENV / "bin" / "proxy"


def proxypy_installed_version() -> str | None:
    python = REFVENV / "bin" / "python"
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('proxy.py'))"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def install_refs() -> None:
    """Create loadtest/.refvenv with proxy.py pinned; never touches the project venv."""
    if proxypy_installed_version() == PROXYPY_VERSION:
        print(f"refs: proxy.py {PROXYPY_VERSION} already in {REFVENV}")
        return
    print(f"refs: installing proxy.py {PROXYPY_VERSION} into {REFVENV}")
    if not (REFVENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(REFVENV)], check=True, timeout=INSTALL_TIMEOUT_S)
    subprocess.run(
        [str(REFVENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"proxy.py=={PROXYPY_VERSION}"],
        check=True, timeout=INSTALL_TIMEOUT_S,
    )


def start_proxypy(tmp: Path, backend_port: int, acceptors: int) -> Target:
    if not proxypy_bin().exists():
        raise StartFailed(f"proxy.py is not installed in {REFVENV}: run with --install-refs")
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REFS_DIR)
    env["LOADTEST_BACKEND"] = f"127.0.0.1:{backend_port}"
    argv = [
        str(proxypy_bin()),
        "--hostname", "127.0.0.1", "--port", str(port),
        "--num-acceptors", str(acceptors),  # threadless, local executor: each acceptor process serves
        "--enable-reverse-proxy", "--plugins", PROXYPY_PLUGIN,
        "--backlog", "4096",
        "--log-level", "WARNING",
        "--data-dir", str(tmp / "proxypy-data"),
    ]
    proc = spawn("proxy.py", argv, tmp, env)
    try:
        wait_ready(proc, lambda: http_status(port, MixEntry("GET", "127.0.0.1", "/", 0, 1)) == 200, "proxy.py")
    except StartFailed:
        stop(proc)
        raise
    return Target("proxy.py", "proxy.py", port, proc, {"port": port, "acceptors": acceptors,
                                                       "version": proxypy_installed_version()})


# --- edge ----------------------------------------------------------------------------------------

def default_edge_bin() -> Path:
    return Path(sys.executable).parent / "edge"


def start_edge(name: str, tmp: Path, backend_port: int, workers: int, edge_bin: Path, variant: str = "") -> Target:
    """variant (edge-<N>w-<variant>[-<variant>…]): "" = the default codec (auto: httptools when installed), metrics
    on, access log off; "fast" = the httptools codec named explicitly; "h11" = the h11 codec (the reference); "nostats" = metrics and admin ports off, so no statistics are kept;
    "text" / "json" = metrics on and an access log in that format written to a file in the run's temp dir
    (buffered, as in production); "vs<N>" = a config of exactly N VirtualServices with distinct hosts
    (confgen.edge_vhosts_conf_yaml) instead of the mix's routes, loaded with Host: confgen.VHOST_MEASURED."""
    if not edge_bin.exists():
        raise StartFailed(f"no edge executable at {edge_bin} (pip install -e . into the venv)")
    parts = list(filter(None, variant.split("-")))
    vhosts = [int(p[2:]) for p in parts if p.startswith("vs") and p[2:].isdigit()]
    conf_dir = tmp / f"{name}-conf"
    conf_dir.mkdir()
    if vhosts:
        if vhosts[0] < 1:
            raise StartFailed("-vs<N> needs N >= 1")
        conf_text = confgen.edge_vhosts_conf_yaml(backend_port, vhosts[0])
    else:
        conf_text = confgen.edge_conf_yaml(backend_port)
    (conf_dir / "bench.yaml").write_text(conf_text)
    ports = {"gateway": free_port(), "status": free_port(), "metrics": free_port(), "admin": free_port()}
    argv = [
        str(edge_bin), "run",
        "--config", str(conf_dir),
        "--workers", str(workers),
        "--port-map", f"{confgen.GATEWAY_PORT}={ports['gateway']}",
        "--status-port", str(ports["status"]),
        "--metrics-port", str(ports["metrics"]),
        "--admin-port", str(ports["admin"]),
        "--access-log", "off",
    ]
    for part in parts:
        if part.startswith("vs") and part[2:].isdigit():
            continue  # the config, written above
        if part == "nostats":
            argv[argv.index("--metrics-port") + 1] = "0"
            argv[argv.index("--admin-port") + 1] = "0"
        elif part in ("text", "json"):
            argv[argv.index("--access-log") + 1] = str(tmp / f"{name}-access.log")
            argv += ["--access-log-format", part]
        elif part == "fast":
            argv += ["--http-codec", "httptools"]
        elif part == "h11":
            argv += ["--http-codec", "h11"]
        else:
            raise StartFailed(f"unknown edge variant {part!r} (nostats, text, json, fast, h11, vs<N>; joined with -)")
    proc = spawn(name, argv, tmp)

    def ready() -> bool:
        return http_status(ports["status"], MixEntry("GET", "127.0.0.1", "/healthz/ready", 0, 1)) == 200

    try:
        wait_ready(proc, ready, f"edge ({name}: {workers} workers, GET /healthz/ready on status port "
                                f"{ports['status']})")
    except StartFailed:
        stop(proc)
        raise
    extra = {"ports": ports, "workers": workers, "argv": argv}
    if vhosts:
        extra["virtual_services"] = vhosts[0]
    return Target(name, "edge", ports["gateway"], proc, extra,
                  host=confgen.VHOST_MEASURED if vhosts else None)
