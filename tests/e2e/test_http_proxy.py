# End to end: the real `edge run` (2 workers) proxying HTTP/1.1 to real sample backends, driven by real
# clients (raw sockets, http.client, curl). One gateway per module where the config allows it. Timeouts (the route
# timeout, the request headers timeout) are specified in memory on trio's autojump clock: tests/workers/http/
# test_proxy_retries.py and test_proxy_timeouts.py.
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

import h11
import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - name: slow
    match: [{uri: {prefix: /delay/3}}]
    timeout: 1s
    route: [{destination: {host: app.local, subset: a}}]
  - name: to-b
    match: [{headers: {x-version: {exact: b}}}]
    route: [{destination: {host: app.local, subset: b}}]
  - name: default
    route: [{destination: {host: app.local, subset: a}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: ["flaky.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: flaky.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: down}
spec:
  hosts: ["down.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: down.local}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app}
spec:
  host: app.local
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
"""


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _service_entry(name: str, host: str, endpoints: list[tuple[int, str]]) -> str:
    eps = "".join(f"  - address: 127.0.0.1\n    ports: {{http: {p}}}\n    labels: {{version: {v}}}\n" for p, v in endpoints)
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n"
        f"  hosts: [{host}]\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n"
        f"  endpoints:\n{eps}"
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("http-proxy")
    with SampleBackends(work, http=["a", "b"]) as backends:
        dead = _dead_port()
        config = {
            "gw.yaml": GATEWAY,
            "routes.yaml": ROUTES,
            "se-app.yaml": _service_entry("app", "app.local", [(backends.port("a"), "a"), (backends.port("b"), "b")]),
            # One endpoint refuses connections, the other works: the default retry must find the good one.
            "se-flaky.yaml": _service_entry("flaky", "flaky.local", [(dead, "dead"), (backends.port("b"), "b")]),
            "se-down.yaml": _service_entry("down", "down.local", [(dead, "dead")]),
        }
        with EdgeProcess(work, config, gateway_ports=(80,), extra_args=("--request-headers-timeout", "1")) as edge:
            yield edge, backends


def _raw(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read_until_close:
            return s.recv(65536)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# ------------------------------------------------------------------------------------------------ routing


def test_routes_by_path_and_header(stack):
    edge, _ = stack
    port = edge.port(80)
    status, body, headers = http_get(port, "/anything", host="app.example.com")
    assert status == 200 and json.loads(body)["instance"] == "a"
    assert headers["server"] == "istio-envoy"
    assert "x-envoy-upstream-service-time" in headers
    status, body, _ = http_get(port, "/anything", host="APP.example.com:31080", headers={"x-version": "b"})
    assert status == 200 and json.loads(body)["instance"] == "b"


def test_unknown_host_is_404_nr(stack):
    edge, _ = stack
    status, body, headers = http_get(edge.port(80), "/", host="nobody.example.com")
    assert status == 404 and body == b""


def test_absolute_form_target_uses_its_authority(stack):
    edge, _ = stack
    raw = _raw(edge.port(80), b"GET http://app.example.com/abs?q=1 HTTP/1.1\r\nHost: other.example.com\r\nx-version: b\r\nConnection: close\r\n\r\n")
    assert _status_of(raw) == 200
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["instance"] == "b"


def test_proxy_headers_reach_the_backend(stack):
    edge, _ = stack
    status, body, _ = http_get(
        edge.port(80), "/headers", host="app.example.com",
        headers={"X-Forwarded-For": "203.0.113.9", "Connection": "keep-alive, x-secret", "x-secret": "1", "Keep-Alive": "300"},
    )
    seen = json.loads(body)["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.9,127.0.0.1"  # appended; untrusted, so not the client
    assert seen["x-envoy-external-address"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert len(seen["x-request-id"]) == 36
    assert "x-secret" not in seen and "keep-alive" not in seen and "connection" not in seen
    # An edge request's id is replaced and Envoy's control headers stop here, as at an Istio gateway.
    status, body, _ = http_get(
        edge.port(80), "/headers", host="app.example.com",
        headers={"x-request-id": "given-id", "x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "1", "x-forwarded-proto": "https"},
    )
    seen = json.loads(body)["headers"]
    assert seen["x-request-id"] != "given-id" and len(seen["x-request-id"]) == 36
    assert "x-envoy-retry-on" not in seen and "x-envoy-upstream-rq-timeout-ms" not in seen
    assert seen["x-forwarded-proto"] == "http"


TRUSTED_GATEWAY = GATEWAY + """\
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: app.local}}]
"""


@pytest.mark.parametrize("trusted", [False, True], ids=["no-trusted-proxies", "one-trusted-proxy"])
def test_a_load_balancer_in_front_is_trusted_only_when_configured(tmp_path, trusted):
    """Behind a TLS-terminating load balancer that appends X-Forwarded-For and sets X-Forwarded-Proto:
    with --num-trusted-proxies 1 the client address and scheme come from it (Istio's numTrustedProxies)."""
    log_path = tmp_path / "access.log"
    args = ["--access-log", str(log_path), "--access-log-format", "json"]
    if trusted:
        args += ["--num-trusted-proxies", "1", "--preserve-external-request-id"]
    with SampleBackends(tmp_path, http=["a"]) as backends:
        config = {"gw.yaml": TRUSTED_GATEWAY, "se.yaml": _service_entry("app", "app.local", [(backends.port("a"), "a")])}
        with EdgeProcess(tmp_path, config, gateway_ports=(80,), workers=1, extra_args=tuple(args)) as edge:
            lb_headers = {"X-Forwarded-For": "198.51.100.4, 203.0.113.9", "X-Forwarded-Proto": "https", "x-request-id": "lb-id"}
            status, body, headers = http_get(edge.port(80), "/headers", host="app.example.com", headers=lb_headers)
            if not trusted:
                # The client's X-Forwarded-Proto is not believed: httpsRedirect answers, nothing is forwarded.
                assert status == 301
                assert dict(headers)["location"] == "https://app.example.com/headers"
                return
            assert status == 200, body
            seen = json.loads(body)["headers"]
            assert seen["x-envoy-external-address"] == "203.0.113.9"  # the entry the trusted proxy appended
            assert seen["x-forwarded-for"] == "198.51.100.4, 203.0.113.9,127.0.0.1"
            assert seen["x-forwarded-proto"] == "https"
            assert seen["x-request-id"] == "lb-id"
            edge.stop()
    [record] = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert record["downstream_remote_address"] == "203.0.113.9:0"  # from X-Forwarded-For: no port, as Envoy logs it
    assert record["x_forwarded_for"] == "198.51.100.4, 203.0.113.9,127.0.0.1"
    assert record["request_id"] == "lb-id"


# ------------------------------------------------------------------------------------------------ bodies


def test_streams_100_mb_both_ways_with_bounded_memory(stack):
    edge, _ = stack
    size = 100 * 1024 * 1024
    before = {pid: _rss_kib(pid) for pid in edge.worker_pids()}
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=30) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: %d\r\n\r\n" % size)

        def upload():
            block = os.urandom(1024 * 1024)
            for _ in range(size // len(block)):
                sent.update(block)
                s.sendall(block)

        t = threading.Thread(target=upload)
        t.start()
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="POST", target="/echo", headers=[("host", "x"), ("content-length", str(size))]))
        conn.send(h11.Data(data=b""))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(s.recv(1 << 20))
                continue
            if isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                got.update(event.data)
                received += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        t.join(30)
    assert received == size
    assert got.hexdigest() == sent.hexdigest()
    after = {pid: _peak_rss_kib(pid) for pid in edge.worker_pids()}
    for pid, peak in after.items():
        assert peak - before.get(pid, peak) < 64 * 1024, f"worker {pid} grew {peak - before.get(pid, 0)} KiB for a 100 MB stream"


