"""Connection timeouts through the real proxy, in memory (tests/workers/http/proxy_pair.py), on both codecs: the
request headers timeout (408), the idle timeout (a silent close), the stream idle timeout (408 while the body was
arriving, 504 "stream timeout" when the backend said nothing; flag SI), idle timeouts scaled under connection
pressure, the client leaving while its request waits (DC), and the worker draining.

The registry's sweeps read time.monotonic(), which proxy_pair points at trio's clock: tests run a sweep at the
virtual instant they choose (`pair.sweep()`), or start the worker's own sweeper task (`pair.start_sweeper()`).
"""

from __future__ import annotations

import pytest
import trio

from edge.table import Options
from tests.security.tools import gateway, route_all
from tests.workers.http.proxy_pair import CODECS, Reply, VirtualTime, get, post, proxy_pair, service_entry
from workers.context import STATE_IDLE

CONFIG = "---\n".join([gateway("app.example.com"), route_all("app.example.com", "be.local"), service_entry("be.local", "10.0.4.1")])
BE = "10.0.4.1"
LIMITED = """\
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: be}
spec:
  host: be.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}
"""

pytestmark = pytest.mark.parametrize("codec", CODECS)


# ------------------------------------------------------------------------------------ request headers timeout


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "one-byte-a-second"])
async def test_a_request_head_that_does_not_arrive_in_time_is_answered_408(autojump_clock, tmp_path, codec, trickle):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        head = b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Slow: " + b"a" * 100
        if trickle:  # slowloris: bytes keep coming, the deadline counts from the first

            async def one_byte_a_second() -> None:
                for i in range(len(head)):
                    client.send(head[i : i + 1])
                    await trio.sleep(1)

            pair.nursery.start_soon(one_byte_a_second)
        else:
            client.send(head)
        response = await client.response()
        assert trio.current_time() == pytest.approx(10.0)  # --request-headers-timeout 10
        assert response.status == 408 and response.closes
        await client.wait_closed()
        await pair.settle()
        [log] = pair.logs
        assert (log.status, log.details) == (408, "request_header_timeout")
        assert pair.backend(BE).connections == []


async def test_an_idle_keep_alive_connection_gets_no_408(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(get("app.example.com"))
        assert (await client.response()).status == 200
        await trio.sleep(100)  # waiting for a next request is the idle timeout's business, not the header timeout's
        assert not client.closed and client.unread == b""
        assert client.down.state == STATE_IDLE


# -------------------------------------------------------------------------------------------- idle timeout


async def test_the_idle_timeout_closes_a_keep_alive_connection_quietly(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(idle_timeout_s=30)) as pair:
        client = pair.client()
        client.send(get("app.example.com"))
        assert (await client.response()).status == 200
        await trio.sleep(29.9)
        pair.sweep()
        await pair.settle()
        assert not client.closed
        await trio.sleep(0.1)
        pair.sweep()
        await client.wait_closed()
        assert client.unread == b""  # no 408 for a connection between requests
        assert pair.ctx.registry.active == 0 and not pair.ctx.registry.http


async def test_a_request_in_flight_is_not_cut_by_the_idle_timeout(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(idle_timeout_s=5)) as pair:
        pair.backend(BE).answer(Reply(200, b"late", delay=60))
        client = pair.client()
        client.send(get("app.example.com"))
        await trio.sleep(30)
        pair.sweep()
        response = await client.response()
        assert response.body == b"late" and not client.closed


async def test_idle_timeouts_shrink_under_connection_pressure(autojump_clock, tmp_path, codec):
    """One worker, at most 20 connections, a 3,600 s idle timeout. At 10 of 20 silent connections keep it; at 20 of
    20 (the accept loop stops: no room) their idle timeout falls to 2 s (workers/overload.py) and they are closed,
    which makes room for waiting clients."""
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(max_connections_per_worker=20, idle_timeout_s=3600)) as pair:
        registry = pair.ctx.registry
        relaxed = [pair.client() for _ in range(10)]
        await pair.settle()
        await trio.sleep(3.5)
        pair.sweep()
        await pair.settle()
        assert not any(c.closed for c in relaxed), "idle connections closed below the pressure threshold"
        pressed = [pair.client() for _ in range(10)]
        await pair.settle()
        assert registry.room() == 0
        await trio.sleep(1.9)
        pair.sweep()
        await pair.settle()
        assert all(c.closed for c in relaxed)  # idle for 5.4 s: over the 2 s the full table allows
        assert not any(c.closed for c in pressed)  # idle for 1.9 s
        assert registry.room() == 10 and all(c.received == b"" for c in relaxed)
        # The pressure is off: the others keep the configured timeout.
        await trio.sleep(60)
        pair.sweep()
        await pair.settle()
        assert not any(c.closed for c in pressed)


