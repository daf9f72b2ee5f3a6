"""workers/upstream.py: the per-worker pools of upstream connections and the circuit breakers, with in-memory
transports (tests/workers/http/proxy_pair.FakeTransport) and the pool's clock on trio's (autojump) clock.

What is specified: LIFO reuse, release only after a clean exchange within maxRequestsPerConnection and
MAX_IDLE_PER_ENDPOINT, the probe of a connection idle for PROBE_AFTER_IDLE_S or more, the idle timeout, the circuit's
reservations (maxConnections, http1MaxPendingRequests, http2MaxRequests, maxRetries, each divided across workers),
pending requests woken by a released or closed connection, and connect failures mapped to ConnectFailure.
"""

from __future__ import annotations

import errno
import socket
import types

import pytest
import trio
import trio.testing

import workers.upstream as upstream
from edge.table import UNLIMITED, ConnectionPool
from tests.workers.http.proxy_pair import FakeTransport
from workers.upstream import MAX_IDLE_PER_ENDPOINT, PROBE_AFTER_IDLE_S, Circuit, ConnectFailure, Overflow, UpstreamConnection, UpstreamPools, address_text

KEY = ("10.0.0.1", 80, "outbound|80||be.local", None)


class Codec:
    """A client codec's pool-facing surface: reusable, start_next_cycle."""

    def __init__(self, reusable: bool = True):
        self.reusable = reusable
        self.cycles = 0

    def start_next_cycle(self) -> None:
        self.cycles += 1


@pytest.fixture
def clock(monkeypatch):
    """workers/upstream.py's time.monotonic() on trio's clock (only valid inside a trio test)."""
    monkeypatch.setattr(upstream, "time", types.SimpleNamespace(monotonic=lambda: 1000.0 + trio.current_time()))


def connection(pools: UpstreamPools, circuit: Circuit | None = None, key: tuple = KEY, reusable: bool = True) -> UpstreamConnection:
    """An active connection of the pool at `key`, as UpstreamPools.connect leaves it."""
    pool = pools.pool(key)
    pool.connects += 1
    pool.active += 1
    if circuit is not None:
        assert circuit.try_reserve_connection()
    return UpstreamConnection(FakeTransport("upstream"), Codec(reusable), key, circuit)


# ------------------------------------------------------------------------------------------------ Circuit


@pytest.mark.parametrize(("limit", "workers", "per_worker"), [(UNLIMITED, 4, UNLIMITED), (0, 2, UNLIMITED), (1, 2, 1), (5, 2, 3), (10, 3, 4), (7, 1, 7)])
def test_circuit_limits_are_divided_across_workers(limit, workers, per_worker):
    circuit = Circuit()
    circuit.configure(ConnectionPool(max_connections=limit, http1_max_pending_requests=limit, http2_max_requests=limit, max_retries=limit), workers)
    assert (circuit.max_connections, circuit.max_pending, circuit.max_requests, circuit.max_retries) == (per_worker,) * 4


def test_circuit_reservations_stop_at_their_limits():
    circuit = Circuit()
    circuit.configure(ConnectionPool(max_connections=2, http2_max_requests=1, max_retries=1), 1)
    assert [circuit.try_reserve_connection() for _ in range(3)] == [True, True, False]
    assert circuit.connections == 2 and circuit.overflows == 0  # a refused connection is no overflow: it waits
    assert [circuit.reserve_request(), circuit.reserve_request()] == [True, False]
    assert circuit.overflows == 1
    circuit.release_request()
    assert circuit.reserve_request()
    assert circuit.retry_budget_left()
    circuit.reserve_retry()
    assert not circuit.retry_budget_left() and circuit.overflows == 2
    circuit.release_retry()
    assert circuit.retry_budget_left()
    circuit.connection_closed()
    circuit.connection_closed()
    circuit.connection_closed()  # never below zero
    assert circuit.connections == 0


