"""Slow and silent clients cannot hold the gateway (issue 10, items 5 and 6).

- A request whose bytes stop moving ends at the stream idle timeout (Envoy's stream_idle_timeout, 300 s by
  default; 1 s here): 408 while its body was still arriving, 504 when it was whole and the backend said nothing,
  flag SI, and the upstream connection is let go. Before, a POST that sent 10 of 100,000 bytes held the client
  and the upstream connection forever.
- Idle connections under pressure: once a worker's connections pass 85 % of --max-connections-per-worker, idle
  timeouts shrink towards 2 s (Envoy's overload manager, reduce_timeouts), so silent sockets cannot lock
  legitimate clients out until the 3,600 s idle timeout. Below that, idle connections keep their timeout.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.fixed_backend import FixedBackend
from tests.e2e.harness import EdgeProcess, http_get
from tests.security.tools import codec, codec_args, gateway, route_all, static_service, status

pytestmark = pytest.mark.e2e

HOST = "app.example.com"


def config(port: int) -> dict[str, str]:
    return {"gw.yaml": gateway(HOST), "vs.yaml": route_all(HOST, "be.local"), "se.yaml": static_service("be.local", port)}


def read_answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def access_log(edge: EdgeProcess, needle: bytes, timeout_s: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout_s
    while needle not in (text := edge.out_path.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


@codec
def test_a_stalled_request_body_is_answered_408(tmp_path, codec):
    with FixedBackend("be") as backend, EdgeProcess(
        tmp_path, config(backend.port), gateway_ports=(80,), extra_args=(*codec_args(codec), "--stream-idle-timeout", "1", "--access-log", "-")
    ) as edge:
        with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=10) as sock:
            t0 = time.monotonic()
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
            answer = read_answer(sock)
            elapsed = time.monotonic() - t0
        assert status(answer) == 408 and answer.endswith(b"stream timeout")
        assert elapsed >= 1.0  # not before the timeout (the socket's own 10 s bounds the other side)
        assert b" 408 SI stream_idle_timeout " in access_log(edge, b" SI ")
        # The gateway let the upstream connection go: the backend, waiting for the rest of the body, saw it end.
        assert [(s.path, s.body_bytes) for s in backend.requests()] == [("/upload", 10)]
        assert http_get(edge.port(80), "/after", host=HOST)[0] == 200


@codec
def test_a_backend_that_says_nothing_ends_in_504(tmp_path, codec):
    with FixedBackend("slow", delay_s=4.0) as backend, EdgeProcess(
        tmp_path, config(backend.port), gateway_ports=(80,), extra_args=(*codec_args(codec), "--stream-idle-timeout", "1", "--access-log", "-")
    ) as edge:
        code, body, _ = http_get(edge.port(80), "/slow", host=HOST, timeout_s=10)
        assert (code, body) == (504, b"stream timeout")  # the gateway's, before the backend's answer at 4 s
        assert b" 504 SI stream_idle_timeout " in access_log(edge, b" SI ")


def test_idle_connections_are_closed_sooner_under_connection_pressure(tmp_path):
    """One worker, at most 20 connections. At 10 of 20 (50 %) silent sockets keep the configured idle timeout;
    20 silent sockets fill the table (the worker stops accepting), their idle timeout falls to 2 s, and a
    legitimate client waiting in the listen queue is served within seconds instead of an hour."""
    args = ("--max-connections-per-worker", "20", "--idle-timeout", "3600")
    with EdgeProcess(tmp_path, {"gw.yaml": gateway(), "vs.yaml": route_all("*", "none.local", name="all")}, gateway_ports=(80,), workers=1, extra_args=args) as edge:
        port = edge.port(80)

        def open_silent(n: int) -> list[socket.socket]:
            return [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]

        def closed(sock: socket.socket) -> bool:
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        relaxed = open_silent(10)
        time.sleep(3.5)
        assert not any(closed(s) for s in relaxed), "idle connections closed below the pressure threshold"
        pressed = open_silent(10)  # the table is full
        # Served (503: the route has no endpoint) within the client's 10 s: with the configured 3,600 s idle
        # timeout and no scaling, it would wait in the listen queue for an hour.
        code, _, _ = http_get(port, "/", host="any.example", timeout_s=10)
        assert code == 503
        assert sum(closed(s) for s in relaxed + pressed) >= 1
        for s in relaxed + pressed:
            s.close()
