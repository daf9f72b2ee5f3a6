"""Request mirroring through the real proxy, in memory (tests/workers/http/proxy_pair.py), on both codecs: copies go
out after the primary's response, with the primary's request id, path and body, to every mirror at its percentage;
nothing about a mirror reaches the client. Mirrors run in the pair's nursery (the worker's background nursery).

The config is the mirror VirtualService of tests/e2e/test_traffic_management.py.
"""

from __future__ import annotations

import pytest
import trio

from edge.table import Options
from tests.e2e import test_traffic_management as tm
from tests.security.tools import gateway
from tests.workers.http.proxy_pair import CODECS, Reply, documents, get, post, proxy_pair, service_entry
from workers.http.mirror import MIRROR_TIMEOUT_S

CONFIG = "---\n".join([
    gateway(),
    documents(tm.ROUTES, "mirrors"),
    service_entry("mirror-primary.local", "10.0.6.1"),
    service_entry("mirror-copy.local", "10.0.6.2"),
    service_entry("mirror-copy2.local", "10.0.6.3"),
    service_entry("mirror-slow.local", "10.0.6.4"),
])

PRIMARY, COPY, COPY2, SLOW = "10.0.6.1", "10.0.6.2", "10.0.6.3", "10.0.6.4"

pytestmark = pytest.mark.parametrize("codec", CODECS)


async def counts(pair, path: str, n: int) -> tuple[int, ...]:
    client = pair.client()
    for _ in range(n):
        client.send(get("mirror.example.com", path))
        response = await client.response()
        assert (response.status, response.body) == (200, b"10.0.6.1:80")  # the client only ever sees the primary
    await pair.settle()
    return tuple(len(pair.backend(a).requests) for a in (PRIMARY, COPY, COPY2))


async def test_a_mirror_gets_a_copy_of_every_request(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        assert await counts(pair, "/single", 30) == (30, 30, 0)
        primary, copy = pair.backend(PRIMARY).requests, pair.backend(COPY).requests
        assert [r.header(b"x-request-id") for r in copy] == [r.header(b"x-request-id") for r in primary]
        assert {(r.target, r.header(b"host")) for r in copy} == {(b"/single", b"mirror.example.com")}  # Istio >= 1.28
        assert len(pair.logs) == 30  # mirrors are not requests of the client's


async def test_mirror_percentage_50(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        primary, copies, _ = await counts(pair, "/half", 200)
        assert primary == 200 and 70 <= copies <= 130, copies  # seeded: the same count every run, near half


async def test_mirrors_list_sends_to_each(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        assert await counts(pair, "/many", 20) == (20, 20, 20)


@pytest.mark.parametrize("split", ["whole", 7])
async def test_a_mirror_sees_the_body_reframed_with_its_length(autojump_clock, tmp_path, codec, split):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(post("mirror.example.com", "/single", b"hello mirror", chunked=True), split)
        assert (await client.response(b"POST")).status == 200
        await pair.settle()
        [copy] = pair.backend(COPY).requests
        assert (copy.method, copy.target, copy.header(b"host")) == (b"POST", b"/single", b"mirror.example.com")  # no -shadow since Istio 1.28
        assert (copy.body, copy.header(b"content-length"), copy.header(b"transfer-encoding")) == (b"hello mirror", b"12", None)
        assert pair.backend(PRIMARY).requests[0].body == b"hello mirror"


async def test_the_shadow_host_suffix_switch(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(shadow_host_suffix=True)) as pair:
        assert (await pair.request(get("mirror.example.com:8080", "/single"))).status == 200
        await pair.settle()
        assert pair.backend(COPY).requests[0].header(b"host") == b"mirror.example.com-shadow:8080"
        assert pair.backend(PRIMARY).requests[0].header(b"host") == b"mirror.example.com:8080"


async def test_a_slow_failing_mirror_never_affects_the_client(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(SLOW).handler = lambda request: Reply(500, b"mirror failed", delay=2)  # 2 s, then a 500
        client = pair.client()
        for _ in range(3):
            client.send(get("mirror.example.com", "/slow"))
            response = await client.response()
            assert (response.status, response.body) == (200, b"10.0.6.1:80")
        assert trio.current_time() == 0  # not a (virtual) moment waited for the mirror
        await trio.sleep(2)
        await pair.settle()
        assert len(pair.backend(SLOW).requests) == 3 and pair.ctx.mirrors_in_flight == 0
        assert pair.ctx.pools.statistics()["active"] == 0
        assert [log.status for log in pair.logs] == [200] * 3


async def test_a_silent_mirror_is_given_up_after_its_timeout(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(SLOW).answer(*[Reply.silent()] * 5)
        client = pair.client()
        for _ in range(5):
            client.send(get("mirror.example.com", "/slow"))
            assert (await client.response()).status == 200
        assert trio.current_time() == 0  # not a (virtual) moment waited for the mirror
        await pair.settle()
        assert pair.ctx.mirrors_in_flight == 5
        await trio.sleep(MIRROR_TIMEOUT_S)  # each mirror is bounded; its connection is let go
        await pair.settle()
        assert pair.ctx.mirrors_in_flight == 0
        assert all(c.closed_by_proxy for c in pair.backend(SLOW).connections)
        assert pair.cluster("mirror-slow.local").circuit.connections == 0


async def test_a_refused_mirror_is_dropped_quietly(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(COPY).refuse = True
        assert await counts(pair, "/single", 3) == (3, 0, 0)
        assert pair.ctx.mirrors_in_flight == 0 and pair.ctx.records.connection_errors == 0


async def test_a_body_too_large_to_keep_is_not_mirrored(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        payload = b"m" * (2 * 1024 * 1024)
        assert (await pair.request(post("mirror.example.com", "/single", payload), b"POST")).status == 200
        await pair.settle()
        assert len(pair.backend(PRIMARY).requests[0].body) == len(payload)
        assert pair.backend(COPY).requests == []
