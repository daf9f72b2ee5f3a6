# End to end: HTTP/2 towards upstreams and the gRPC semantics of the router, through the real `edge run` (one
# worker, so that connection and stream counts are exact) to HTTP/2 servers on loopback built on the h2 library
# (tests/e2e/h2_backend.py), with HTTP/1.1 clients. What is checked is what crossed the wire: the pseudo-headers
# and fields the upstream received, streams multiplexed on one connection, maxConcurrentStreams, a GOAWAY with
# streams in flight, a client leaving (RST_STREAM CANCEL upstream), ALPN h2, and the gRPC replies (trailers-only
# local replies, fault abort, route timeout, retry on UNAVAILABLE, grpc-timeout rewritten).
from __future__ import annotations

import json
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import trustme

from tests.e2e.h2_backend import H2Backend, wait_for
from tests.e2e.harness import EdgeProcess, http_get

pytestmark = pytest.mark.e2e

GRPC = {"content-type": "application/grpc", "te": "trailers"}


def service_entry(host: str, ports: list[int], protocol: str = "HTTP2", port: int = 80) -> str:
    endpoints = "".join(f"  - address: 127.0.0.1\n    ports: {{p: {p}}}\n" for p in ports)
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host.replace('.', '-')}}}
spec:
  hosts: [{host}]
  resolution: STATIC
  ports: [{{number: {port}, name: p, protocol: {protocol}}}]
  endpoints:
{endpoints}---
"""


def config(a: H2Backend, b: H2Backend, bad: H2Backend, limited: H2Backend, secure: H2Backend, ca_file: str) -> str:
    return (
        service_entry("h2.test", [a.port])
        + service_entry("grpc-a.test", [a.port], "GRPC")
        + service_entry("grpc-b.test", [b.port], "GRPC")
        + service_entry("upgrade.test", [b.port], "HTTP")
        + service_entry("retry.test", [bad.port, b.port], "GRPC")
        + service_entry("limited.test", [limited.port])
        + service_entry("secure.test", [secure.port], "GRPC", port=443)
        + f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: upgrade}}
spec:
  host: upgrade.test
  trafficPolicy: {{connectionPool: {{http: {{h2UpgradePolicy: UPGRADE}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: limited}}
spec:
  host: limited.test
  trafficPolicy: {{connectionPool: {{http: {{maxConcurrentStreams: 2}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: secure.test
  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {ca_file}, sni: secure.test}}}}
---
apiVersion: networking.istio.io/v1
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
  - match: [{{uri: {{prefix: /pkg.Weighted/}}}}]
    route:
    - {{destination: {{host: grpc-a.test}}, weight: 75}}
    - {{destination: {{host: grpc-b.test}}, weight: 25}}
  - match: [{{uri: {{prefix: /pkg.Fault/}}}}]
    fault: {{abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: grpc-a.test}}}}]
  - match: [{{uri: {{prefix: /pkg.Slow/}}}}]
    timeout: 0.5s
    route: [{{destination: {{host: grpc-a.test}}}}]
  - match: [{{uri: {{prefix: /pkg.Retry/}}}}]
    retries: {{attempts: 3, retryOn: unavailable}}
    route: [{{destination: {{host: retry.test}}}}]
  - match: [{{uri: {{prefix: /pkg.NoRetry/}}}}]
    retries: {{attempts: 3, retryOn: deadline-exceeded}}
    route: [{{destination: {{host: retry.test}}}}]
  - match: [{{uri: {{prefix: /pkg.Secure/}}}}]
    route: [{{destination: {{host: secure.test}}}}]
  - match: [{{uri: {{prefix: /upgrade/}}}}]
    route: [{{destination: {{host: upgrade.test}}}}]
  - match: [{{uri: {{prefix: /limited/}}}}]
    route: [{{destination: {{host: limited.test}}}}]
  - match: [{{uri: {{prefix: /mirrored/}}}}]
    route: [{{destination: {{host: h2.test}}}}]
    mirror: {{host: grpc-b.test}}
  - match: [{{uri: {{prefix: /}}}}, {{uri: {{prefix: /pkg.Echo/}}}}]
    route: [{{destination: {{host: h2.test}}}}]
"""
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("secure.test")
    workdir = tmp_path_factory.mktemp("h2up")
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_tls)
    server_tls.set_alpn_protocols(["h2"])
    backends = [H2Backend("a"), H2Backend("b"), H2Backend("bad"), H2Backend("limited"), H2Backend("secure", tls=server_tls)]
    for backend in backends:
        backend.__enter__()
    backends[2].fail_grpc = 14
    a, b, bad, limited, secure = backends
    try:
        with EdgeProcess(workdir, {"h2.yaml": config(a, b, bad, limited, secure, str(ca_file))}, workers=1) as edge:
            yield edge, {backend.name: backend for backend in backends}
    finally:
        for backend in backends:
            backend.stop()


