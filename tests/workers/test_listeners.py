"""workers/listeners.py: the PROXY protocol header consumed exactly before a handler runs, each connection's outermost
boundary (run_connection), the per-worker connection limit of the accept loop, and — through run_connection and the
real TLS listener (workers/tls/listener.serve_tls) — the ClientHello/handshake deadline.

Sockets are real (socketpairs, a loopback listener): their bytes are there before anyone waits, so trio's autojump
clock only jumps when nothing can move, and the 15 s handshake timeout takes no wall time.
"""

from __future__ import annotations

import socket
import ssl
import struct

import pytest
import trio
import trio.testing

import workers.listeners as listeners
from edge.table import PROTO_HTTP, Options
from tests.e2e.test_tls_e2e import PASSTHROUGH_GATEWAY, PASSTHROUGH_VS
from tests.e2e.test_tls_e2e import service_entry as tls_service_entry
from tests.security.tools import gateway
from tests.workers.http.proxy_pair import StaticReader, compile_payload
from workers.context import WorkerContext
from workers.http.engines import codec_classes
from workers.listeners import PROXY_HEADER_TIMEOUT_S, ProxiedSocket, accept_proxy_header, run_connection, serve_accept_loop
from workers.proxy_protocol import V2_SIGNATURE
from workers.tls.listener import serve_tls

KEY = "0.0.0.0:80"


def context(tmp_path, config: str | None = None, **options) -> WorkerContext:
    payload = compile_payload(tmp_path / "t", config or gateway(), Options(**options))
    ctx = WorkerContext(0, StaticReader(payload), codec_classes("h11"))
    ctx.view.refresh()
    return ctx