def test_download_100_mb(stack):
    edge, _ = stack
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-H", "Host: app.example.com", f"http://127.0.0.1:{edge.port(80)}/stream-bytes/104857600"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout == "200 104857600"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def test_chunked_request_body_is_forwarded(stack):
    edge, _ = stack
    raw = _raw(edge.port(80), b"POST /sha256 HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert _status_of(raw) == 200
    doc = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert doc["bytes"] == 11 and doc["sha256"] == hashlib.sha256(b"hello world").hexdigest()


def test_expect_100_continue(stack):
    edge, _ = stack
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=5) as s:
        s.sendall(b"POST /sha256 HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 ")
        s.sendall(b"hello")
        final = b""
        while b"}" not in final:
            final += s.recv(4096)
    assert final.startswith(b"HTTP/1.1 200 ")
    assert json.loads(final.split(b"\r\n\r\n", 1)[1])["bytes"] == 5


def test_head_204_304_have_no_body(stack):
    edge, _ = stack
    port = edge.port(80)
    raw = _raw(port, b"HEAD /bytes/1000 HTTP/1.1\r\nHost: app.example.com\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: app.example.com\r\n\r\nGET /status/304 HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
    parts = raw.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"204", b"304"]
    assert b"content-length: 1000" in parts[0].lower()
    assert parts[0].endswith(b"\r\n\r\n") and parts[1].endswith(b"\r\n\r\n") and parts[2].endswith(b"\r\n\r\n")