def fields(record: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        out.setdefault(name, []).append(value)
    return out


def test_http1_request_goes_upstream_as_h2_with_mapped_headers(env):
    edge, backends = env
    a = backends["a"]
    a.reset()
    status, body, headers = http_get(edge.port(80), "/echo?q=1", host="h2.test", method="POST", body=b"hello",
                                     headers={"Connection": "keep-alive, x-hop", "x-hop": "1", "te": "trailers, deflate", "Cookie": "a=1; b=2"})
    assert status == 200, body
    assert headers["x-served-by"] == "a"
    seen = fields(a.requests()[-1])
    assert seen[":method"] == ["POST"] and seen[":scheme"] == ["http"] and seen[":path"] == ["/echo?q=1"]
    assert seen[":authority"] == ["h2.test"]
    for name in ("host", "connection", "keep-alive", "transfer-encoding", "x-hop"):
        assert name not in seen, name
    assert seen["te"] == ["trailers"]  # the one TE value HTTP/2 allows, as Envoy forwards it
    assert seen["cookie"] == ["a=1; b=2"]
    assert seen["content-length"] == ["5"] and json.loads(body)["body"] == "hello"
    assert seen["x-forwarded-proto"] == ["http"] and "x-request-id" in seen


def test_h2_upgrade_policy_upgrades_an_http_port(env):
    edge, backends = env
    status, body, _ = http_get(edge.port(80), "/upgrade/x", host="upgrade.test")
    assert status == 200 and json.loads(body)["instance"] == "b"


def test_streams_share_one_connection(env):
    edge, backends = env
    a = backends["a"]
    a.reset()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: http_get(edge.port(80), "/delay/300", host="h2.test")[0], range(12)))
    assert results == [200] * 12
    assert a.connections() == 0  # the connection opened by an earlier test carries them all
    assert a.max_streams() >= 4


def test_max_concurrent_streams_bounds_streams_per_connection(env):
    edge, backends = env
    limited = backends["limited"]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: http_get(edge.port(80), "/limited/delay/300", host="x.test")[0], range(6)))
    assert results == [200] * 6
    assert limited.max_streams() == 2
    assert limited.connections() == 3


def test_goaway_with_streams_in_flight_retries_the_refused_ones(env):
    edge, backends = env
    b = backends["b"]
    b.reset()
    b.goaway_after = 3
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: http_get(edge.port(80), "/upgrade/goaway", host="x.test"), range(3)))
    assert [r[0] for r in results] == [200] * 3, results
    # Three streams reached the first connection; the two above GOAWAY's last-stream-id came again on a new one.
    assert b.count() == 5
    assert b.connections() >= 1


def test_client_leaving_resets_the_upstream_stream(env):
    edge, backends = env
    a = backends["a"]
    a.reset()
    sock = socket.create_connection(("127.0.0.1", edge.port(80)))
    sock.sendall(b"GET /hang HTTP/1.1\r\nHost: h2.test\r\n\r\n")
    assert wait_for(lambda: a.count() == 1)
    sock.close()
    assert wait_for(lambda: a.resets == [("/hang", 8)], timeout_s=5.0), a.resets  # RST_STREAM CANCEL


