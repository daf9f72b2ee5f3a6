# End to end, `edge run --proxy-protocol` (Istio's gatewayTopology.proxyProtocol): raw clients that speak as
# a load balancer does, a PROXY v1 or v2 header first, on an HTTP and a TCP listener; the client address the
# header announces is what the backend and the access log see, and a connection without one is closed unserved.
from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, recv_until_eof
from workers.proxy_protocol import V2_SIGNATURE

pytestmark = pytest.mark.e2e

TIMEOUT_S = 5.0

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: app.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - route: [{destination: {host: echo.local, port: {number: 9000}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app}
spec:
  hosts: [app.local]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: HTTP_PORT}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.local]
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1, ports: {tcp: TCP_PORT}}]
"""

V1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n"


def v2_tcp4(src: str, sport: int, command: int = 1) -> bytes:
    block = socket.inet_aton(src) + socket.inet_aton("10.0.0.1") + struct.pack("!HH", sport, 80)
    return V2_SIGNATURE + bytes([0x20 | command, 0x11]) + struct.pack("!H", len(block)) + block


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: app.example.com\r\n\r\n".encode()


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """One response with a Content-Length body: (status, the JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (line.partition(": ") for line in lines[1:]) if k.lower() == "content-length")
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body[:length])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("proxy-protocol")
    with SampleBackends(work, http=["app"], tcp=["echo"]) as backends:
        config = CONFIG.replace("HTTP_PORT", str(backends.port("app"))).replace("TCP_PORT", str(backends.port("echo")))
        log_path = work / "access.log"
        args = ("--proxy-protocol", "--access-log", str(log_path), "--access-log-format", "json")
        with EdgeProcess(work, {"gw.yaml": config}, gateway_ports=(80, 31400), workers=1, extra_args=args) as edge:
            yield edge, log_path


def records(log_path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []


def wait_for_record(log_path, wanted) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:  # the log is flushed once a second
        found = [r for r in records(log_path) if wanted(r)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise TimeoutError("no such access log line")


@pytest.mark.parametrize(("header", "client"), [(V1, "203.0.113.7"), (v2_tcp4("198.51.100.20", 4711), "198.51.100.20")], ids=["v1", "v2"])
def test_http_sees_the_client_the_header_announces(stack, header, client):
    edge, _ = stack
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=TIMEOUT_S) as sock:
        sock.sendall(header + get("/headers"))
        status, body = read_response(sock)
        assert status == 200
        assert body["headers"]["x-envoy-external-address"] == client
        assert body["headers"]["x-forwarded-for"] == client
        # The header comes once per connection; the next request on it keeps the same client.
        sock.sendall(get("/headers?again"))
        status, body = read_response(sock)
        assert (status, body["headers"]["x-forwarded-for"]) == (200, client)


def test_a_local_header_keeps_the_connections_own_address(stack):
    edge, _ = stack
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=TIMEOUT_S) as sock:
        sock.sendall(v2_tcp4("0.0.0.0", 0, command=0) + get("/headers"))  # a load balancer's health check
        status, body = read_response(sock)
    assert (status, body["headers"]["x-forwarded-for"]) == (200, "127.0.0.1")


@pytest.mark.parametrize("header", [b"", b"PROXY TCP4 not-an-ip 10.0.0.1 1 80\r\n"], ids=["no-header", "bad-header"])
def test_a_connection_without_a_valid_header_is_closed_unserved(stack, header):
    edge, log_path = stack
    path = f"/headers?unserved-{len(header)}"
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=TIMEOUT_S) as sock:
        sock.sendall(header + get(path))
        try:
            assert recv_until_eof(sock) == b""  # no response at all: nothing was routed
        except ConnectionResetError:
            pass
    # A request that follows on a good connection is logged; the refused one never is.
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=TIMEOUT_S) as sock:
        sock.sendall(V1 + get(f"/headers?after-{len(header)}"))
        assert read_response(sock)[0] == 200
    wait_for_record(log_path, lambda r: r["path"] == f"/headers?after-{len(header)}")
    assert not [r for r in records(log_path) if r["path"] == path]


def test_tcp_is_spliced_after_the_header_and_logged_with_the_client(stack):
    edge, log_path = stack
    with socket.create_connection(("127.0.0.1", edge.port(31400)), timeout=TIMEOUT_S) as sock:
        sock.sendall(v2_tcp4("192.0.2.33", 5555) + b"payload\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"echo\npayload\n"  # the backend's greeting, then the echo: no header bytes
    tcp = wait_for_record(log_path, lambda r: r["response_code"] == 0)
    assert tcp["downstream_remote_address"] == "192.0.2.33:5555"
    assert tcp["downstream_local_address"] == "10.0.0.1:80"
    assert tcp["bytes_received"] == len(b"payload\n")
