"""workers/parking.py and its seams: idle HTTP connections held without a task, woken by their socket, closed by
the idle timeout (scaled under pressure) and by drain, and counted against the worker's limit while parked.

In memory with real sockets (loopback TCP pairs) and the real connection path (run_connection → serve_http →
serve_http_connection), on trio's autojump clock: timeouts take no wall time. End to end (edge run, TLS, many
connections, SIGTERM): tests/e2e/test_idle_parking.py.
"""

from __future__ import annotations

import socket
import time

import pytest
import trio
import trio.testing

import workers.context
from edge.table import Options
from tests.security.tools import CODECS, gateway
from tests.workers.http.proxy_pair import StaticReader, compile_payload
from workers.context import WorkerContext
from workers.http.downstream import Http1Downstream
from workers.http.engines import codec_classes
from workers.http.server import serve_http
from workers.listeners import run_connection, serve_parked
from workers.netio import SocketTransport
from workers.context import PARK_AFTER_S
from workers.overload import MIN_IDLE_TIMEOUT_S

KEY = "0.0.0.0:80"
HOST = "app.example.com"
VS = f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app}}
spec:
  hosts: ["{HOST}"]
  gateways: [gw]
  http:
  - directResponse: {{status: 200, body: {{string: ok}}}}
"""
REQUEST = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def context(tmp_path, codec: str = "httptools", **options) -> WorkerContext:
    payload = compile_payload(tmp_path / "t", gateway(HOST) + "---\n" + VS, Options(**options))
    ctx = WorkerContext(0, StaticReader(payload), codec_classes(codec))
    ctx.view.refresh()
    return ctx


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listen:
        listen.bind(("127.0.0.1", 0))
        listen.listen(1)
        client = socket.create_connection(listen.getsockname())
        server, _ = listen.accept()
    server.setblocking(False)
    client.setblocking(False)
    return server, client


def downstream(ctx: WorkerContext, since: float) -> tuple[Http1Downstream, socket.socket]:
    server, client = tcp_pair()
    down = Http1Downstream(ctx, SocketTransport(server), server.getpeername(), server.getsockname(), "http", KEY)
    down.since = since
    return down, client


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def answer(client: socket.socket, count: int = 1) -> bytes:
    data = b""
    while data.count(b"HTTP/1.1 200") < count or not data.endswith(b"ok"):
        await trio.lowlevel.wait_readable(client)
        chunk = client.recv(65536)
        assert chunk, data
        data += chunk
    return data


@pytest.fixture
def park_always(monkeypatch):
    """Every connection going idle is parked at once (the worker's threshold is PARK_IDLE_TASKS idle tasks)."""
    monkeypatch.setattr(workers.context, "PARK_IDLE_TASKS", 0)


# ------------------------------------------------------------------------------------------ the parker itself


async def test_a_parked_socket_wakes_on_bytes_and_on_eof_and_leaves_the_set(autojump_clock, tmp_path):
    ctx = context(tmp_path)
    parker = ctx.registry.parked
    woken = []
    a, a_client = downstream(ctx, 0.0)
    b, b_client = downstream(ctx, 0.0)
    assert not parker.park(a)  # nobody serves the set yet: the caller closes instead
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parker.serve, woken.append)
        await trio.testing.wait_all_tasks_blocked()
        assert parker.park(a) and parker.park(b) and len(parker) == 2
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        a_client.send(b"G")
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [a] and len(parker) == 1
        b_client.close()  # a client leaving while parked is seen at once
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [a, b] and len(parker) == 0
        a_client.send(b"ET")  # no longer watched: nothing more is handed over
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [a, b]
        nursery.cancel_scope.cancel()
    for down in (a, b):
        down.transport.close()
    a_client.close()


async def test_a_parker_that_stops_closes_what_it_holds(autojump_clock, tmp_path):
    ctx = context(tmp_path)
    registry, parker = ctx.registry, ctx.registry.parked
    parked = [downstream(ctx, since) for since in (10.0, 20.0, 30.0)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parker.serve, lambda down: None)
        await trio.testing.wait_all_tasks_blocked()
        for down, _client in parked:
            registry.opened()
            assert parker.park(down)
        assert parker.sweep(now=29.0, idle_timeout_s=10.0) == 1  # idle 19 s; the next, 9 s, and after it stay
        assert len(parker) == 2
        nursery.cancel_scope.cancel()  # the worker's end
    assert [closed(client) for _down, client in parked] == [True, True, True]
    assert registry.active == 0 and len(parker) == 0


async def test_the_idle_timeout_closes_parked_connections_past_it_and_drain_closes_all(autojump_clock, tmp_path):
    ctx = context(tmp_path)
    registry, parker = ctx.registry, ctx.registry.parked
    parked = [downstream(ctx, since) for since in (10.0, 20.0, 30.0)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parker.serve, lambda down: None)
        await trio.testing.wait_all_tasks_blocked()
        for down, _client in parked:
            registry.opened()
            parker.park(down)
        assert parker.sweep(now=30.0, idle_timeout_s=10.0) == 2
        assert [closed(client) for _down, client in parked] == [True, True, False]
        assert registry.active == 1 and len(parker) == 1
        registry.close_idle(now=30.0, idle_timeout_s=0.0)  # drain: every idle connection, parked ones too
        assert closed(parked[2][1]) and registry.active == 0
        nursery.cancel_scope.cancel()