def test_trailers_are_not_sent_to_http1_clients(env):
    edge, _ = env
    sock = socket.create_connection(("127.0.0.1", edge.port(80)))
    sock.sendall(b"GET /trailers HTTP/1.1\r\nHost: h2.test\r\nTE: trailers\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in data.lower()
    assert b"x-trailer" not in data and data.endswith(b"0\r\n\r\n")


def test_tls_upstream_negotiates_h2(env):
    edge, backends = env
    status, body, _ = http_get(edge.port(80), "/pkg.Secure/Call", host="x.test", method="POST", headers=GRPC, body=b"\0\0\0\0\0")
    assert status == 200 and json.loads(body)["instance"] == "secure"
    assert backends["secure"].alpn[-1] == "h2"
    assert fields(backends["secure"].requests()[-1])[":scheme"] == ["https"]


def test_weighted_routing_by_service_prefix(env):
    edge, _ = env
    served = [http_get(edge.port(80), "/pkg.Weighted/Call", host="x.test", method="POST", headers=GRPC, body=b"")[2]["x-served-by"] for _ in range(200)]
    # 75/25: a ≥ 4.5 standard deviations from the edge of the window (sd ≈ 6.1).
    assert 122 <= served.count("a") <= 178, served.count("a")
    assert served.count("a") + served.count("b") == 200


def test_grpc_local_replies_are_trailers_only(env):
    edge, _ = env
    # No route: the gateway has one for every path here, so use a host on another port's absence: a method 404 is
    # the route table's miss. Fault abort with grpcStatus, and a route timeout (504 → UNAVAILABLE, as Envoy maps it).
    status, body, headers = http_get(edge.port(80), "/pkg.Fault/Call", host="x.test", method="POST", headers=GRPC, body=b"")
    assert (status, body, headers["grpc-status"], headers["grpc-message"]) == (200, b"", "14", "fault filter abort")
    assert headers["content-type"] == "application/grpc"
    status, body, headers = http_get(edge.port(80), "/pkg.Slow/delay/2000", host="x.test", method="POST", headers=GRPC, body=b"")
    assert (status, body, headers["grpc-status"], headers["grpc-message"]) == (200, b"", "14", "upstream request timeout")
    # The same timeout without gRPC is Envoy's 504.
    status, _, _ = http_get(edge.port(80), "/pkg.Slow/delay/2000", host="x.test", method="POST", body=b"")
    assert status == 504


def test_grpc_timeout_caps_the_route_and_is_rewritten(env):
    edge, backends = env
    a = backends["a"]
    # grpc-timeout shorter than the route: it is the request's timeout (0.2 s < 2 s of delay).
    status, _, headers = http_get(edge.port(80), "/pkg.Echo/delay/2000", host="x.test", method="POST", headers={**GRPC, "grpc-timeout": "200m"}, body=b"")
    assert (status, headers["grpc-status"]) == (200, "14")
    # Longer than the route timeout (0.5 s): capped, and the upstream sees the time left.
    a.reset()
    status, _, _ = http_get(edge.port(80), "/pkg.Slow/Call", host="x.test", method="POST", headers={**GRPC, "grpc-timeout": "10S"}, body=b"")
    assert status == 200
    sent = fields(a.requests()[-1])["grpc-timeout"][0]
    assert sent.endswith("m") and 0 < int(sent[:-1]) <= 500, sent


def test_retry_on_unavailable_reads_the_response_headers(env):
    edge, backends = env
    bad, b = backends["bad"], backends["b"]
    bad.reset()
    b.reset()
    for _ in range(6):
        status, _, headers = http_get(edge.port(80), "/pkg.Retry/Call", host="x.test", method="POST", headers=GRPC, body=b"")
        assert (status, headers.get("x-served-by")) == (200, "b"), headers
    assert bad.count() >= 1  # some tries met the failing endpoint and were retried on the other
    # retryOn without unavailable: a try that meets the failing endpoint is answered as it is.
    statuses = {http_get(edge.port(80), "/pkg.NoRetry/Call", host="x.test", method="POST", headers=GRPC, body=b"")[2].get("grpc-status") for _ in range(8)}
    assert "14" in statuses


def test_mirror_uses_the_h2_cluster(env):
    edge, backends = env
    b = backends["b"]
    b.reset()
    status, _, _ = http_get(edge.port(80), "/mirrored/x", host="h2.test")
    assert status == 200
    assert wait_for(lambda: b.count() == 1)
    assert fields(b.requests()[-1])[":path"] == ["/mirrored/x"]


def test_h2_client_gets_trailers_after_the_data(env):
    # Frame by frame: HEADERS, DATA without END_STREAM, then the trailers as HEADERS with END_STREAM (RFC 9113
    # §8.1); a DATA frame carrying END_STREAM before the trailers is what grpcio rejects.
    from tests.security.h2_client import DataFrame, H2Client, HeadersFrame

    edge, _ = env
    with H2Client(edge.port(80)) as client:
        client.request(1, "/trailers", authority="h2.test")
        frames = [f for f in client.frames_until(lambda f: f.stream_id == 1 and "END_STREAM" in f.flags) if f.stream_id == 1]
    kinds = [(type(f).__name__, "END_STREAM" in f.flags) for f in frames]
    assert kinds[0] == ("HeadersFrame", False) and kinds[-1] == ("HeadersFrame", True), kinds
    assert all(kind == ("DataFrame", False) for kind in kinds[1:-1]) and len(kinds) >= 3, kinds
    assert b"".join(f.data for f in frames if isinstance(f, DataFrame))
    trailers = dict(frames[-1].fields)
    assert isinstance(frames[-1], HeadersFrame) and trailers == {"grpc-status": "0", "x-trailer": "yes"}