def test_pipelined_requests_are_answered_in_order(stack):
    edge, _ = stack
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: app.example.com\r\n\r\n" % i for i in range(5))
    reqs += b"GET /p5 HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n"
    raw = _raw(edge.port(80), reqs)
    paths = [json.loads(chunk.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"] for chunk in raw.split(b"HTTP/1.1 200 OK")[1:]]
    assert paths == [f"/p{i}" for i in range(6)]


def test_http10_client_gets_no_chunking_and_a_close(stack):
    edge, _ = stack
    raw = _raw(edge.port(80), b"GET /stream-bytes/1000 HTTP/1.0\r\nHost: app.example.com\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert len(body) == 1000


def test_upstream_keep_alive_is_reused(stack):
    edge, backends = stack
    backends.reset("a")
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=5) as s:
        conn = h11.Connection(h11.CLIENT)
        for i in range(40):
            s.sendall(conn.send(h11.Request(method="GET", target=f"/k{i}", headers=[("host", "app.example.com")])) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(s.recv(65536))
                elif isinstance(event, h11.EndOfMessage):
                    break
            conn.start_next_cycle()
    stats = backends.stats("a")
    assert stats["requests_total"] == 40
    assert stats["connections_total"] <= 2, stats


# ------------------------------------------------------------------------------------------------ errors


def test_connect_failure_is_retried_on_another_endpoint(stack):
    edge, _ = stack
    for _ in range(10):
        status, body, _ = http_get(edge.port(80), "/", host="flaky.example.com")
        assert status == 200 and json.loads(body)["instance"] == "b"


def test_refused_upstream_is_503(stack):
    edge, _ = stack
    status, body, headers = http_get(edge.port(80), "/", host="down.example.com")
    assert status == 503
    assert body.startswith(b"upstream connect error or disconnect/reset before headers")


def test_upstream_garbage_is_502(stack):
    edge, _ = stack
    status, _, _ = http_get(edge.port(80), "/garbage", host="app.example.com")
    assert status == 502


def test_upstream_reset_before_response_is_503(stack):
    edge, _ = stack
    status, body, _ = http_get(edge.port(80), "/drop", host="app.example.com")
    assert status == 503


def test_truncated_upstream_body_closes_the_client_connection(stack):
    edge, _ = stack
    raw = _raw(edge.port(80), b"GET /drop-mid HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"content-length: 1000" in head.lower()
    assert len(body) < 1000  # never presented as complete


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nx_under: 1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\n" + b"x-big: " + b"a" * (61 * 1024) + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * (61 * 1024) + b" HTTP/1.1\r\nHost: app.example.com\r\n\r\n", 414),
    ],
    ids=["garbage", "space-in-name", "underscore", "cl-and-te", "two-lengths", "big-header", "long-line"],
)
def test_malformed_requests_get_their_status(stack, request_bytes, status):
    edge, backends = stack
    before = backends.stats("a")["requests_total"]
    raw = _raw(edge.port(80), request_bytes)
    assert _status_of(raw) == status
    assert backends.stats("a")["requests_total"] == before  # nothing reached a backend


def _close_wait_count(port: int) -> int:
    """Backend-side sockets of `port` whose peer (the gateway) has closed: the kernel's CLOSE-WAIT state."""
    out = subprocess.run(["ss", "-Htn", "state", "close-wait", f"( sport = :{port} )"], capture_output=True, text=True, check=True)
    return len([line for line in out.stdout.splitlines() if line.strip()])


def test_client_leaving_cancels_the_upstream_request(stack):
    edge, backends = stack
    port = backends.port("a")
    before = _close_wait_count(port)
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=5) as s:
        s.sendall(b"GET /delay/2.5 HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        time.sleep(0.3)
    # The backend is still sleeping; the gateway must already have closed its upstream connection.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and _close_wait_count(port) <= before:
        time.sleep(0.02)
    assert _close_wait_count(port) > before


# ------------------------------------------------------------------------------------------------ HTTP/1.0 switch


def test_http10_rejected_with_426_when_asked(tmp_path):
    with SampleBackends(tmp_path, http=["a"]) as backends:
        vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app}\nspec:\n  hosts: [app.example.com]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app.local}}]\n"
        config = {"gw.yaml": GATEWAY, "vs.yaml": vs, "se.yaml": _service_entry("app", "app.local", [(backends.port("a"), "a")])}
        with EdgeProcess(tmp_path, config, gateway_ports=(80,), extra_args=("--http10", "reject")) as edge:
            raw = _raw(edge.port(80), b"GET / HTTP/1.0\r\nHost: app.example.com\r\n\r\n")
            assert _status_of(raw) == 426