async def test_the_overload_scaled_idle_timeout_reaches_parked_connections(autojump_clock, tmp_path):
    ctx = context(tmp_path, idle_timeout_s=3600.0, max_connections_per_worker=2)
    registry, parker = ctx.registry, ctx.registry.parked
    down, client = downstream(ctx, 100.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(parker.serve, lambda down: None)
        await trio.testing.wait_all_tasks_blocked()
        registry.opened()
        registry.opened()  # a full worker: pressure 1.0, the idle timeout falls to its minimum
        assert parker.park(down)
        registry.sweep_timeouts(100.0 + MIN_IDLE_TIMEOUT_S - 0.5)
        assert not closed(client) and registry.active == 2
        registry.sweep_timeouts(100.0 + MIN_IDLE_TIMEOUT_S)
        assert closed(client) and registry.active == 1
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------ through the connection path


@pytest.mark.parametrize("codec", CODECS)
async def test_an_idle_connection_parks_resumes_and_stays_counted(autojump_clock, tmp_path, park_always, codec):
    ctx = context(tmp_path, codec)
    registry = ctx.registry
    server, client = tcp_pair()
    async with trio.open_nursery() as connections:
        connections.start_soon(serve_parked, ctx, connections)
        await trio.testing.wait_all_tasks_blocked()
        client.sendall(REQUEST)
        registry.opened()
        await run_connection(ctx, serve_http, server, KEY)  # returns when the connection is parked
        assert (await answer(client)).endswith(b"ok")
        assert len(registry.parked) == 1 and registry.active == 1 and server.fileno() >= 0 and not registry.http
        # A later request, then two pipelined ones: each wakes it; it parks again after each.
        client.sendall(REQUEST)
        assert (await answer(client)).endswith(b"ok")
        await trio.testing.wait_all_tasks_blocked()
        assert len(registry.parked) == 1 and registry.active == 1
        client.sendall(REQUEST + REQUEST)
        assert (await answer(client, 2)).count(b"HTTP/1.1 200") == 2
        await trio.testing.wait_all_tasks_blocked()
        assert len(registry.parked) == 1
        client.close()  # the client leaves while parked: woken, closed, uncounted
        await trio.testing.wait_all_tasks_blocked()
        assert len(registry.parked) == 0 and registry.active == 0 and server.fileno() < 0
        connections.cancel_scope.cancel()


async def test_a_draining_worker_does_not_park(autojump_clock, tmp_path, park_always):
    ctx = context(tmp_path)
    server, client = tcp_pair()
    async with trio.open_nursery() as connections:
        connections.start_soon(serve_parked, ctx, connections)
        await trio.testing.wait_all_tasks_blocked()
        client.sendall(REQUEST)
        ctx.registry.opened()
        ctx.draining = True
        await run_connection(ctx, serve_http, server, KEY)
        assert b"connection: close" in (await answer(client)).lower()
        assert len(ctx.registry.parked) == 0 and ctx.registry.active == 0 and server.fileno() < 0
        connections.cancel_scope.cancel()
    client.close()


async def test_the_idle_sweep_parks_a_connection_idle_in_its_task_and_it_resumes(autojump_clock, tmp_path, codec="httptools"):
    ctx = context(tmp_path, codec)
    registry = ctx.registry
    server, client = tcp_pair()
    async with trio.open_nursery() as connections:
        connections.start_soon(serve_parked, ctx, connections)
        await trio.testing.wait_all_tasks_blocked()
        client.sendall(REQUEST)
        registry.opened()
        connections.start_soon(run_connection, ctx, serve_http, server, KEY)
        assert (await answer(client)).endswith(b"ok")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.idle_tasks == 1 and len(registry.parked) == 0  # below PARK_IDLE_TASKS: it keeps its task
        (down,) = registry.http
        registry.park_idle(down.since + PARK_AFTER_S - 0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert registry.idle_tasks == 1 and len(registry.parked) == 0
        went_idle = down.since
        registry.park_idle(down.since + PARK_AFTER_S)
        await trio.testing.wait_all_tasks_blocked()
        assert registry.idle_tasks == 0 and len(registry.parked) == 1 and not registry.http
        assert down.since == went_idle  # its idle time so far counts towards the idle timeout
        client.sendall(REQUEST)
        assert (await answer(client)).endswith(b"ok")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.http == {down} and registry.idle_tasks == 1 and registry.active == 1
        connections.cancel_scope.cancel()
    client.close()


async def test_bytes_that_arrive_as_the_sweep_parks_are_served_by_a_fresh_task(autojump_clock, tmp_path, monkeypatch):
    """The sweep's cancel can land after the idle wait succeeded (the task was woken by the I/O check, not yet run):
    the bytes read go to the codec and a fresh task serves them, no request is cancelled. trio runs a batch of woken
    tasks in either order, so a sweep right after one checkpoint of this task meets the connection's task in every
    state over the rounds: woken but not run (the hand-over), back idle (parked), or parked already (resumed)."""
    ctx = context(tmp_path)
    registry = ctx.registry
    hand_overs = []
    original = registry.parked.hand_over
    monkeypatch.setattr(registry.parked, "hand_over", lambda down: (hand_overs.append(down), original(down)))
    server, client = tcp_pair()
    async with trio.open_nursery() as connections:
        connections.start_soon(serve_parked, ctx, connections)
        await trio.testing.wait_all_tasks_blocked()
        registry.opened()
        client.sendall(REQUEST)
        connections.start_soon(run_connection, ctx, serve_http, server, KEY)
        assert (await answer(client)).endswith(b"ok")
        for _ in range(40):
            await trio.testing.wait_all_tasks_blocked()
            client.sendall(REQUEST)
            await trio.lowlevel.checkpoint()
            registry.park_idle(time.monotonic() + 3600.0)
            assert (await answer(client)).endswith(b"ok")
        await trio.testing.wait_all_tasks_blocked()
        assert registry.active == 1 and ctx.records.connection_errors == 0
        assert hand_overs  # the race was met (each round meets it with probability 1/2)
        connections.cancel_scope.cancel()
    client.close()
