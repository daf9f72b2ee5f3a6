"""End-to-end harness: the real `edge run` process and real sample backends, on loopback.

    with SampleBackends(tmp_path, http=["reviews-v1", "reviews-v2"]) as backends, \\
         EdgeProcess(tmp_path, {"gw.yaml": GATEWAY, "se.yaml": backends.service_entry("reviews.local")}) as edge:
        status, body = http_get(edge.port(80), "/", host="reviews.local")
        edge.write_config("vs.yaml", NEW_ROUTES)
        edge.reload()                     # SIGHUP, returns the supervisor's "reload #N: …" outcome line

Rules:
- Every wait is bounded (START_TIMEOUT_S, STOP_TIMEOUT_S, …) and says what it waited for and shows the log.
- Processes are started in their own session, so `edge run` and its workers form one process group whose id
  is the supervisor's pid. stop() sends SIGTERM to the supervisor by pid, waits, then SIGKILLs that process
  group: nothing a test started outlives it, and nothing else is touched. It runs in __exit__ (finally).
- Ports: every Gateway port is mapped (--port-map) to a free loopback port picked here, as are the status,
  admin and metrics ports. A port picked free can be taken by another process before edge binds it; the
  start then fails loudly with the bind error in the log.
- Waits come in two forms: plain (block the calling thread; fine before load starts) and `a…` coroutines that
  poll with trio.sleep, for use while a test's own trio tasks are driving traffic.
- The supervisor's stderr goes to <workdir>/edge.log, stdout (access logs) to <workdir>/edge.out.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self

import trio

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
KILL_TIMEOUT_S = 5.0
RELOAD_TIMEOUT_S = 10.0
POLL_S = 0.02
HTTP_TIMEOUT_S = 5.0
DEFAULT_GATEWAY_PORTS = (80, 443)
DEFAULT_WORKERS = 2

_RELOAD_START = re.compile(r"^edge: reload #(\d+) \((.*)\)$", re.MULTILINE)
_PUBLISHED = re.compile(r"generation (\d+) published")
_UNCHANGED = re.compile(r"configuration unchanged; generation (\d+) stays")
_SERVED = re.compile(r"^edge: (?:generation (\d+) is served by every worker|ready: \d+ worker\(s\) serve generation (\d+))$", re.MULTILINE)


# Ports are picked below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default):
# a port the kernel handed out for bind(0) can be handed out again at once as the local port of any outgoing
# connection (our own clients and backends included) before edge binds it.
PICK_PORTS_FROM, PICK_PORTS_TO = 20000, 32767


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports that were free a moment ago (all held open together while picking), outside the
    ephemeral range when the machine leaves room for that."""
    import random

    low, high = _ephemeral_range()
    candidates = [p for p in range(PICK_PORTS_FROM, PICK_PORTS_TO + 1) if not low <= p <= high]
    random.shuffle(candidates)
    held: list[socket.socket] = []
    try:
        for port in candidates:
            if len(held) == count:
                break
            sock = socket.socket()
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        while len(held) < count:  # no room outside the ephemeral range: let the kernel choose
            sock = socket.socket()
            sock.bind((host, 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def recv_until_eof(sock: socket.socket) -> bytes:
    """Everything a peer sends until it closes its side."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def http_get(port: int, path: str = "/", *, host: str = "localhost", headers: Mapping[str, str] | None = None,
             method: str = "GET", body: bytes | None = None, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, bytes, dict[str, str]]:
    """One request on a fresh connection: (status, body, lowercase headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def _process_group_alive(pgid: int) -> bool:
    """Does any process of this group still run? Zombies do not count: their parent (init, once edge is
    gone) reaps them, and in a container without a reaping init nobody ever does."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            return True
    return False


def _stop_process_group(process: subprocess.Popen, *, term_timeout_s: float) -> int | None:
    """SIGTERM the leader by pid, wait; then SIGKILL its process group (ours: start_new_session) and reap."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(term_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(KILL_TIMEOUT_S)
    pgid = process.pid
    if _process_group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while _process_group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    return process.returncode


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return children
    for tid in tasks:
        try:
            children += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return sorted(set(children))


class EdgeProcess:
    """`python -m edge run` on a config directory written from `config` ({file name: text}).

    program replaces `python -m edge` (tests of the supervisor alone run it with stub workers).
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, str],
        *,
        workers: int = DEFAULT_WORKERS,
        gateway_ports: Iterable[int] = DEFAULT_GATEWAY_PORTS,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        wait_ready: bool = True,
        start_timeout_s: float = START_TIMEOUT_S,
        program: Sequence[str] = (PYTHON, "-m", "edge"),
    ):
        self.workdir = Path(workdir)
        self.program = tuple(program)
        self.config_dir = self.workdir / "conf"
        self.initial_config = dict(config)
        self.workers = workers
        self.gateway_ports = tuple(gateway_ports)
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.wait_ready_on_start = wait_ready
        self.start_timeout_s = start_timeout_s
        ports = free_ports(len(self.gateway_ports) + 3)
        self.port_map = dict(zip(self.gateway_ports, ports))
        self.status_port, self.admin_port, self.metrics_port = ports[len(self.gateway_ports) :]
        self.log_path = self.workdir / "edge.log"
        self._edited_at: int | None = None  # log offset at the first config edit since the last reload() returned
        self.out_path = self.workdir / "edge.out"
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self._out_file = None

    # ------------------------------------------------------------------------------------ lifecycle

    @property
    def command(self) -> list[str]:
        port_map = ",".join(f"{g}={b}" for g, b in self.port_map.items())
        return [
            *self.program, "run",
            "--config", str(self.config_dir),
            "--workers", str(self.workers),
            "--port-map", port_map,
            "--status-port", str(self.status_port),
            "--admin-port", str(self.admin_port),
            "--metrics-port", str(self.metrics_port),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> EdgeProcess:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for name, text in self.initial_config.items():
            self.write_config(name, text)
        # Open for the life of the process, closed by stop().
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115
        self._out_file = open(self.out_path, "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._out_file,
            stderr=self._log_file,
            env=env,
            start_new_session=True,
        )
        if self.wait_ready_on_start:
            self.wait_ready(self.start_timeout_s)
        return self

    def stop(self, *, term_timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful drain), bounded wait, then SIGKILL for the whole process group. Idempotent."""
        if self.process is None:
            return None
        try:
            return _stop_process_group(self.process, term_timeout_s=term_timeout_s)
        finally:
            for f in (self._log_file, self._out_file):
                if f is not None and not f.closed:
                    f.close()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop(term_timeout_s=KILL_TIMEOUT_S)
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """The exit code, waiting at most timeout_s (TimeoutError with the log otherwise)."""
        assert self.process is not None
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"edge (pid {self.pid}) still running after {timeout_s} s\n{self.log_tail()}") from None

    async def await_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        with trio.fail_after(timeout_s):
            while self.returncode is None:
                await trio.sleep(POLL_S)
        return self.returncode

    def worker_pids(self) -> list[int]:
        return child_pids(self.pid)

    # -------------------------------------------------------------------------------------- ports

    def port(self, gateway_port: int) -> int:
        """The loopback port that serves a Gateway port."""
        return self.port_map[gateway_port]

    def ready_status(self) -> int | None:
        """The status port's answer to /healthz/ready, None when nothing answers."""
        try:
            status, _, _ = http_get(self.status_port, "/healthz/ready", timeout_s=1.0)
        except OSError:
            return None
        return status

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise RuntimeError(f"edge exited with {self.returncode} before it was ready\n{self.log_tail()}")
            if self.ready_status() == 200:
                return
            time.sleep(POLL_S * 5)
        raise TimeoutError(f"edge not ready after {timeout_s} s\n{self.log_tail()}")

    # --------------------------------------------------------------------------------------- logs

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "--- edge log (tail) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def _find(self, pattern: re.Pattern[str] | str, after: int) -> re.Match[str] | None:
        return re.compile(pattern, re.MULTILINE).search(self.log_text(), after)

    def wait_for_log(self, pattern: re.Pattern[str] | str, *, after: int = 0, timeout_s: float = RELOAD_TIMEOUT_S) -> re.Match[str]:
        """The first match of pattern in the log at or after character offset `after`."""
        deadline = time.monotonic() + timeout_s
        while True:
            match = self._find(pattern, after)
            if match:
                return match
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no log line matching {pattern!r} after {timeout_s} s\n{self.log_tail()}")
            time.sleep(POLL_S)

    async def await_log(self, pattern: re.Pattern[str] | str, *, after: int = 0, timeout_s: float = RELOAD_TIMEOUT_S) -> re.Match[str]:
        with trio.fail_after(timeout_s):
            while True:
                match = self._find(pattern, after)
                if match:
                    return match
                await trio.sleep(POLL_S)

    # ------------------------------------------------------------------------------------- config

    def _note_edit(self) -> None:
        if self._edited_at is None and self.log_path.exists():
            self._edited_at = len(self.log_text())

    def write_config(self, name: str, text: str) -> Path:
        self._note_edit()
        """Replace one config file atomically (write a hidden temp file, rename), as a careful editor does."""
        path = self.config_dir / name
        tmp = self.config_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def remove_config(self, name: str) -> None:
        self._note_edit()
        (self.config_dir / name).unlink()

    def _reload_progress(self, after: int, edited_at: int | None = None) -> str | None:
        """The outcome of the first SIGHUP reload logged after offset `after`, once it is complete: for a
        published generation, once every worker serves it (or a later one). None while not there yet.
        `edited_at`: where the log stood when the config was first edited since the last reload() (the file watch
        may have published that edit before the signal was even sent)."""
        log = self.log_text()
        for start in _RELOAD_START.finditer(log, after):
            if "SIGHUP" in start.group(2).split(", "):
                break
        else:
            return None
        outcome = re.compile(rf"^edge: reload #{start.group(1)}: (.*)$", re.MULTILINE).search(log, start.end())
        if outcome is None:
            return None
        unchanged = _UNCHANGED.fullmatch(outcome.group(1))
        if unchanged is not None:
            # The file watch may have picked up the same edit first (a reload already running when the file
            # was replaced reads the new text); then that reload's publication is this signal's outcome.
            earlier = re.compile(rf"^edge: reload #\d+: (generation {unchanged.group(1)} published.*)$", re.MULTILINE)
            since = min(after, edited_at) if edited_at is not None else after
            overtaken = earlier.search(log, since, outcome.start())
            if overtaken is None:
                return outcome.group(1)
            outcome = overtaken
            after = min(after, overtaken.start())
        published = _PUBLISHED.search(outcome.group(1))
        if published is None:
            return outcome.group(1)
        served = [int(a or b) for a, b in _SERVED.findall(log, after)]
        if served and max(served) >= int(published.group(1)):
            return outcome.group(1)
        return None

    def reload(self, *, timeout_s: float = RELOAD_TIMEOUT_S) -> str:
        """SIGHUP; the supervisor's outcome line ("generation 3 published …", "configuration unchanged …",
        "failed; …"), returned once a published generation is served by every worker."""
        after = len(self.log_text())
        edited_at, self._edited_at = self._edited_at, None
        self.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while (outcome := self._reload_progress(after, edited_at)) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"SIGHUP reload not complete after {timeout_s} s\n{self.log_tail()}")
            time.sleep(POLL_S)
        return outcome

    async def areload(self, *, timeout_s: float = RELOAD_TIMEOUT_S) -> str:
        """reload() for use inside trio tasks."""
        after = len(self.log_text())
        edited_at, self._edited_at = self._edited_at, None
        self.send_signal(signal.SIGHUP)
        with trio.fail_after(timeout_s):
            while (outcome := self._reload_progress(after, edited_at)) is None:
                await trio.sleep(POLL_S)
        return outcome


class SampleBackends:
    """`python -m edge.dev.sample_backend` with named listeners on loopback ports chosen by the kernel.

    http / https / tcp: instance names for --listen / --listen-tls / --tcp-echo.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        http: Sequence[str] = (),
        https: Sequence[str] = (),
        tcp: Sequence[str] = (),
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ):
        if not (http or https or tcp):
            raise ValueError("SampleBackends needs at least one listener")
        self.workdir = Path(workdir)
        self.ready_file = self.workdir / f"backends-{os.getpid()}-{id(self)}.ready.json"
        self.log_path = self.workdir / f"backends-{id(self)}.log"
        self.args: list[str] = []
        for flag, names in (("--listen", http), ("--listen-tls", https), ("--tcp-echo", tcp)):
            for name in names:
                self.args += [flag, f"127.0.0.1:0={name}"]
        if https:
            self.args += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.listeners: dict[str, dict] = {}
        self._log_file = None

    def __enter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "edge.dev.sample_backend", *self.args, "--ready-file", str(self.ready_file)],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._log_file,
                start_new_session=True,
            )
            deadline = time.monotonic() + self.start_timeout_s
            while not self.ready_file.exists():
                if self.process.poll() is not None:
                    raise RuntimeError(f"sample backends exited with {self.process.returncode}\n{self.log_path.read_text()}")
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"sample backends not ready after {self.start_timeout_s} s")
                time.sleep(POLL_S)
            document = json.loads(self.ready_file.read_text())
            self.listeners = {entry["name"]: entry for entry in document["listeners"]}
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        try:
            if self.process is not None:
                _stop_process_group(self.process, term_timeout_s=STOP_TIMEOUT_S)
        finally:
            if self._log_file is not None and not self._log_file.closed:
                self._log_file.close()

    def port(self, name: str) -> int:
        return self.listeners[name]["port"]

    def stats(self, name: str) -> dict:
        status, body, _ = http_get(self.port(name), "/__stats")
        assert status == 200, body
        return json.loads(body)

    def reset(self, name: str) -> dict:
        status, body, _ = http_get(self.port(name), "/__reset")
        assert status == 200, body
        return json.loads(body)

    def service_entry(self, host: str, names: Sequence[str] | None = None, *, port: int = 80, protocol: str = "HTTP",
                      resource_name: str | None = None) -> str:
        """A STATIC ServiceEntry whose endpoints are these backends (each labelled version=<name>)."""
        names = list(names if names is not None else self.listeners)
        endpoints = "".join(
            f"  - address: 127.0.0.1\n    ports:\n      {protocol.lower()}: {self.port(n)}\n    labels:\n      version: {n}\n"
            for n in names
        )
        return (
            "apiVersion: networking.istio.io/v1\n"
            "kind: ServiceEntry\n"
            f"metadata:\n  name: {resource_name or re.sub(r'[^a-z0-9-]', '-', host.lower())}\n"
            "spec:\n"
            f"  hosts:\n  - {host}\n"
            "  resolution: STATIC\n"
            f"  ports:\n  - number: {port}\n    name: {protocol.lower()}\n    protocol: {protocol}\n"
            f"  endpoints:\n{endpoints}"
        )
