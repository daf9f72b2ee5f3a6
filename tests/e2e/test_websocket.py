# End to end: WebSocket through the gateway (Istio's gateways enable the websocket upgrade): the handshake is
# proxied, the 101 reaches the client, then bytes flow both ways untouched until either side closes.
from __future__ import annotations

import base64
import hashlib
import os
import socket

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ws}
spec:
  hosts: ["ws.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: ws.local}}]
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    work = tmp_path_factory.mktemp("websocket")
    with SampleBackends(work, http=["ws-1"]) as backends:
        with EdgeProcess(work, {"gw.yaml": GATEWAY, "se.yaml": backends.service_entry("ws.local")}, gateway_ports=(80,)) as edge:
            yield edge


def _handshake(sock: socket.socket, key: bytes, path: str = "/websocket", extra: bytes = b"") -> bytes:
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: ws.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n%s" % (path.encode(), key, extra)
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    return head


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def test_handshake_then_bytes_both_ways(gateway):
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", gateway.port(80)), timeout=5) as sock:
        head = _handshake(sock, key, extra=b"early")
        status_line, _, rest = head.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 101")
        headers = rest.lower()
        expected = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).lower()
        assert b"sec-websocket-accept: " + expected in headers
        assert b"upgrade: websocket" in headers and b"server: istio-envoy" in headers
        tail = head.split(b"\r\n\r\n", 1)[1]
        # Bytes the client sent right behind its handshake reach the backend too.
        assert tail + _recv_exactly(sock, 5 - len(tail)) == b"early"
        payload = os.urandom(256 * 1024)
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)  # half-close: the echo ends and the gateway closes our side
        assert sock.recv(1) == b""


def test_an_empty_server_header_setting_passes_the_backends_through_on_a_101(tmp_path):
    with SampleBackends(tmp_path, http=["ws-1"]) as backends:
        config = {"gw.yaml": GATEWAY, "se.yaml": backends.service_entry("ws.local")}
        with EdgeProcess(tmp_path, config, gateway_ports=(80,), workers=1, extra_args=("--server-header", "")) as edge:
            with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=5) as sock:
                head = _handshake(sock, base64.b64encode(os.urandom(16))).lower()
    assert head.startswith(b"http/1.1 101")
    assert b"server: sample-backend" in head and b"istio-envoy" not in head


def test_a_refused_upgrade_is_an_ordinary_response(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port(80)), timeout=5) as sock:
        head = _handshake(sock, base64.b64encode(os.urandom(16)), path="/headers")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in head.lower()


def test_plain_requests_still_work_next_to_websockets(gateway):
    status, _, _ = http_get(gateway.port(80), "/", host="ws.example.com")
    assert status == 200
