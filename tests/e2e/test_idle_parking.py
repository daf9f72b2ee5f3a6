"""Idle keep-alive connections parked without a task (issue 13, item 4; workers/parking.py), end to end.

A worker parks a connection going idle at once when PARK_IDLE_TASKS connections already wait idle in their tasks,
and the idle sweep parks the rest after PARK_AFTER_S; these tests open more than PARK_IDLE_TASKS against one worker,
so both happen. Parking is seen from outside in the worker's epoll sets (/proc/PID/fdinfo): the parker watches
with EPOLLRDHUP, which trio's own set never asks for.

Covered: parked connections resume with a later request and with pipelined requests (both codecs), TLS keep-alive
connections park and resume, the idle timeout closes parked connections, the per-worker connection limit counts
parked connections (the accept loop waits until they close), and drain (SIGTERM) closes parked connections at once
while a request in flight finishes. With the same gateway: TLS 1.3 session resumption with tickets (one worker; a
ticket resumes on the worker that issued it, each worker keeps its own ticket keys). The parker itself, the scaled idle timeout and the sweeps' order are
specified in memory: tests/workers/test_parking.py.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import EdgeProcess
from tests.e2e.fixed_backend import FixedBackend
from tests.security.tools import CODECS, codec_args, static_service
from workers.context import PARK_IDLE_TASKS

pytestmark = pytest.mark.e2e

HOST = "app.example.com"
TIMEOUT_S = 10.0
MANY = PARK_IDLE_TASKS + 72  # one worker: the last 72 are parked as they go idle, the others by the sweep
EPOLLRDHUP = 0x2000


def config(*, tls: bool = False, slow_port: int = 0) -> dict[str, str]:
    servers = "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n"
    if tls:
        servers += ("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n"
                    "    tls: {mode: SIMPLE, credentialName: app-cert}\n")
    return {
        "gw.yaml": f"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n"
                   f"  selector: {{istio: ingressgateway}}\n  servers:\n{servers}",
        "vs.yaml": f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app}}
spec:
  hosts: ["{HOST}"]
  gateways: [gw]
  http:
  - match: [{{uri: {{prefix: /slow}}}}]
    route: [{{destination: {{host: slow.local}}}}]
  - directResponse: {{status: 200, body: {{string: ok}}}}
""",
        "se.yaml": static_service("slow.local", slow_port or 9),
    }


