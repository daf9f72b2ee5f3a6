"""Upstream policies through the real proxy, in memory (tests/workers/http/proxy_pair.py), on both codecs and trio's
autojump clock: outlier detection (ejection, its end, maxEjectionPercent, gateway errors), circuit breaking
(maxConnections, http1MaxPendingRequests, http2MaxRequests), the pool's idle timeout, and the probe that keeps a
pooled connection which spoke unasked from being reused.

The configs are those of tests/e2e/test_traffic_management.py. The pool's clock (workers/upstream.py reads
time.monotonic()) follows trio's during a pair, so PROBE_AFTER_IDLE_S and idleTimeout are virtual seconds.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from tests.e2e import test_traffic_management as tm
from tests.security.tools import gateway, route_all
from tests.workers.http.proxy_pair import CODECS, Reply, documents, get, proxy_pair, service_entry
from workers.upstream import PROBE_AFTER_IDLE_S

# The connection-pool and outlier-detection configs of tests/e2e/test_traffic_management.py, and http2MaxRequests.
CONFIG = "---\n".join([
    gateway(),
    documents(tm.ROUTES, "pools"),
    documents(tm.DESTINATION_RULES, "outlier", "gwerrors", "max-ejection", "cb", "idle"),
    route_all("requests.example.com", "requests.local"),
    """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: requests}
