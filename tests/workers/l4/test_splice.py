"""workers/l4/splice.py and workers/l4/tcp.py: the splice over real socket pairs (bytes both ways, half-close,
reset, idle timeout and maximum duration on trio's autojump clock), and the circuit slot of a TCP connection."""

from __future__ import annotations

import hashlib
import random
import socket

import pytest
import trio
import trio.testing

from workers.netio import SocketTransport
from workers.upstream import Circuit
from workers.l4.splice import SPLICE_BUFFER_BYTES, splice_bytes
from workers.l4.tcp import reserve_connection


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def test_splice_both_ways_with_half_close():
    """client ⇄ proxy ⇄ server: each side sends a large payload and half-closes; each receives the other's
    payload whole, then EOF; the splice ends by itself."""
    client, proxy_client = pair()
    proxy_upstream, server = pair()
    up = random.Random(1).randbytes(3 * SPLICE_BUFFER_BYTES + 123)
    down = random.Random(2).randbytes(5 * SPLICE_BUFFER_BYTES + 7)
    received = {}
    with client, proxy_client, proxy_upstream, server:

        async def side(name, sock, payload):
            async def write():
                await send_all(sock, payload)
                sock.shutdown(socket.SHUT_WR)

            async with trio.open_nursery() as both:  # full duplex: read while writing
                both.start_soon(write)
                received[name] = await recv_until_eof(sock)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(side, "client", client, up)
                nursery.start_soon(side, "server", server, down)
                splice = await splice_bytes(proxy_client, proxy_upstream, idle_timeout_s=60, initial=b"HELLO")
    assert hashlib.sha256(received["server"]).digest() == hashlib.sha256(b"HELLO" + up).digest()
    assert received["client"] == down
    assert (splice.bytes_up, splice.bytes_down, splice.reset, splice.idle_timeout) == (len(up) + 5, len(down), False, False)


async def test_half_close_keeps_the_other_direction_open():
    """The client half-closes first; the server answers afterwards and the client still gets it."""
    client, proxy_client = pair()
    proxy_upstream, server = pair()
    with client, proxy_client, proxy_upstream, server:
        result = {}

        async def server_side():
            request = await recv_until_eof(server)  # the client's FIN arrived through the proxy
            await trio.sleep(0.05)
            await send_all(server, b"answer to " + request)
            server.shutdown(socket.SHUT_WR)

        async def client_side():
            await send_all(client, b"question")
            client.shutdown(socket.SHUT_WR)
            result["client"] = await recv_until_eof(client)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server_side)
                nursery.start_soon(client_side)
                await splice_bytes(proxy_client, proxy_upstream)
    assert result["client"] == b"answer to question"


async def test_reset_ends_both_directions():
    client, proxy_client = pair()
    proxy_upstream, server = pair()
    with client, proxy_client, proxy_upstream:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await send_all(client, b"x" * 1000)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:

                async def abort_server():
                    await trio.sleep(0.05)
                    server.close()  # unread bytes + close on a socketpair: the peer sees a reset or EOF

                nursery.start_soon(abort_server)
                splice = await splice_bytes(proxy_client, proxy_upstream)
        assert splice.bytes_up == 1000
        # The client side is not closed by the splice itself (the caller closes); nothing is left hanging.


async def test_idle_timeout(autojump_clock):
    client, proxy_client = pair()
    proxy_upstream, server = pair()
    with client, proxy_client, proxy_upstream, server:
        start = trio.current_time()
        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:

                async def talk_then_stall():
                    for _ in range(3):
                        await send_all(client, b"ping")
                        await trio.sleep(50)  # under the idle timeout: keeps the connection alive

                nursery.start_soon(talk_then_stall)
                splice = await splice_bytes(proxy_client, proxy_upstream, idle_timeout_s=100)
        elapsed = trio.current_time() - start
    assert splice.idle_timeout and not splice.reset
    assert splice.bytes_up == 12
    # last byte at t≈100, then 100 s of silence, detected within a quarter of the timeout
    assert 200 <= elapsed <= 200 + 100 / 4 + 1


async def test_max_duration(autojump_clock):
    client, proxy_client = pair()
    proxy_upstream, server = pair()
    with client, proxy_client, proxy_upstream, server:
        start = trio.current_time()
        splice = await splice_bytes(proxy_client, proxy_upstream, idle_timeout_s=0, max_duration_s=30)
        assert trio.current_time() - start == pytest.approx(30)
    assert not splice.idle_timeout


async def test_splice_transports_half_close():
    client, proxy_client = pair()
    proxy_upstream, server = pair()
    with client, proxy_client, proxy_upstream, server:
        received = {}

        async def server_side():
            received["server"] = await recv_until_eof(server)
            await send_all(server, b"bye")
            server.shutdown(socket.SHUT_WR)

        async def client_side():
            await send_all(client, b"data")
            client.shutdown(socket.SHUT_WR)
            received["client"] = await recv_until_eof(client)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server_side)
                nursery.start_soon(client_side)
                proxy_c = SocketTransport(proxy_client)
                splice = await splice_bytes(proxy_c, SocketTransport(proxy_upstream), )
                proxy_c.close()  # what the caller does when the splice ends
        assert received == {"server": b"data", "client": b"bye"}
        assert (splice.bytes_up, splice.bytes_down) == (4, 3)


# ---------------------------------------------------------------------------------------------------------
# Circuit breaking: a connection slot under maxConnections (autojump clock)


def _circuit(max_connections: int, max_pending: int, open_now: int) -> Circuit:
    circuit = Circuit()
    circuit.max_connections, circuit.max_pending, circuit.connections = max_connections, max_pending, open_now
    return circuit


@pytest.mark.parametrize(
    "max_connections, max_pending, open_now, reserved, overflows",
    [
        (2, 5, 0, True, 0),  # room
        (2, 5, 1, True, 0),  # the last slot
        (1, 0, 1, False, 1),  # full, no pending allowed: overflow at once
    ],
)
async def test_reserve_connection_without_waiting(autojump_clock, max_connections, max_pending, open_now, reserved, overflows):
    circuit = _circuit(max_connections, max_pending, open_now)
    start = trio.current_time()
    assert await reserve_connection(circuit, start + 10) is reserved
    assert trio.current_time() == start  # none of these waited (a wait would have moved the autojump clock)
    assert circuit.connections == open_now + (1 if reserved else 0)
    assert circuit.overflows == overflows


async def test_a_pending_connection_takes_the_slot_a_closing_one_frees(autojump_clock):
    circuit = _circuit(1, 1, 1)
    results = []

    async def pending():
        results.append(await reserve_connection(circuit, trio.current_time() + 10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pending)
        await trio.sleep(3)
        assert results == [] and circuit.pending == 1
        # A second waiter finds the pending slot taken: overflow, at once.
        assert await reserve_connection(circuit, trio.current_time() + 10) is False
        circuit.connection_closed()
    assert results == [True]
    assert (circuit.connections, circuit.pending, circuit.overflows) == (1, 0, 1)


async def test_a_pending_connection_gives_up_at_the_connect_deadline(autojump_clock):
    circuit = _circuit(1, 1, 1)
    start = trio.current_time()
    assert await reserve_connection(circuit, start + 10) is False
    assert trio.current_time() - start == pytest.approx(10)
    assert (circuit.connections, circuit.pending, circuit.overflows) == (1, 0, 1)