async def test_pending_requests_wait_for_a_closed_connection_and_overflow_beyond_the_limit(autojump_clock):
    circuit = Circuit()
    circuit.configure(ConnectionPool(max_connections=1, http1_max_pending_requests=2), 1)
    assert circuit.try_reserve_connection()
    woke: list[bool] = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(lambda: _record(woke, circuit.wait_pending()))
        await trio.testing.wait_all_tasks_blocked()
        assert circuit.pending == 2
        assert await circuit.wait_pending() is False  # a third: over http1MaxPendingRequests
        assert circuit.overflows == 1
        circuit.connection_closed()  # one waiter wakes per closed connection
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [True] and circuit.pending == 1
        circuit.connection_closed()
    assert woke == [True, True] and circuit.pending == 0


async def _record(out: list, awaitable) -> None:
    out.append(await awaitable)


# ------------------------------------------------------------------------------------------------ pools


async def test_idle_connections_are_reused_last_in_first_out(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    first, second = connection(pools), connection(pools)
    pools.release(first, True)
    pools.release(second, True)
    assert pools.statistics() == {"pools": 1, "idle": 2, "active": 0, "connects": 2, "reuses": 0}
    taken = pools.take_idle(KEY)
    assert taken is second and taken.reused and taken.codec.cycles == 1
    assert pools.take_idle(KEY) is first
    assert pools.take_idle(KEY) is None and pools.take_idle(("other", 1, "", None)) is None
    assert pools.statistics()["reuses"] == 2 and pools.statistics()["active"] == 2


@pytest.mark.parametrize(
    ("reusable", "codec_reusable", "max_requests", "requests_before", "pooled"),
    [
        (True, True, 0, 0, True),
        (False, True, 0, 0, False),  # the exchange was not clean (error, cancel, body left unread)
        (True, False, 0, 0, False),  # the codec says a side asked to close or bytes are left
        (True, True, 1, 0, False),  # maxRequestsPerConnection 1: spent after one
        (True, True, 3, 1, True),
        (True, True, 3, 2, False),
    ],
)
async def test_a_connection_returns_to_the_pool_only_after_a_clean_exchange(autojump_clock, clock, reusable, codec_reusable, max_requests, requests_before, pooled):
    pools = UpstreamPools(Codec)
    circuit = Circuit()
    conn = connection(pools, circuit, reusable=codec_reusable)
    conn.requests = requests_before
    pools.release(conn, reusable, max_requests)
    assert conn.requests == requests_before + 1
    assert (pools.statistics()["idle"], conn.transport.closed, circuit.connections) == ((1, False, 1) if pooled else (0, True, 0))
    assert pools.statistics()["active"] == 0


async def test_discard_closes_once_and_gives_the_circuit_back(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    circuit = Circuit()
    conn = connection(pools, circuit)
    pools.discard(conn)
    pools.discard(conn)
    conn.close()
    assert conn.transport.closed and circuit.connections == 0 and pools.statistics()["active"] == 0


async def test_at_most_max_idle_per_endpoint_are_kept(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    conns = [connection(pools) for _ in range(MAX_IDLE_PER_ENDPOINT + 1)]
    for conn in conns:
        pools.release(conn, True)
    assert pools.statistics()["idle"] == MAX_IDLE_PER_ENDPOINT
    assert conns[-1].transport.closed and not conns[0].transport.closed


@pytest.mark.parametrize(
    ("idle_for", "unread", "reused"),
    [
        (0.0, False, True),
        (PROBE_AFTER_IDLE_S - 0.01, True, True),  # not probed so soon: the probe's system call is saved
        (PROBE_AFTER_IDLE_S, False, True),
        (PROBE_AFTER_IDLE_S, True, False),  # probed: it spoke (a 408, a second response) or closed
        (60.0, True, False),
    ],
)
async def test_the_probe_before_reuse(autojump_clock, clock, idle_for, unread, reused):
    pools = UpstreamPools(Codec)
    conn = connection(pools)
    pools.release(conn, True)
    await trio.sleep(idle_for)
    if unread:
        conn.transport.feed(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    taken = pools.take_idle(KEY)
    if reused:
        assert taken is conn
    else:
        assert taken is None and conn.transport.closed


async def test_a_closed_idle_connection_is_skipped_for_the_next(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    older, newer = connection(pools), connection(pools)
    pools.release(older, True)
    pools.release(newer, True)
    newer.transport.close()
    assert pools.take_idle(KEY) is older


async def test_close_idle_closes_only_expired_connections_when_asked(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    pools.pool(KEY).idle_timeout_s = 10.0
    old = connection(pools)
    pools.release(old, True)
    await trio.sleep(6)
    young = connection(pools)
    pools.release(young, True)
    await trio.sleep(4)
    assert pools.close_idle(expired_only=True) == 1
    assert old.transport.closed and not young.transport.closed
    assert pools.close_idle() == 1 and young.transport.closed  # drain: all of them
    assert pools.statistics()["idle"] == 0


async def test_the_idle_reaper_runs_every_second(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    pools.pool(KEY).idle_timeout_s = 2.5
    conn = connection(pools)
    pools.release(conn, True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pools.serve_idle_reaper)
        await trio.sleep(2.9)
        assert not conn.transport.closed
        await trio.sleep(0.2)
        assert conn.transport.closed
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------------ acquire / connect


def pool_settings(**kw) -> ConnectionPool:
    return ConnectionPool(**kw)


async def test_acquire_connects_within_max_connections_then_waits_for_a_released_one(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    circuit = Circuit()
    circuit.configure(pool_settings(max_connections=1, http1_max_pending_requests=1), 1)
    connects = []

    async def connect(key, address, port, connect_timeout_s, tls=None, server_hostname=None, keepalive=None):
        connects.append((key, address, port, connect_timeout_s, keepalive))
        pool = pools.pool(key)
        pool.connects += 1
        pool.active += 1
        return UpstreamConnection(FakeTransport("u"), Codec(), key)

    pools.connect = connect
    settings = pool_settings(max_connections=1, http1_max_pending_requests=1, connect_timeout_s=3, idle_timeout_s=7, tcp_keepalive=(3, 10.0, 5.0))
    first = await pools.acquire(KEY, circuit, "10.0.0.1", 80, settings)
    assert first.circuit is circuit and circuit.connections == 1 and pools.pool(KEY).idle_timeout_s == 7
    assert connects == [(KEY, "10.0.0.1", 80, 3, (3, 10.0, 5.0))]
    got = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _record(got, pools.acquire(KEY, circuit, "10.0.0.1", 80, settings)))
        await trio.testing.wait_all_tasks_blocked()
        assert circuit.pending == 1 and got == []
        with pytest.raises(Overflow):  # one waits already: http1MaxPendingRequests 1
            await pools.acquire(KEY, circuit, "10.0.0.1", 80, settings)
        pools.release(first, True)  # back to idle: the waiter takes it
    assert got == [first] and len(connects) == 1


async def test_a_failed_connect_gives_its_reservation_back(autojump_clock, clock):
    pools = UpstreamPools(Codec)
    circuit = Circuit()

    async def connect(*args, **kw):
        raise ConnectFailure("connection failure")

    pools.connect = connect
    with pytest.raises(ConnectFailure):
        await pools.acquire(KEY, circuit, "10.0.0.1", 80, pool_settings())
    assert circuit.connections == 0


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (OSError(errno.ECONNREFUSED, "Connection refused"), "connection failure, transport failure reason: Connection refused"),
        (OSError(), "connection failure"),
        (trio.BrokenResourceError(), "connection failure"),
        ("hang", "connection timeout"),
    ],
)
async def test_connect_failures_are_connect_failure(autojump_clock, monkeypatch, failure, reason):
    async def open_tcp_socket(host, port):
        if failure == "hang":
            await trio.sleep_forever()
        raise failure

    monkeypatch.setattr(upstream, "open_tcp_socket", open_tcp_socket)
    pools = UpstreamPools(Codec)
    with pytest.raises(ConnectFailure) as info:
        await pools.connect(KEY, "10.0.0.1", 80, 0.3)
    assert info.value.reason == reason
    if failure == "hang":
        assert trio.current_time() == pytest.approx(0.3)
    assert pools.statistics()["connects"] == 0


def test_address_text():
    closed = socket.socket()
    closed.close()
    assert address_text(closed) == "-"
    with socket.socket(socket.AF_INET) as s4:
        s4.bind(("127.0.0.1", 0))
        assert address_text(s4) == f"127.0.0.1:{s4.getsockname()[1]}"
    with socket.socket(socket.AF_INET6) as s6:
        try:
            s6.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        assert address_text(s6) == f"[::1]:{s6.getsockname()[1]}"
