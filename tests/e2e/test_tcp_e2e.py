# End to end, TCP: the real `edge run` (2 workers) splicing raw TCP to real tcp-echo backends
# (`python -m edge.dev.sample_backend --tcp-echo`: sends "NAME\n", then echoes until the client half-closes).
#
# Covered: the istio.io task "TCP Traffic Shifting" with its YAML (all to v1, then 80/20, counted), half-close
# in both directions, a large payload checked by hash, connect failure (connection closed, nothing hangs),
# DestinationRule tcp.idleTimeout and tcp.maxConnections (one pending, the next closed: UO), a listener with no
# route (not opened), and a worker that stays healthy.
from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections import Counter

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get, recv_until_eof

pytestmark = pytest.mark.e2e

TIMEOUT_S = 5.0

# samples/tcp-echo/tcp-echo-all-v1.yaml, as published (hosts: "*", port 31400, subsets by version label)
TCP_ECHO_ALL_V1 = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: tcp-echo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 31400
      name: tcp
      protocol: TCP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - "*"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
"""

# samples/tcp-echo/tcp-echo-20-v2.yaml
TCP_ECHO_20_V2 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - "*"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
      weight: 80
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
      weight: 20
"""


def tcp_echo_service_entry(backends: SampleBackends) -> str:
    """The Kubernetes Service tcp-echo (port 9000) as a ServiceEntry: one endpoint per version."""
    endpoints = "".join(
        f"  - address: 127.0.0.1\n    ports: {{tcp: {backends.port(name)}}}\n    labels: {{version: {name}}}\n"
        for name in ("v1", "v2")
    )
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: tcp-echo}\nspec:\n"
        "  hosts: [tcp-echo.default.svc.cluster.local]\n  resolution: STATIC\n"
        "  ports:\n  - {number: 9000, name: tcp, protocol: TCP}\n"
        f"  endpoints:\n{endpoints}"
    )


def echo_once(port: int, payload: bytes = b"hello\n") -> bytes:
    """The task's `(date; sleep 1) | nc`: send, half-close, read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_eof(sock)


@pytest.fixture(scope="module")
def echo_backends(tmp_path_factory):
    with SampleBackends(tmp_path_factory.mktemp("tcp-echo"), tcp=["v1", "v2"]) as backends:
        yield backends


def test_tcp_traffic_shifting(tmp_path, echo_backends):
    config = {"tcp-echo-all-v1.yaml": TCP_ECHO_ALL_V1, "se.yaml": tcp_echo_service_entry(echo_backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(31400,)) as edge:
        port = edge.port(31400)
        for i in range(20):
            line = f"request {i}\n".encode()
            assert echo_once(port, line) == b"v1\n" + line
        workers = edge.worker_pids()

        edge.write_config("tcp-echo-all-v1.yaml", TCP_ECHO_ALL_V1.split("---\napiVersion: networking.istio.io/v1\nkind: VirtualService")[0])
        edge.write_config("tcp-echo-20-v2.yaml", TCP_ECHO_20_V2)
        assert "published" in edge.reload()
        counts = Counter(echo_once(port).split(b"\n", 1)[0].decode() for _ in range(400))
        assert set(counts) == {"v1", "v2"}
        share_v2 = counts["v2"] / 400
        # 20 % of 400: mean 80, standard deviation 8; this band is ±5 σ
        assert 0.10 <= share_v2 <= 0.30, counts
        assert edge.worker_pids() == workers  # a route change needs no new workers


def wait_for(predicate, what: str, timeout_s: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def metric(edge: EdgeProcess, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter over the series whose labels include `labels`."""
    _, body, _ = http_get(edge.metrics_port, "/stats/prometheus")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_half_close_both_ways_and_large_payload(tmp_path, echo_backends):
    config = {"tcp-echo-all-v1.yaml": TCP_ECHO_ALL_V1, "se.yaml": tcp_echo_service_entry(echo_backends)}
    with EdgeProcess(tmp_path, config, gateway_ports=(31400,), extra_args=("--access-log", "-")) as edge:
        port = edge.port(31400)
        payload = os.urandom(16 * 1024 * 1024 + 5)
        received = bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S * 4) as sock:

            def reader():
                received.extend(recv_until_eof(sock))

            thread = threading.Thread(target=reader)
            thread.start()
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the backend sees EOF only after every byte; then it closes
            thread.join(TIMEOUT_S * 4)
            assert not thread.is_alive()
        assert bytes(received[:3]) == b"v1\n"
        assert hashlib.sha256(received[3:]).digest() == hashlib.sha256(payload).digest()
        # Envoy's TCP access log line: "- - -" 0, bytes received from / sent to the client, the cluster.
        cluster = "outbound|9000|v1|tcp-echo.default.svc.cluster.local"
        line = wait_for(lambda: next((l for l in edge.out_path.read_text().splitlines() if cluster in l), None), "the access log line")
        assert re.search(rf'"- - -" 0 - - - "-" {len(payload)} {len(payload) + 3} \d+ - ', line), line
        assert f'"127.0.0.1:{echo_backends.port("v1")}"' in line
        # Istio's TCP metrics, from the stats segment (published periodically).
        try:
            metric(edge, "istio_tcp_connections_closed_total")
        except ConnectionRefusedError:
            pytest.skip("the metrics port is not served by this build yet")
        wait_for(lambda: metric(edge, "istio_tcp_connections_closed_total") >= 1, "istio_tcp_connections_closed_total")
        assert metric(edge, "istio_tcp_connections_opened_total") == metric(edge, "istio_tcp_connections_closed_total") == 1
        assert metric(edge, "istio_tcp_received_bytes_total") == len(payload)
        assert metric(edge, "istio_tcp_sent_bytes_total") == len(payload) + 3


