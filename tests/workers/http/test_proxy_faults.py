"""Fault injection and route timeouts through the real proxy, in memory (tests/workers/http/proxy_pair.py), on both
codecs and trio's autojump clock: delays are virtual seconds, so istio.io's 7 s fault-injection task takes none.

Configs: the fault VirtualService of tests/e2e/test_traffic_management.py, and istio.io's fault-injection and
request-timeouts tasks with the YAML tests/e2e/test_istio_tasks.py applies (Bookinfo as published, bound to the
gateway), each step published as a new table generation the way `kubectl apply` + reload does.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from tests.e2e.test_istio_tasks import (
    BOOKINFO_GATEWAY,
    DESTINATION_RULE_ALL,
    TIMEOUTS_RATINGS_DELAY,
    TIMEOUTS_REVIEWS_V2,
    TIMEOUTS_REVIEWS_V2_HALF_SECOND,
    VIRTUAL_SERVICE_ALL_V1,
    VIRTUAL_SERVICE_RATINGS_TEST_ABORT,
    VIRTUAL_SERVICE_RATINGS_TEST_DELAY,
    bind_to_gateway,
    service_entry as bookinfo_service,
)
from tests.e2e import test_traffic_management as tm
from tests.security.tools import gateway
from tests.workers.http.proxy_pair import CODECS, documents, get, proxy_pair, sample_reply, service_entry

# The fault config of tests/e2e/test_traffic_management.py, and a delay followed by an abort of our own.
FAULTS = "---\n".join([
    gateway("fault.example.com", "both.example.com"),
    documents(tm.ROUTES, "faults"),
    documents(tm.DESTINATION_RULES, "app"),
    """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both}
spec:
  hosts: [both.example.com]
  gateways: [gw]
  http:
  - fault:
      delay: {fixedDelay: 2s, percentage: {value: 100}}
      abort: {httpStatus: 418, percentage: {value: 100}}
    route: [{destination: {host: fault-target.local}}]