# ------------------------------------------------------------------------------------ stream idle timeout


async def test_a_stalled_request_body_is_answered_408(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(stream_idle_timeout_s=1)) as pair:
        client = pair.client()
        client.send(b"POST /upload HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        await pair.settle()
        await trio.sleep(0.999)
        pair.sweep()
        await pair.settle()
        assert client.received == b""
        await trio.sleep(0.001)
        pair.sweep()
        response = await client.response(b"POST")
        assert (response.status, response.body, response.closes) == (408, b"stream timeout", True)
        await client.wait_closed()
        await pair.settle()
        [log] = pair.logs
        assert (log.status, log.flags, log.details) == (408, "SI", "stream_idle_timeout")
        # The gateway let the upstream connection go: the backend, waiting for the rest of the body, saw it end, and
        # nothing stays counted (found here: the streaming exchange cancelled from outside kept its connection open
        # and counted in pool.active and the circuit, so with maxConnections the cluster stopped serving).
        [conn] = pair.backend(BE).connections
        assert conn.received.endswith(b"\r\n\r\n" + b"x" * 10) and conn.closed_by_proxy
        assert (pair.cluster("be.local").circuit.connections, pair.ctx.pools.statistics()["active"]) == (0, 0)
        assert (await pair.request(get("app.example.com", "/after"))).status == 200


async def test_a_backend_that_says_nothing_ends_in_504_at_the_sweepers_pace(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(stream_idle_timeout_s=1)) as pair:
        pair.start_sweeper()
        pair.backend(BE).answer(Reply.silent())
        response = await pair.request(get("app.example.com", "/slow"))
        assert (response.status, response.body) == (504, b"stream timeout")
        assert 1.0 - 1e-9 <= trio.current_time() <= 2.1 + 1e-9  # the idle sweep runs every second
        await pair.settle()
        assert (pair.logs[0].status, pair.logs[0].flags) == (504, "SI")
        assert pair.backend(BE).connections[0].closed_by_proxy


async def test_a_response_that_keeps_moving_is_not_a_stream_timeout(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(stream_idle_timeout_s=1)) as pair:
        pair.start_sweeper()
        pair.backend(BE).answer(Reply(200, [b"x"] * 10, chunk_delay=0.5))  # 5 s in all, never 1 s without a byte
        response = await pair.request(get("app.example.com"))
        assert (response.status, response.body, response.complete) == (200, b"x" * 10, True)


async def test_a_response_that_stops_moving_is_cut_and_logged_si(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(stream_idle_timeout_s=1)) as pair:
        pair.backend(BE).answer(Reply(200, [b"first", b"never"], chunk_delay=100))
        client = pair.client()
        client.send(get("app.example.com"))
        await trio.sleep(150)  # the first chunk came at 100 s, the next is due at 200 s
        pair.sweep()
        response = await client.response()
        assert (response.status, response.body, response.complete) == (200, b"first", False)  # no 504 once started
        await pair.settle()
        assert (pair.logs[0].status, pair.logs[0].flags, pair.logs[0].details) == (200, "SI", "stream_idle_timeout")


# ------------------------------------------------------------------------------------ the client leaving


async def test_a_client_leaving_while_its_request_waits_cancels_the_upstream_request(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(BE).answer(Reply(200, b"too late", delay=2.5))
        client = pair.client()
        client.send(get("app.example.com", "/delay/2.5"))
        await trio.sleep(0.3)
        pair.check_clients_gone()
        await pair.settle()
        assert not client.closed  # still there: nothing happens
        client.vanish()
        pair.check_clients_gone()
        await client.wait_closed()
        assert trio.current_time() == pytest.approx(0.3)
        # The backend is still sleeping; the gateway has already closed its upstream connection.
        assert pair.backend(BE).connections[0].closed_by_proxy
        await pair.settle()
        [log] = pair.logs
        assert (log.flags, log.details) == ("DC", "downstream_remote_disconnect")
        assert pair.ctx.pools.statistics()["idle"] == 0 and pair.cluster("be.local").circuit.requests == 0


async def test_a_client_leaving_is_noticed_by_the_sweeper(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.start_sweeper()
        pair.backend(BE).answer(Reply.silent())
        client = pair.client()
        client.send(get("app.example.com"))
        await trio.sleep(1)
        client.vanish()
        await client.wait_closed()
        assert 1.0 <= trio.current_time() <= 1.1 + 1e-9  # within one SWEEP_INTERVAL_S
        await pair.settle()
        assert pair.logs[0].flags == "DC"


async def test_a_client_leaving_mid_response_ends_the_exchange(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(BE).answer(Reply(200, [b"a" * 100] * 5, chunk_delay=1))
        client = pair.client()
        client.send(get("app.example.com"))
        await client.wait_for(lambda: b"a" * 100 in client.received, "the first chunk")
        client.vanish()
        await client.wait_closed()
        await pair.settle()
        assert (pair.logs[0].flags, pair.logs[0].details) == ("DC", "downstream_remote_disconnect")
        assert pair.backend(BE).connections[0].closed_by_proxy


async def test_a_client_closing_mid_body_is_gone_not_answered(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(post("app.example.com", "/up", b"x" * 100)[:-50])
        await pair.settle()
        client.send_eof()
        await client.wait_closed()
        assert client.received == b""
        await pair.settle()
        assert pair.logs[0].flags == "DC"
        assert pair.backend(BE).connections[0].closed_by_proxy
        assert (pair.cluster("be.local").circuit.connections, pair.ctx.pools.statistics()["active"]) == (0, 0)


async def test_a_client_closing_mid_upload_gives_its_connection_slot_back(autojump_clock, tmp_path, codec):
    """maxConnections 1: once the client that was uploading left, the cluster serves the next request (found here: its
    connection stayed counted, and every later request waited for a slot that never came)."""
    async with proxy_pair(tmp_path, codec, CONFIG + LIMITED) as pair:
        client = pair.client()
        client.send(post("app.example.com", "/up", b"x" * 100)[:-50])
        await pair.settle()
        client.send_eof()
        await client.wait_closed()
        assert pair.backend(BE).connections[0].closed_by_proxy
        response = None
        with trio.move_on_after(60):
            response = await pair.request(get("app.example.com", "/next"))
        assert response is not None and response.status == 200


# ------------------------------------------------------------------------------------------------ drain


async def test_drain_closes_idle_connections_and_lets_busy_ones_finish(autojump_clock, tmp_path, codec):
    """What workers/main.py does on SIGTERM: draining set, idle connections closed (a sweep with timeout 0); a
    request in flight finishes and its response says connection: close."""
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(BE).answer(Reply(200, b"ok"), Reply(200, b"finished", delay=3))
        idle = pair.client()
        idle.send(get("app.example.com"))
        await idle.response()
        busy = pair.client()
        busy.send(get("app.example.com", "/slow"))
        await trio.sleep(1)
        pair.ctx.draining = True
        pair.ctx.registry.close_idle(VirtualTime().monotonic(), 0.0)
        await idle.wait_closed()
        assert idle.unread == b""
        response = await busy.response()
        assert (response.body, response.closes) == (b"finished", True)
        await busy.wait_closed()
        assert pair.ctx.registry.active == 0