UNREACHABLE = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 31401, name: tcp-idle, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: dead}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: dead.example, port: {number: 9000}}}]
  - match: [{port: 31401}]
    route: [{destination: {host: idle.example, port: {number: 9000}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dead}
spec:
  hosts: [dead.example]
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1, ports: {tcp: DEAD_PORT}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: idle}
spec:
  hosts: [idle.example]
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1, ports: {tcp: ECHO_PORT}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: idle}
spec:
  host: idle.example
  trafficPolicy:
    connectionPool:
      tcp:
        idleTimeout: 1s
"""


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_failure_closes_and_idle_timeout(tmp_path, echo_backends):
    config = UNREACHABLE.replace("DEAD_PORT", str(dead_port())).replace("ECHO_PORT", str(echo_backends.port("v1")))
    with EdgeProcess(tmp_path, {"gw.yaml": config}, gateway_ports=(31400, 31401), extra_args=("--access-log", "-")) as edge:
        workers = edge.worker_pids()
        # Connect refused upstream: the client's connection is closed at once, without a byte.
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", edge.port(31400)), timeout=TIMEOUT_S) as sock:
                sock.sendall(b"anyone?")
                try:
                    assert sock.recv(100) == b""  # closed, not left hanging (the socket timeout would raise)
                except ConnectionResetError:
                    pass
        # idleTimeout 1s: an open, silent connection is closed after about a second; traffic keeps it open.
        with socket.create_connection(("127.0.0.1", edge.port(31401)), timeout=TIMEOUT_S) as sock:
            assert sock.recv(100) == b"v1\n"
            for i in range(4):
                time.sleep(0.4)
                sock.sendall(b"%d" % i)
                assert sock.recv(100) == b"%d" % i
            start = time.monotonic()
            assert recv_until_eof(sock) == b""
            idle = time.monotonic() - start
        assert 0.9 <= idle <= 2.5, idle
        assert edge.worker_pids() == workers
        log = wait_for(lambda: (t := edge.out_path.read_text()).count(" UF ") >= 10 and "idle_timeout" in t and t, "access log")
        assert log.count('"- - -" 0 UF - - "-" 0 0 ') == 10  # nothing spliced either way
        assert "outbound|9000||dead.example" in log


NO_ROUTE = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def test_tcp_server_without_route_is_not_opened(tmp_path):
    with EdgeProcess(tmp_path, {"gw.yaml": NO_ROUTE}, gateway_ports=(31400, 80)) as edge, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", edge.port(31400)), timeout=TIMEOUT_S)


LIMITED = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - route: [{destination: {host: echo.example, port: {number: 9000}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.example]
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1, ports: {tcp: ECHO_PORT}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo.example
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
"""


def test_tcp_max_connections_queues_one_then_overflows(tmp_path, echo_backends):
    """DestinationRule connectionPool.tcp.maxConnections on a TCP route, as Envoy's cluster circuit breaker:
    one connection open, one waiting for its slot, the next closed at once (UO)."""
    config = LIMITED.replace("ECHO_PORT", str(echo_backends.port("v1")))
    with EdgeProcess(tmp_path, {"gw.yaml": config}, gateway_ports=(31400,), workers=1, extra_args=("--access-log", "-")) as edge:
        port = edge.port(31400)
        first = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        try:
            assert first.recv(100) == b"v1\n"
            waiting = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
            try:
                waiting.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    waiting.recv(100)  # pending: no upstream connection yet, so no greeting
                with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as refused:
                    try:
                        # Closed at once: left pending, it would wait out the 10 s connectTimeout and the 5 s
                        # socket timeout would raise first.
                        assert refused.recv(100) == b""
                    except ConnectionResetError:
                        pass
                first.close()  # frees the slot: the waiting connection goes through
                waiting.settimeout(TIMEOUT_S)
                assert waiting.recv(100) == b"v1\n"
                waiting.sendall(b"late\n")
                waiting.shutdown(socket.SHUT_WR)
                assert recv_until_eof(waiting) == b"late\n"
            finally:
                waiting.close()
        finally:
            first.close()
        log = wait_for(lambda: (t := edge.out_path.read_text()).count('"- - -" 0 ') >= 3 and t, "3 access log lines")
        assert log.count('"- - -" 0 UO - - "-" 0 0 ') == 1  # the overflowed one: closed, nothing spliced
        assert log.count('"- - -" 0 - ') == 2
