"""Retries and timeouts through the real proxy, in memory (tests/workers/http/proxy_pair.py), on both codecs, on trio's
autojump clock: retryOn (5xx, gateway-error, reset, connect-failure, retriable-4xx, retriable status codes), attempts,
perTryTimeout, the route timeout, the connect timeout, the retry budget (DestinationRule maxRetries), the held
retriable response relayed when the tries are spent, and bodies that can or cannot be replayed.

The configs are the e2e suite's (tests/e2e/test_traffic_management.py, test_http_proxy.py); the backends' paths are
the sample backend's (proxy_pair.sample_reply). Durations are virtual: the clock says what the gateway waited.
"""

from __future__ import annotations

import pytest
import trio

from tests.e2e import test_traffic_management as tm
from tests.security.tools import gateway
from tests.workers.http.proxy_pair import CODECS, Reply, documents, get, post, proxy_pair, sample_reply, service_entry

# The retry, timeout and connection-pool configs of tests/e2e/test_traffic_management.py, and hosts of our own for
# connect failures and the retry budget.
CONFIG = "---\n".join([
    gateway(),
    documents(tm.ROUTES, "retries", "timeouts", "pools"),
    documents(tm.DESTINATION_RULES, "app", "flaky", "blackhole"),
    """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: others}
spec:
  hosts: [connect.example.com, down.example.com, budget.example.com]
  gateways: [gw]
  http:
  - {match: [{authority: {exact: connect.example.com}}], route: [{destination: {host: half-dead.local}}]}
  - {match: [{authority: {exact: down.example.com}, uri: {prefix: /once}}], retries: {attempts: 0}, route: [{destination: {host: down.local}}]}
  - {match: [{authority: {exact: down.example.com}}], route: [{destination: {host: down.local}}]}
  - {retries: {attempts: 2, retryOn: 5xx}, route: [{destination: {host: budget.local}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: half-dead}
spec:
  host: half-dead.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: budget}
spec:
  host: budget.local
  trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}
""",
    service_entry("retry-target.local", "10.0.1.1"),
    service_entry("flaky.local", "10.0.1.2", "10.0.1.3"),
    tm.service_entry("app.local", [(10001, {"version": "a"})]),
    service_entry("half-dead.local", "10.0.1.7", "10.0.1.8"),
    service_entry("down.local", "10.0.1.6"),
    service_entry("blackhole.local", "10.0.1.5"),
    service_entry("budget.local", "10.0.1.9"),
])

TARGET, BAD, GOOD, BLACKHOLE, DOWN, DEAD, ALIVE, BUDGET = "10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.1.8", "10.0.1.9"
APP = ("127.0.0.1", 10001)  # app.local subset a, as the e2e suite's ServiceEntry writes it
RESET_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
CONNECT_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
PROTOCOL_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"

pytestmark = pytest.mark.parametrize("codec", CODECS)


def numbered(request) -> Reply:
    """sample_reply, with the try's number in the body: which try's answer reached the client."""
    reply = sample_reply(request)
    if reply.kind == "respond" and reply.truncate is None:
        reply.body = b"try " + (request.header(b"x-envoy-attempt-count") or b"?")
    return reply


async def one(pair, request: bytes, method: bytes = b"GET"):
    """One request on a new connection: its response and its log."""
    response = await pair.request(request, method)
    await pair.settle()
    return response, pair.logs[-1]


RETRY_ON = [
    # (path, headers, status, body, tries the backend saw, flags, details)
    ("/status/418", (), 418, b"try 3", 3, "-", "via_upstream"),  # a status code in retryOn; the last try is relayed
    ("/status/409", (), 409, b"try 3", 3, "-", "via_upstream"),  # retriable-4xx is 409
    ("/status/502", (), 502, b"try 3", 3, "-", "via_upstream"),  # gateway-error: 502, 503, 504
    ("/status/500", (), 500, b"try 1", 1, "-", "via_upstream"),  # ... not 500
    ("/status/503", (), 503, b"try 1", 1, "-", "via_upstream"),  # Istio >= 1.24's default policy: not 503
    ("/none/x", (), 200, b"try 1", 1, "-", "via_upstream"),
    ("/drop", (), 503, RESET_BODY, 3, "URX", "upstream_reset_before_response_started{connection_termination}"),
    ("/drop", ("x-gateway-error: 1",), 503, RESET_BODY, 3, "URX", "upstream_reset_before_response_started{connection_termination}"),
    ("/drop", ("x-default-policy: 1",), 503, RESET_BODY, 1, "UC", "upstream_reset_before_response_started{connection_termination}"),
    ("/garbage", (), 502, PROTOCOL_BODY, 3, "UPE", "upstream_reset_before_response_started{protocol_error}"),
]