def test_http10_without_host_is_answered_400_even_by_a_catch_all_route(tmp_path):
    """Envoy's missing_host_header: a Host-less HTTP/1.0 request is not routed (it used to match hosts ["*"] and go
    upstream with an empty Host, which the backend refused)."""
    with SampleBackends(tmp_path, http=["a"]) as backends:
        vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app}\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app.local}}]\n"
        config = {"gw.yaml": GATEWAY, "vs.yaml": vs, "se.yaml": _service_entry("app", "app.local", [(backends.port("a"), "a")])}
        with EdgeProcess(tmp_path, config, gateway_ports=(80,)) as edge:
            raw = _raw(edge.port(80), b"GET / HTTP/1.0\r\n\r\n")
            assert _status_of(raw) == 400 and b"connection: close" in raw.lower()
            raw = _raw(edge.port(80), b"GET / HTTP/1.0\r\nHost: anything.example\r\n\r\n")
            assert _status_of(raw) == 200


def test_posts_keep_the_connection_alive(stack):
    """Small request bodies arrive with their heads; the connection must stay usable for the next request
    (a response that went out while the body was still being forwarded used to close it unannounced)."""
    edge, _ = stack
    body = os.urandom(1024)
    with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=5) as s:
        conn = h11.Connection(h11.CLIENT)
        for i in range(20):
            s.sendall(conn.send(h11.Request(method="POST", target="/sha256", headers=[("host", "app.example.com"), ("content-length", str(len(body)))])) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            received = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = s.recv(65536)
                    assert data, f"connection closed after {i} requests"
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    assert event.status_code == 200
                    assert b"close" not in dict(event.headers).get(b"connection", b"")
                elif isinstance(event, h11.Data):
                    received += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert json.loads(received)["sha256"] == hashlib.sha256(body).hexdigest()
            conn.start_next_cycle()


def test_chunked_body_read_whole_goes_upstream_with_a_length(stack):
    edge, _ = stack
    raw = _raw(edge.port(80), b"POST /headers HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    seen = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    assert seen["body_bytes"] == 5
    assert seen["headers"].get("content-length") == "5" and "transfer-encoding" not in seen["headers"]
