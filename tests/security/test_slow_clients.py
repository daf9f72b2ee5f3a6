"""Slow and silent clients cannot hold the gateway (issue 10, items 5 and 6).

- A request whose bytes stop moving ends at the stream idle timeout (Envoy's stream_idle_timeout, 300 s by
  default; 1 s here): 408 while its body was still arriving, 504 when it was whole and the backend said nothing,
  flag SI, and the upstream connection is let go. Before, a POST that sent 10 of 100,000 bytes held the client
  and the upstream connection forever.
- Idle connections under pressure: once a worker's connections pass 85 % of --max-connections-per-worker, idle
  timeouts shrink towards 2 s (Envoy's overload manager, reduce_timeouts), so silent sockets cannot lock
  legitimate clients out until the 3,600 s idle timeout. Below that, idle connections keep their timeout.

Here, the real process and its sweeper with a stalled body (408). The rest is specified in memory on trio's
autojump clock, where the timeouts take no wall time: tests/workers/http/test_proxy_timeouts.py (408, 504 at the
sweeper's pace, pressure-scaled idle timeouts) and tests/workers/test_listeners.py (the accept loop stops at the
connection limit and resumes when a connection ends).
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