@pytest.fixture
def pair():
    """(server end, client end) of a connected socket pair; both closed afterwards."""
    server, client = socket.socketpair()
    server.setblocking(False)
    yield server, client
    for sock in (server, client):
        if sock.fileno() >= 0:
            sock.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server end, client end) of a loopback TCP connection (handlers log the peer's address)."""
    with socket.socket() as listen:
        listen.bind(("127.0.0.1", 0))
        listen.listen(1)
        client = socket.create_connection(listen.getsockname())
        server, _ = listen.accept()
    server.setblocking(False)
    return server, client


def is_closed(sock: socket.socket) -> bool:
    """The peer closed (EOF or reset), seen without waiting."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# ------------------------------------------------------------------------------------------ PROXY protocol

V2_TCP4 = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 12) + bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack("!HH", 56324, 80)


@pytest.mark.parametrize(
    ("header", "peer", "local"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\r\n", ("1.2.3.4", 1111), ("5.6.7.8", 80)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n", ("2001:db8::1", 4711), ("2001:db8::2", 443)),
        (V2_TCP4, ("203.0.113.7", 56324), ("10.0.0.1", 80)),
        (b"PROXY UNKNOWN\r\n", None, None),  # no addresses: the connection's own stay
        (V2_SIGNATURE + b"\x20\x00\x00\x00", None, None),  # v2 LOCAL (a health check)
    ],
    ids=["v1-tcp4", "v1-tcp6", "v2-tcp4", "v1-unknown", "v2-local"],
)
@pytest.mark.parametrize("split", [False, True], ids=["whole", "in-two-sends"])
async def test_a_proxy_header_is_consumed_exactly(autojump_clock, pair, header, peer, local, split):
    server, client = pair
    rest = b"GET / HTTP/1.1\r\n"
    if split:  # the header's second half comes later: the reader peeks again until it is whole
        client.sendall(header[:7])

        async def later():
            await trio.sleep(1)
            client.sendall(header[7:] + rest)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            served = await accept_proxy_header(server)
        assert trio.current_time() == pytest.approx(1, abs=0.01)
    else:
        client.sendall(header + rest)
        served = await accept_proxy_header(server)
    assert served is not None
    if peer is None:
        assert served is server
    else:
        assert isinstance(served, ProxiedSocket) and (served.getpeername(), served.getsockname()) == (peer, local)
    assert served.recv(100) == rest  # the connection's own bytes, untouched
    served.close()


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n", b"\x16\x03\x01\x00"], ids=["http", "bad-port", "tls"])
async def test_a_connection_without_a_valid_header_is_refused(autojump_clock, pair, data):
    server, client = pair
    client.sendall(data)
    assert await accept_proxy_header(server) is None


async def test_a_header_that_never_completes_or_a_close_is_refused(autojump_clock, pair):
    server, client = pair
    client.sendall(b"PROXY TCP4 1.2.3.4")
    assert await accept_proxy_header(server) is None
    assert trio.current_time() == pytest.approx(PROXY_HEADER_TIMEOUT_S)
    other, peer = socket.socketpair()
    other.setblocking(False)
    with other, peer:
        peer.close()
        assert await accept_proxy_header(other) is None  # EOF first


# ------------------------------------------------------------------------------------------ the boundary


async def test_run_connection_counts_an_unexpected_error_and_closes_the_socket(autojump_clock, tmp_path, pair, capsys):
    ctx = context(tmp_path)
    server, client = pair
    seen = []

    async def handler(ctx_, sock, key):
        seen.append((sock, key))
        raise RuntimeError("a bug in a handler")

    ctx.registry.opened()
    await run_connection(ctx, handler, server, KEY)
    assert seen == [(server, KEY)]
    assert ctx.records.connection_errors == 1 and ctx.registry.active == 0
    assert server.fileno() < 0 and is_closed(client)
    assert "RuntimeError: a bug in a handler" in capsys.readouterr().err


async def test_run_connection_closes_what_a_handler_leaves_open(autojump_clock, tmp_path, pair):
    ctx = context(tmp_path)
    server, client = pair

    async def handler(ctx_, sock, key):
        await trio.lowlevel.checkpoint()

    ctx.registry.opened()
    await run_connection(ctx, handler, server, KEY)
    assert server.fileno() < 0 and ctx.records.connection_errors == 0 and ctx.registry.active == 0


async def test_with_proxy_protocol_the_handler_gets_the_announced_addresses_or_nothing(autojump_clock, tmp_path):
    ctx = context(tmp_path, proxy_protocol=True)
    seen = []

    async def handler(ctx_, sock, key):
        seen.append(sock.getpeername())

    for data in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 80\r\nGET", b"GET / HTTP/1.1\r\n\r\n"):
        server, client = socket.socketpair()
        server.setblocking(False)
        with client:
            client.sendall(data)
            ctx.registry.opened()
            await run_connection(ctx, handler, server, KEY)
            assert server.fileno() < 0 and is_closed(client)
    assert seen == [("1.2.3.4", 1111)] and ctx.registry.active == 0


# ------------------------------------------------------------------------------------------ the connection limit


async def test_the_registry_waits_for_a_slot_at_the_limit(autojump_clock, tmp_path):
    registry = context(tmp_path, max_connections_per_worker=2).registry
    registry.opened()
    assert registry.room() == 1
    await registry.wait_slot()  # room: no wait
    registry.opened()
    assert registry.room() == 0
    done = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _after(done, registry.wait_slot()))
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        registry.closed()
    assert done == [True] and registry.room() == 1


async def _after(out: list, awaitable) -> None:
    await awaitable
    out.append(True)


async def test_the_accept_loop_stops_at_the_limit_and_resumes_when_a_connection_ends(autojump_clock, tmp_path, monkeypatch):
    ctx = context(tmp_path, max_connections_per_worker=2)
    release = trio.Event()
    served = []

    async def handler(ctx_, sock, key):
        served.append(sock)
        if len(served) <= 2:
            await release.wait()

    monkeypatch.setitem(listeners.HANDLERS, PROTO_HTTP, handler)
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(16)
    clients = [socket.create_connection(listen.getsockname()) for _ in range(3)]
    try:
        async with trio.open_nursery() as connections:
            connections.start_soon(serve_accept_loop, ctx, KEY, listen, connections)
            await trio.testing.wait_all_tasks_blocked()
            assert len(served) == 2 and ctx.registry.active == 2  # the third waits in the kernel's queue
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            assert len(served) == 3 and ctx.registry.active == 0
            assert all(is_closed(c) for c in clients)
            connections.cancel_scope.cancel()
        assert listen.fileno() < 0  # the loop closes its socket when it stops
    finally:
        for c in clients:
            c.close()
        listen.close()


# ------------------------------------------------------------------------------------------ TLS ClientHello deadline

# tests/e2e/test_tls_e2e.py's passthrough gateway (istio.io's SNI passthrough task); no connection reaches its backend.
PASSTHROUGH = "---\n".join([PASSTHROUGH_GATEWAY, PASSTHROUGH_VS, tls_service_entry("my-nginx", "my-nginx.default.svc.cluster.local", 443, 8443, "TLS")])


def client_hello(server_name: str) -> bytes:
    context = ssl.create_default_context()
    hello = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    return outgoing.read()


async def test_a_slow_client_hello_is_closed_at_the_handshake_timeout(autojump_clock, tmp_path):
    """A client that stops halfway through its ClientHello (or sends nothing) is closed after Istio's 15 s
    transport-socket timeout; meanwhile a complete hello is dealt with at once (here: no filter chain for its name,
    closed with an NR log line)."""
    ctx = context(tmp_path, PASSTHROUGH)
    key = next(iter(ctx.current().listeners))
    first_flight = client_hello("nginx.example.com")
    pairs = [tcp_pair() for _ in range(5)]
    refused = []
    ctx.records.tcp_refused = refused.append
    try:
        async with trio.open_nursery() as nursery:
            for i, (server, client) in enumerate(pairs[:4]):
                client.sendall(first_flight[: 10 * i])  # nothing, then a few bytes of a real hello
                ctx.registry.opened()
                nursery.start_soon(run_connection, ctx, serve_tls, server, key)
            server, client = pairs[4]
            client.sendall(client_hello("unknown.example.com"))
            ctx.registry.opened()
            nursery.start_soon(run_connection, ctx, serve_tls, server, key)
            await trio.testing.wait_all_tasks_blocked()
            assert is_closed(pairs[4][1]) and [log.details for log in refused] == ["filter_chain_not_found"]
            await trio.sleep(14.9)
            assert not any(is_closed(client) for _, client in pairs[:4]) and ctx.registry.active == 4
            await trio.sleep(0.2)
            assert all(is_closed(client) for _, client in pairs[:4]) and ctx.registry.active == 0
    finally:
        for server, client in pairs:
            server.close()
            client.close()
