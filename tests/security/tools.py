"""Shared pieces of the security suite: raw clients, both codecs, the gateway config most tests use.

Rules:
- Every exchange is a raw socket with a timeout (CLIENT_TIMEOUT_S): an attack that hangs the gateway fails the
  test instead of hanging it.
- `codec` parametrizes a test over both HTTP/1 codecs (`--http-codec h11|httptools`): the hardening holds on both.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.e2e.harness import recv_until_eof

CLIENT_TIMEOUT_S = 10.0
CODECS = ("h11", "httptools")

codec = pytest.mark.parametrize("codec", CODECS)


def codec_args(name: str) -> tuple[str, ...]:
    return ("--http-codec", name)


def exchange(port: int, data: bytes, *, timeout_s: float = CLIENT_TIMEOUT_S, shut: bool = False) -> bytes:
    """Send `data` on a new connection and read until the gateway closes it (or the timeout: then what came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        try:
            return recv_until_eof(sock)
        except TimeoutError:
            raise AssertionError(f"no close within {timeout_s} s after {data[:80]!r}") from None


def exchange_head(port: int, data: bytes, *, timeout_s: float = CLIENT_TIMEOUT_S) -> bytes:
    """Send `data` on a new connection and read until the first response head is complete (or the gateway closes).
    The connection stays open both ways while the answer is prepared: a client that half-closes is a client that
    left (Envoy's DC), and may rightly get no answer once the request waits on an upstream."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            raise AssertionError(f"no response head within {timeout_s} s after {data[:80]!r}") from None
    return received


def statuses(response: bytes) -> list[int]:
    """The status codes of every response head in a byte stream (pipelined answers included: a head follows the
    previous body directly). Test bodies never contain a status line."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", response)]


def status(response: bytes) -> int:
    found = statuses(response)
    assert found, f"no response head in {response[:200]!r}"
    return found[0]


def wait_until(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)


def gateway(*hosts: str) -> str:
    listed = ", ".join(f'"{h}"' for h in hosts or ("*",))
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{listed}]
"""


def route_all(host: str, destination: str, extra_http: str = "", *, name: str | None = None) -> str:
    """A VirtualService on gw sending every path of `host` to `destination` (extra_http: rules before it)."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name or host.replace('.', '-')}}}
spec:
  hosts: ["{host}"]
  gateways: [gw]
  http:
{extra_http}  - route: [{{destination: {{host: {destination}}}}}]
"""


def static_service(host: str, port: int, *, protocol: str = "HTTP", name: str | None = None) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name or host.replace('.', '-')}}}
spec:
  hosts: [{host}]
  resolution: STATIC
  ports: [{{number: 80, name: {protocol.lower()}, protocol: {protocol}}}]
  endpoints: [{{address: 127.0.0.1, ports: {{{protocol.lower()}: {port}}}}}]
"""