@pytest.mark.parametrize(("path", "headers", "status", "body", "tries", "flags", "details"), RETRY_ON, ids=[
    "418-listed", "409-retriable-4xx", "502-gateway-error", "500-not-gateway-error", "503-default-policy", "attempts-0",
    "reset", "reset-gateway-error", "reset-default-policy", "garbage-5xx",
])  # fmt: skip
async def test_retry_on(autojump_clock, tmp_path, codec, path, headers, status, body, tries, flags, details):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        target = pair.backend(TARGET)
        target.handler = numbered
        response, log = await one(pair, get("retry.example.com", path, *headers))
        assert (response.status, response.body) == (status, body)
        assert [r.header(b"x-envoy-attempt-count") for r in target.requests] == [b"%d" % i for i in range(1, tries + 1)]
        assert len({r.header(b"x-request-id") for r in target.requests}) == 1  # one request id across tries
        assert (log.status, log.flags, log.details, log.attempts, log.upstream_host) == (status, flags, details, tries, "10.0.1.1:80")
        # Every failed or retried try's connection was closed, none is left half-used in the pool.
        assert all(c.closed_by_proxy for c in target.connections[: tries - 1])
        assert pair.ctx.pools.statistics()["active"] == 0


async def test_per_try_timeout_is_retried_then_answered_504(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(TARGET).handler = sample_reply
        started = trio.current_time()
        response, log = await one(pair, get("retry.example.com", "/delay/2"))
        elapsed = trio.current_time() - started
        assert (response.status, response.body) == (504, b"upstream request timeout")
        assert 0.6 <= elapsed < 0.6 + 0.025 + 0.05 + 0.001  # three tries of 0.2 s and two backoffs, not 2 s
        assert (log.flags, log.details, log.attempts) == ("UT", "upstream_response_timeout", 3)
        assert len(pair.backend(TARGET).requests) == 3
        assert all(c.closed_by_proxy for c in pair.backend(TARGET).connections)


async def test_route_timeout_answers_504_and_lets_the_upstream_connection_go(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        app = pair.backend(*APP)
        app.handler = sample_reply
        started = trio.current_time()
        response, log = await one(pair, get("timeout.example.com", "/delay/3"))
        assert (response.status, response.body) == (504, b"upstream request timeout")
        assert trio.current_time() - started == pytest.approx(0.5)
        assert (log.flags, log.details, log.attempts, log.duration_ms) == ("UT", "upstream_response_timeout", 1, 500)
        assert app.connections[0].closed_by_proxy
        # The backend's request carried the timeout Envoy tells upstream.
        assert app.requests[0].header(b"x-envoy-expected-rq-timeout-ms") == b"500"
        response, _ = await one(pair, get("timeout.example.com", "/delay/0.05"))
        assert response.status == 200


async def test_5xx_is_retried_on_another_endpoint(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        bad, good = pair.backend(BAD), pair.backend(GOOD)
        bad.handler = lambda request: Reply(503, b"bad")
        client = pair.client()
        for _ in range(20):
            client.send(get("retry.example.com", "/"))
            response = await client.response()
            assert (response.status, response.body) == (200, b"10.0.1.3:80")
        await pair.settle()
        # ROUND_ROBIN puts every request on `bad` first, the retry never goes back to the host that failed.
        assert [r.header(b"x-envoy-attempt-count") for r in bad.requests] == [b"1"] * 20
        assert [r.header(b"x-envoy-attempt-count") for r in good.requests] == [b"2"] * 20
        assert {(log.attempts, log.upstream_host) for log in pair.logs} == {(2, "10.0.1.3:80")}


@pytest.mark.parametrize("split", ["whole", 1000])
async def test_a_post_body_is_replayed_on_retry(autojump_clock, tmp_path, codec, split):
    payload = bytes(range(256)) * 40
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(BAD).handler = lambda request: Reply(503, b"bad")
        client = pair.client()
        client.send(post("retry.example.com", "/sha256", payload), split)
        assert (await client.response(b"POST")).status == 200
        assert pair.backend(BAD).requests[0].body == payload
        assert pair.backend(GOOD).requests[0].body == payload
        assert pair.backend(GOOD).requests[0].header(b"content-length") == b"%d" % len(payload)


async def test_a_body_too_large_to_keep_is_not_replayed(autojump_clock, tmp_path, codec):
    """Envoy keeps a body for replay up to its buffer limit (1 MiB): beyond it the first endpoint's 503 is the answer."""
    payload = b"z" * (2 * 1024 * 1024)
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(BAD).handler = lambda request: Reply(503, b"bad")
        response, log = await one(pair, post("retry.example.com", "/sha256", payload), b"POST")
        assert (response.status, response.body) == (503, b"bad")
        assert [len(r.body) for r in pair.backend(BAD).requests] == [len(payload)]
        assert pair.backend(GOOD).requests == []
        assert (log.attempts, log.bytes_received) == (1, len(payload))


async def test_the_retry_budget_answers_with_what_the_last_try_got(autojump_clock, tmp_path, codec):
    """maxRetries 1: while one request is retrying, another one's retriable answer is relayed, not retried."""
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        backend = pair.backend(BUDGET)
        backend.answer(Reply(503, b"first, try 1"), Reply(200, b"first, try 2", delay=5), Reply(503, b"second, try 1"))
        first = pair.client()
        first.send(get("budget.example.com", "/a"))
        await trio.sleep(1)  # past the backoff: the first request is retrying, its second try waits on the backend
        assert len(backend.requests) == 2
        circuit = pair.cluster("budget.local").circuit
        assert (circuit.retries, circuit.max_retries) == (1, 1)
        second = pair.client()
        second.send(get("budget.example.com", "/b"))
        response = await second.response()
        assert (response.status, response.body) == (503, b"second, try 1")
        await pair.settle()
        assert (pair.logs[-1].attempts, pair.logs[-1].flags) == (1, "-")
        assert circuit.overflows == 1
        response = await first.response()
        assert (response.status, response.body) == (200, b"first, try 2")
        await pair.settle()
        assert (pair.logs[-1].attempts, circuit.retries, circuit.requests) == (2, 0, 0)


async def test_a_refused_connect_is_retried_on_another_endpoint_by_default(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(DEAD).refuse = True
        client = pair.client()
        for _ in range(6):
            client.send(get("connect.example.com"))
            assert (await client.response()).body == b"10.0.1.8:80"
        await pair.settle()
        # ROUND_ROBIN's turn comes back to the refusing endpoint (no outlier detection here): every request tries it
        # first, and the retry goes to the other one, over one pooled connection.
        assert [(log.attempts, log.upstream_host, log.flags) for log in pair.logs] == [(2, "10.0.1.8:80", "-")] * 6
        assert [c["address"] for c in pair.connects] == [DEAD, ALIVE] + [DEAD] * 5


@pytest.mark.parametrize(("path", "tries", "flags"), [("/", 3, "URX"), ("/once", 1, "UF")])
async def test_a_refusing_upstream_is_503(autojump_clock, tmp_path, codec, path, tries, flags):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(DOWN).refuse = True
        response, log = await one(pair, get("down.example.com", path))
        assert (response.status, response.body) == (503, CONNECT_BODY)
        assert (log.flags, log.details, log.attempts) == (flags, "upstream_reset_before_response_started{connection_failure}", tries)
        assert len(pair.connects) == tries


async def test_the_connect_timeout_bounds_a_connect_that_hangs(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(BLACKHOLE).blackhole = True
        started = trio.current_time()
        response, log = await one(pair, get("connect-timeout.example.com"))
        assert (response.status, response.body) == (503, CONNECT_BODY)
        assert trio.current_time() - started == pytest.approx(0.3)  # connectTimeout 0.3s, not the default 10 s
        assert (log.flags, log.attempts) == ("UF", 1)
        assert pair.cluster("blackhole.local").circuit.connections == 0  # the reservation was given back


@pytest.mark.parametrize("reply", [Reply.close_now(), Reply.reset()], ids=["fin", "rst"])
async def test_an_upstream_closing_before_its_answer_is_503_uc(autojump_clock, tmp_path, codec, reply):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(TARGET).answer(reply)
        response, log = await one(pair, get("retry.example.com", "/drop", "x-default-policy: 1"))
        assert (response.status, response.body) == (503, RESET_BODY)
        assert (log.flags, log.attempts) == ("UC", 1)


async def test_a_response_that_broke_after_it_started_is_not_retried(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(BAD).answer(Reply(200, b"x" * 1000, truncate=10))
        response, log = await one(pair, get("retry.example.com", "/drop-mid"))  # the flaky route: 5xx, attempts 3
        assert (response.status, response.body, response.complete) == (200, b"x" * 10, False)
        assert (log.flags, log.details, log.attempts) == ("UPE", "upstream_reset_after_response_started", 1)
        assert pair.backend(GOOD).requests == []