def request(path: str = "/") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def read_responses(sock, count: int) -> bytes:
    """Read until `count` complete responses (each a 2-byte body: ok) or EOF."""
    data = b""
    while data.count(b"HTTP/1.1 200") < count or not data.endswith(b"ok"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def open_idle(port: int, count: int, wrap=None) -> list:
    """`count` keep-alive connections that each served one request, one after another (so that each goes idle
    with the ones before it still open)."""
    conns = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        if wrap is not None:
            sock = wrap(sock)
        sock.sendall(request())
        assert read_responses(sock, 1).endswith(b"ok")
        conns.append(sock)
    return conns


def parked_sockets(pid: int) -> int:
    """Sockets watched with EPOLLRDHUP in the process's epoll sets: the parker's (trio never asks for RDHUP)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:[eventpoll]":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("tfd:"):
                events = int(line.split()[3], 16)
                total += bool(events & EPOLLRDHUP)
    return total


def wait_for(predicate, what: str, timeout_s: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)
    return value


def closed_by_peer(sock) -> bool:
    sock.settimeout(TIMEOUT_S)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def close_all(conns: list) -> None:
    for sock in conns:
        sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> tuple[Path, trustme.CA]:
    root = tmp_path_factory.mktemp("parking-pki")
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    creds = root / "creds" / "app-cert"
    creds.mkdir(parents=True)
    leaf.cert_chain_pems[0].write_to_path(str(creds / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(creds / "tls.key"))
    return root / "creds", ca


@pytest.fixture(scope="module", params=CODECS)
def edge(request, tmp_path_factory, pki):
    creds, _ca = pki
    process = EdgeProcess(tmp_path_factory.mktemp(f"parking-{request.param}"), config(tls=True), workers=1,
                          gateway_ports=(80, 443), extra_args=(*codec_args(request.param), "--credentials-dir", str(creds)))
    with process:
        yield process


def test_parked_connections_resume_with_a_later_and_with_pipelined_requests(edge):
    conns = open_idle(edge.port(80), MANY)
    try:
        worker = edge.worker_pids()[0]
        assert wait_for(lambda: parked_sockets(worker) == MANY, "every idle connection parked")
        # Every connection, parked or not, serves on: a later request on each, then two pipelined ones on each.
        for sock in conns:
            sock.sendall(request())
        for sock in conns:
            assert read_responses(sock, 1).endswith(b"ok")
        for sock in conns:
            sock.sendall(request() + request())
        for sock in conns:
            answer = read_responses(sock, 2)
            assert answer.count(b"HTTP/1.1 200") == 2, answer
    finally:
        close_all(conns)
    # A client that leaves while parked is seen at once: its connection ends, nothing stays watched.
    assert wait_for(lambda: parked_sockets(worker) == 0, "no parked connections after the clients left")


def test_tls_keep_alive_connections_park_and_resume(edge, pki):
    _creds, ca = pki
    client = ssl.create_default_context()
    ca.configure_trust(client)
    conns = open_idle(edge.port(443), MANY, lambda raw: client.wrap_socket(raw, server_hostname=HOST))
    try:
        worker = edge.worker_pids()[0]
        assert wait_for(lambda: parked_sockets(worker) == MANY, "every idle TLS connection parked")
        for sock in conns:
            sock.sendall(request() + request())
        for sock in conns:
            answer = read_responses(sock, 2)
            assert answer.count(b"HTTP/1.1 200") == 2, answer
    finally:
        close_all(conns)


def test_idle_timeout_closes_parked_connections_and_the_limit_counts_them(tmp_path):
    limit = MANY
    extra = ("--idle-timeout", "4", "--max-connections-per-worker", str(limit))  # longer than opening them takes
    with EdgeProcess(tmp_path, config(), workers=1, gateway_ports=(80,), extra_args=extra) as edge:
        conns = open_idle(edge.port(80), limit)
        try:
            worker = edge.worker_pids()[0]
            assert wait_for(lambda: parked_sockets(worker) >= limit - PARK_IDLE_TASKS, "parked connections")
            # The limit is reached with parked connections counted: one more waits in the kernel's backlog...
            late = socket.create_connection(("127.0.0.1", edge.port(80)), timeout=TIMEOUT_S)
            late.sendall(request())
            late.settimeout(0.5)
            with pytest.raises(TimeoutError):
                late.recv(1)
            # ...until the idle timeout closes the idle ones, parked ones included; then it is served.
            assert all(closed_by_peer(sock) for sock in conns)
            late.settimeout(TIMEOUT_S)
            assert read_responses(late, 1).endswith(b"ok")
            # The late connection may be parked by now in its turn (opening the others took longer than
            # PARK_AFTER_S under load, so it went idle before the last of them timed out): once it closes too,
            # the parker watches nothing.
            late.close()
            assert wait_for(lambda: parked_sockets(worker) == 0, "no parked connection left")
        finally:
            close_all(conns)


def test_drain_closes_parked_connections_while_a_request_in_flight_finishes(tmp_path):
    with FixedBackend("slow", delay_s=2.0) as slow:
        _drain(tmp_path, slow.port)


def _drain(tmp_path: Path, slow_port: int) -> None:
    edge = EdgeProcess(tmp_path, config(slow_port=slow_port), workers=1, gateway_ports=(80,), extra_args=("--drain-timeout", "10")).start()
    conns: list = []
    try:
        conns = open_idle(edge.port(80), MANY)
        worker = edge.worker_pids()[0]
        assert wait_for(lambda: parked_sockets(worker) == MANY, "every idle connection parked")
        busy = conns.pop()
        busy.sendall(request("/slow"))  # the backend answers after 2 s: in flight when the drain starts
        time.sleep(0.2)
        edge.send_signal(signal.SIGTERM)
        assert all(closed_by_peer(sock) for sock in conns)
        # The idle ones went at once, before the request in flight was answered...
        busy.setblocking(False)
        with pytest.raises(BlockingIOError):
            busy.recv(1, socket.MSG_PEEK)
        busy.setblocking(True)
        # ...which still finishes.
        answer = b""
        while chunk := busy.recv(65536):  # the answer says Connection: close, then the connection ends
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b'"path": "/slow"' in answer, answer
        busy.close()
    finally:
        close_all(conns)
        edge.stop()


def test_tls_sessions_resume_with_tickets(edge, pki):
    _creds, ca = pki
    client = ssl.create_default_context()
    ca.configure_trust(client)
    session, resumed = None, []
    for _ in range(4):
        with client.wrap_socket(socket.create_connection(("127.0.0.1", edge.port(443)), timeout=TIMEOUT_S), server_hostname=HOST, session=session) as sock:
            resumed.append(sock.session_reused)
            sock.sendall(request())
            assert read_responses(sock, 1).endswith(b"ok")  # the tickets arrive after the handshake: read first
            assert sock.version() == "TLSv1.3"
            session = sock.session
    assert resumed == [False, True, True, True]