""",
    tm.service_entry("app.local", [(10001, {"version": "a"})]),
    service_entry("fault-target.local", "10.0.3.2"),
])

APP, TARGET = ("127.0.0.1", 10001), "10.0.3.2"

pytestmark = pytest.mark.parametrize("codec", CODECS)


async def test_a_fault_delay_holds_the_request_then_forwards_it(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, FAULTS) as pair:
        client = pair.client()
        client.send(get("fault.example.com", "/slow"))
        await trio.sleep(0.499)
        assert client.received == b"" and pair.backend(*APP).requests == []  # still held at the gateway
        response = await client.response()
        assert (response.status, response.body, trio.current_time()) == (200, b"127.0.0.1:10001", pytest.approx(0.5))
        await pair.settle()
        assert (pair.logs[0].status, pair.logs[0].duration_ms) == (200, 500)


async def test_a_delayed_request_is_logged_with_di(autojump_clock, tmp_path, codec):
    """Envoy's %RESPONSE_FLAGS% keep DI whatever follows (found here: the relayed response's "-" replaced it)."""
    async with proxy_pair(tmp_path, codec, FAULTS) as pair:
        assert (await pair.request(get("fault.example.com", "/slow"))).status == 200
        await pair.settle()
        assert pair.logs[0].flags == "DI"


@pytest.mark.parametrize(
    ("path", "status", "body", "headers", "flags"),
    [
        ("/abort", 503, b"fault filter abort", {b"content-type": b"text/plain"}, "FI"),
        ("/grpc", 200, b"", {b"grpc-status": b"14", b"grpc-message": b"fault filter abort", b"content-type": b"application/grpc"}, "FI"),
    ],
)
async def test_a_fault_abort_answers_without_reaching_the_backend(autojump_clock, tmp_path, codec, path, status, body, headers, flags):
    async with proxy_pair(tmp_path, codec, FAULTS) as pair:
        client = pair.client()
        client.send(get("fault.example.com", path))
        response = await client.response()
        assert (response.status, response.body) == (status, body)
        assert {name: response.header(name) for name in headers} == headers
        await pair.settle()
        assert (pair.logs[0].flags, pair.logs[0].details) == (flags, "fault_filter_abort")
        assert pair.backend(TARGET).requests == [] and not client.closed


async def test_a_delay_then_an_abort(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, FAULTS) as pair:
        response = await pair.request(get("both.example.com"))
        assert (response.status, response.body, trio.current_time()) == (418, b"fault filter abort", pytest.approx(2.0))
        assert pair.backend(TARGET).requests == []


async def test_no_percentage_aborts_nothing_and_50_percent_aborts_half(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, FAULTS) as pair:
        client = pair.client()
        client.send(get("fault.example.com", "/never"))
        assert (await client.response()).status == 200
        statuses = Counter()
        for _ in range(400):
            client.send(get("fault.example.com", "/half"))
            response = await client.response()
            statuses[response.status] += 1
            assert response.body == (b"fault filter abort" if response.status == 500 else b"10.0.3.2:80")
        assert statuses[200] + statuses[500] == 400
        assert 140 <= statuses[500] <= 260, statuses  # seeded: the same count every run, near half
        assert len(pair.backend(TARGET).requests) == 1 + statuses[200]


# ============================================================================ istio.io tasks (Bookinfo)

BOOKINFO = "bookinfo-gateway"
REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
PORTS = {"productpage-v1": 10001, "details-v1": 10002, "ratings-v1": 10003, "reviews-v1": 10004, "reviews-v2": 10005, "reviews-v3": 10006}


def bookinfo(*applied: str) -> str:
    """The Bookinfo sample as tests/e2e/test_istio_tasks.py installs it, plus the task's applied resources (later
    ones replace earlier ones of the same kind and name, as `kubectl apply` does)."""
    p = PORTS.__getitem__
    services = [
        bookinfo_service("productpage", 9080, [(p("productpage-v1"), "v1")]),
        bookinfo_service("details", 9080, [(p("details-v1"), "v1")]),
        bookinfo_service("ratings", 9080, [(p("ratings-v1"), "v1")]),
        bookinfo_service("reviews", 9080, [(p("reviews-v1"), "v1"), (p("reviews-v2"), "v2"), (p("reviews-v3"), "v3")]),
    ]
    resources: dict[tuple[str, str], str] = {}
    for text in [*services, BOOKINFO_GATEWAY, DESTINATION_RULE_ALL, *applied]:
        for doc in text.split("\n---\n"):
            if doc.strip().strip("-").strip():
                kind = doc.split("kind:", 1)[1].split("\n", 1)[0].strip()
                name = doc.split("name:", 1)[1].split("\n", 1)[0].strip()
                resources[(kind, name)] = doc.strip().strip("-").strip() + "\n"
    return "---\n".join(resources.values())


def instance(pair, port: int) -> bytes:
    return next(name for name, p in PORTS.items() if p == port).encode()


async def call(pair, host: str, path: str = "/", user: str | None = None):
    """One request as the calling Bookinfo service makes it (end-user for a logged-in user)."""
    return await pair.request(get(host, path, *([f"end-user: {user}"] if user else [])), port=8080)


def name_backends(pair) -> None:
    """Each backend answers with its instance name, as the e2e sample backends do (after sample_reply's paths)."""
    for (address, port), backend in pair.backends.items():
        name = instance(pair, port)

        def answer(request, name=name):
            reply = sample_reply(request)
            if reply.kind == "respond":
                reply.body = name
            return reply

        backend.handler = answer


async def test_istio_fault_injection_task(autojump_clock, tmp_path, codec):
    """docs/tasks/traffic-management/fault-injection: a 7 s delay, then an HTTP 500 abort, for jason only."""
    base = [bind_to_gateway(VIRTUAL_SERVICE_ALL_V1, BOOKINFO)]
    async with proxy_pair(tmp_path, codec, bookinfo(*base, bind_to_gateway(VIRTUAL_SERVICE_RATINGS_TEST_DELAY, BOOKINFO))) as pair:
        name_backends(pair)
        # jason's call to ratings is held for 7 s.
        delayed = pair.client(8080)
        delayed.send(get(RATINGS, "/", "end-user: jason"))
        # productpage gives up on reviews after 3 s (its hard-coded timeout): nothing has come by then.
        await trio.sleep(3)
        assert delayed.received == b""
        # Everybody else is not delayed.
        started = trio.current_time()
        response = await call(pair, RATINGS, user="someone-else")
        assert (response.status, response.body, trio.current_time()) == (200, b"ratings-v1", started)
        # The abort rule: jason's call fails at once with 500 ("Ratings service is currently unavailable").
        pair.publish(bookinfo(*base, bind_to_gateway(VIRTUAL_SERVICE_RATINGS_TEST_ABORT, BOOKINFO)))
        response = await call(pair, RATINGS, user="jason")
        assert (response.status, response.body, trio.current_time()) == (500, b"fault filter abort", started)
        response = await call(pair, RATINGS)
        assert (response.status, response.body) == (200, b"ratings-v1")
        # The first delayed call, started under the delay rule, still completes after the full 7 s.
        response = await delayed.response()
        assert (response.status, response.body, trio.current_time()) == (200, b"ratings-v1", pytest.approx(7.0))
        await pair.settle()
        jason = [log for log in pair.logs if log.status == 200 and log.duration_ms == 7000]
        assert len(jason) == 1 and jason[0].upstream_host == f"127.0.0.1:{PORTS['ratings-v1']}"
        assert sum(1 for log in pair.logs if log.flags == "FI") == 1


async def test_istio_request_timeouts_task(autojump_clock, tmp_path, codec):
    """docs/tasks/traffic-management/request-timeouts: reviews v2 with a 0.5 s timeout, ratings delayed 2 s."""
    base = [bind_to_gateway(VIRTUAL_SERVICE_ALL_V1, BOOKINFO), bind_to_gateway(TIMEOUTS_REVIEWS_V2, BOOKINFO), bind_to_gateway(TIMEOUTS_RATINGS_DELAY, BOOKINFO)]
    async with proxy_pair(tmp_path, codec, bookinfo(*base)) as pair:
        name_backends(pair)
        # "a 2 second delay whenever you refresh the page": every call to ratings waits 2 s, then succeeds.
        started = trio.current_time()
        response = await call(pair, RATINGS)
        assert (response.status, response.body, trio.current_time() - started) == (200, b"ratings-v1", pytest.approx(2.0))
        # reviews-v2 answers only after its (delayed) ratings call: /delay/2 stands in for that wait. No timeout yet
        # (Istio's default is none), so the slow answer arrives.
        started = trio.current_time()
        response = await call(pair, REVIEWS, "/delay/2")
        assert (response.status, response.body, trio.current_time() - started) == (200, b"reviews-v2", pytest.approx(2.0))
        # With `timeout: 0.5s` the gateway gives up after half a second: "reviews are unavailable".
        pair.publish(bookinfo(*base, bind_to_gateway(TIMEOUTS_REVIEWS_V2_HALF_SECOND, BOOKINFO)))
        started = trio.current_time()
        response = await call(pair, REVIEWS, "/delay/2")
        assert (response.status, response.body, trio.current_time() - started) == (504, b"upstream request timeout", pytest.approx(0.5))
        # productpage retries once: two calls, 1 s in all instead of 2 × 2 s.
        started = trio.current_time()
        assert [(await call(pair, REVIEWS, "/delay/2")).status for _ in range(2)] == [504, 504]
        assert trio.current_time() - started == pytest.approx(1.0)
        await pair.settle()
        assert [log.flags for log in pair.logs[-3:]] == ["UT"] * 3