spec:
  host: requests.local
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 1}}}
""",
    service_entry("outlier.local", "10.0.5.1", "10.0.5.2"),
    service_entry("gwerrors.local", "10.0.5.3", "10.0.5.4", "10.0.5.5"),
    service_entry("max-ejection.local", "10.0.5.6", "10.0.5.7"),
    service_entry("cb.local", "10.0.5.8"),
    service_entry("requests.local", "10.0.5.9"),
    service_entry("idle.local", "10.0.5.10"),
])

OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"

pytestmark = pytest.mark.parametrize("codec", CODECS)


def always(status: int):
    return lambda request: Reply(status, request.connection.backend.name.encode())


async def statuses(pair, host: str, n: int) -> Counter:
    """n requests, each on a new connection (as the e2e suite's fresh clients): (status, body) counts."""
    seen = Counter()
    for _ in range(n):
        response = await pair.request(get(host))
        seen[(response.status, response.body.decode())] += 1
    return seen


# ---------------------------------------------------------------------------------------------- outlier detection


async def test_outlier_detection_ejects_and_returns(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        good, bad = pair.backend("10.0.5.1"), pair.backend("10.0.5.2")
        bad.handler = always(500)
        balancer = pair.cluster("outlier.local").balancer
        # Two consecutive 5xx eject `bad` (the default retry policy does not retry a 500).
        assert await statuses(pair, "outlier.example.com", 40) == Counter({(200, "10.0.5.1:80"): 38, (500, "10.0.5.2:80"): 2})
        state = balancer.states[1]
        assert (state.times_ejected, balancer.ejections_total, state.ejected_until) == (1, 1, pytest.approx(2.0))
        # Ejected for baseEjectionTime (2 s): no traffic at all.
        await trio.sleep(1.9)
        assert await statuses(pair, "outlier.example.com", 20) == Counter({(200, "10.0.5.1:80"): 20})
        assert len(bad.requests) == 2
        # Healthy again and the ejection over: it gets its share back.
        bad.handler = always(200)
        await trio.sleep(0.3)
        counts = await statuses(pair, "outlier.example.com", 20)
        assert counts == Counter({(200, "10.0.5.1:80"): 10, (200, "10.0.5.2:80"): 10})
        assert len(good.requests) == 38 + 20 + 10


async def test_consecutive_gateway_errors_eject_only_on_502_503_504(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend("10.0.5.4").handler = always(502)
        pair.backend("10.0.5.5").handler = always(500)
        await statuses(pair, "gwerrors.example.com", 30)
        counts = await statuses(pair, "gwerrors.example.com", 30)
        # consecutiveGatewayErrors 1 ejected the 502 endpoint for 30 s; a 500 is no gateway error (and
        # consecutive5xxErrors 0 is off), so that endpoint keeps its share.
        assert counts == Counter({(200, "10.0.5.3:80"): 15, (500, "10.0.5.5:80"): 15})
        assert len(pair.backend("10.0.5.4").requests) == 1


async def test_max_ejection_percent_keeps_some_endpoints(autojump_clock, tmp_path, codec):
    """Both endpoints fail and one 5xx ejects, but maxEjectionPercent 10 ejects at most one of the two (Envoy always
    allows one): the other keeps taking traffic, so no request meets "no healthy upstream"."""
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend("10.0.5.6").handler = always(500)
        pair.backend("10.0.5.7").handler = always(500)
        counts = await statuses(pair, "max-ejection.example.com", 30)
        assert sum(counts.values()) == 30 and {status for status, _ in counts} == {500}
        balancer = pair.cluster("max-ejection.local").balancer
        assert sum(1 for s in balancer.states if s.ejected_until > trio.current_time()) == 1


# ---------------------------------------------------------------------------------------------- circuit breaking


async def test_over_max_connections_one_request_waits_and_the_next_overflows(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        backend = pair.backend("10.0.5.8")
        backend.handler = lambda request: Reply(200, request.target, delay=1)
        clients = [pair.client() for _ in range(3)]
        for i, client in enumerate(clients):
            client.send(get("cb.example.com", f"/{i}"))
            await pair.settle()
        overflow = await clients[2].response()
        assert (overflow.status, overflow.body, overflow.header(b"x-envoy-overloaded")) == (503, OVERFLOW_BODY, b"true")
        assert trio.current_time() == 0  # at once
        first, second = await clients[0].response(), await clients[1].response()
        assert (first.body, second.body, trio.current_time()) == (b"/0", b"/1", pytest.approx(2.0))
        assert len(backend.connections) == 1  # the waiting request took the connection the first one released
        await pair.settle()
        by_path = {log.path: log for log in pair.logs}
        assert (by_path["/2"].flags, by_path["/2"].details) == ("UO", "upstream_reset_before_response_started{overflow}")
        circuit = pair.cluster("cb.local").circuit
        assert (circuit.overflows, circuit.pending, circuit.requests, circuit.connections) == (1, 0, 0, 1)


async def test_over_max_requests_overflows_at_once(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend("10.0.5.9").handler = lambda request: Reply(200, b"slow", delay=1)
        first = pair.client()
        first.send(get("requests.example.com"))
        await pair.settle()
        second = await pair.request(get("requests.example.com"))
        assert (second.status, second.body, second.header(b"x-envoy-overloaded")) == (503, OVERFLOW_BODY, b"true")
        await pair.settle()
        assert (pair.logs[-1].flags, pair.logs[-1].details) == ("UO", "overflow")
        assert (await first.response()).body == b"slow"


# ---------------------------------------------------------------------------------------------- the pool


async def test_the_pool_idle_timeout_closes_upstream_connections(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.nursery.start_soon(pair.ctx.pools.serve_idle_reaper)
        assert (await pair.request(get("idle.example.com"))).status == 200
        [conn] = pair.backend("10.0.5.10").connections
        await trio.sleep(0.9)
        assert not conn.closed_by_proxy and pair.ctx.pools.statistics()["idle"] == 1
        await trio.sleep(1.2)  # idleTimeout 1s, and the reaper passes every second
        assert conn.closed_by_proxy and pair.ctx.pools.statistics()["idle"] == 0
        assert pair.cluster("idle.local").circuit.connections == 0


async def test_a_pooled_connection_that_speaks_unasked_is_never_reused(autojump_clock, tmp_path, codec):
    """The unasked response arrives while the connection sits in the pool: the probe before reuse (of a connection
    idle for PROBE_AFTER_IDLE_S or more) sees it and the next request takes a fresh connection."""
    poison = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        backend = pair.backend("10.0.5.10")
        backend.handler = lambda request: Reply(200, b"answer for " + request.target, after=(0.05, poison))
        client = pair.client()
        for i in range(5):
            client.send(get("idle.example.com", f"/r{i}"))
            assert (await client.response()).body == b"answer for /r%d" % i
            await trio.sleep(PROBE_AFTER_IDLE_S + 0.1)  # the unasked response arrives meanwhile
        assert [len(c.requests) for c in backend.connections] == [1] * 5
        assert all(c.closed_by_proxy for c in backend.connections[:4])
        assert pair.ctx.pools.statistics()["reuses"] == 0


async def test_a_pooled_connection_the_backend_closed_is_not_reused(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        backend = pair.backend("10.0.5.10")
        backend.answer(Reply(200, b"first", close=True, announce=False), Reply(200, b"second"))
        client = pair.client()
        client.send(get("idle.example.com"))
        assert (await client.response()).body == b"first"
        await trio.sleep(PROBE_AFTER_IDLE_S)
        client.send(get("idle.example.com"))
        assert (await client.response()).body == b"second"
        assert len(backend.connections) == 2
