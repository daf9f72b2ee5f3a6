# End to end: the HTTP/2 upstream pool's lifetimes and limits through the real `edge run` (one worker) to h2-library
# upstreams (tests/e2e/h2_backend.py): http2KeepAlive PINGs (an upstream that stops answering them loses its
# connection after the timeout, one that answers keeps it), the idle timeout, maxRequestsPerConnection, requests
# waiting as pending within http1MaxPendingRequests (and the overflow past it), and useClientProtocol (an HTTP/2
# client's request goes upstream as HTTP/2, an HTTP/1.1 client's as HTTP/1.1).
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.h2_backend import H2Backend, wait_for
from tests.e2e.harness import EdgeProcess, http_get
from tests.e2e.test_h2_upstream import service_entry
from tests.security.h2_client import H2Client

pytestmark = pytest.mark.e2e

NAMES = ("deaf", "pinged", "idle", "capped", "pending", "follow")


def rule(host: str, pool: str) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host.split('.')[0]}}}
spec:
  host: {host}
  trafficPolicy: {{connectionPool: {pool}}}
---
"""


def config(backends: dict[str, H2Backend]) -> str:
    keepalive = "{http: {http2KeepAlive: {interval: 0.5s, timeout: 0.5s}}}"
    text = "".join(service_entry(f"{name}.test", [backends[name].port], "HTTP" if name == "follow" else "HTTP2") for name in NAMES)
    text += rule("deaf.test", keepalive) + rule("pinged.test", keepalive)
    text += rule("idle.test", "{http: {idleTimeout: 1s}}")
    text += rule("capped.test", "{http: {maxRequestsPerConnection: 2}}")
    text += rule("pending.test", "{tcp: {maxConnections: 1}, http: {maxConcurrentStreams: 1, http1MaxPendingRequests: 2}}")
    text += rule("follow.test", "{http: {useClientProtocol: true}}")
    routes = "".join(f"  - match: [{{uri: {{prefix: /{name}/}}}}]\n    route: [{{destination: {{host: {name}.test}}}}]\n" for name in NAMES)
    return text + f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: routes}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
{routes}"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    backends = {name: H2Backend(name) for name in NAMES}
    backends["deaf"].answer_pings = False
    for backend in backends.values():
        backend.__enter__()
    try:
        with EdgeProcess(tmp_path_factory.mktemp("h2pool"), {"pool.yaml": config(backends)}, workers=1) as edge:
            yield edge, backends
    finally:
        for backend in backends.values():
            backend.stop()


def get(edge, path: str) -> int:
    return http_get(edge.port(80), path, host="x.test")[0]


def test_keepalive_pings_close_a_silent_upstream_and_keep_an_answering_one(env):
    edge, backends = env
    deaf, pinged = backends["deaf"], backends["pinged"]
    assert get(edge, "/deaf/a") == 200 and get(edge, "/pinged/a") == 200
    # A PING every 0.5 s; no frame within 0.5 s of one closes the connection (the silent upstream's).
    assert wait_for(lambda: deaf.closed() == 1, timeout_s=6), (deaf.pings(), deaf.closed())
    assert deaf.pings() >= 1
    assert wait_for(lambda: pinged.pings() >= 3, timeout_s=6)
    assert pinged.closed() == 0
    assert get(edge, "/pinged/b") == 200 and pinged.connections() == 1  # the same connection serves again
    assert get(edge, "/deaf/b") == 200 and deaf.connections() == 2  # a new one for the closed one


def test_idle_connection_is_closed_after_the_idle_timeout(env):
    edge, backends = env
    idle = backends["idle"]
    assert get(edge, "/idle/a") == 200
    assert idle.closed() == 0
    assert wait_for(lambda: idle.closed() == 1, timeout_s=5)  # idleTimeout 1 s (checked every second)
    assert get(edge, "/idle/b") == 200 and idle.connections() == 2


def test_max_requests_per_connection_opens_a_new_connection(env):
    edge, backends = env
    capped = backends["capped"]
    assert [get(edge, f"/capped/{i}") for i in range(5)] == [200] * 5
    assert capped.connections() == 3  # 2 + 2 + 1 requests
    assert [r["stream"] for r in capped.requests()] == [1, 3, 1, 3, 1]


def test_pending_requests_wait_for_a_stream_and_overflow_past_the_limit(env):
    edge, backends = env
    pending = backends["pending"]
    # One connection with one stream: one request in flight, two waiting as pending, the fourth overflows (503 UO).
    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(lambda i: get(edge, "/pending/delay/600"), range(4)))
    assert statuses == [200, 200, 200, 503]
    assert pending.connections() == 1 and pending.max_streams() == 1 and pending.count() == 3


def test_use_client_protocol_follows_the_client(env):
    edge, backends = env
    follow = backends["follow"]
    status, body, _ = http_get(edge.port(80), "/follow/one", host="x.test")
    assert status == 200 and json.loads(body)["protocol"] == "http/1.1"
    with H2Client(edge.port(80)) as client:
        client.request(1, "/follow/two", authority="x.test")
        headers, body, reset = client.response(1)
    assert reset is None and headers[":status"] == "200"
    assert [r["protocol"] for r in follow.requests()] == ["http/1.1", "h2"]
