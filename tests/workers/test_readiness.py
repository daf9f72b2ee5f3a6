"""workers/readiness.py through SocketTransport: edge-triggered read waits must never lose a wake-up."""

from __future__ import annotations

import socket

import pytest
import trio

from workers import readiness
from workers.netio import SocketTransport


def pair() -> tuple[SocketTransport, socket.socket]:
    ours, peer = socket.socketpair()
    return SocketTransport(ours), peer


async def test_a_waiting_reader_wakes_when_bytes_arrive():
    transport, peer = pair()
    got = []

    async def reader():
        got.append(await transport.recv_waiting())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        assert got == []  # waiting, not spinning on EAGAIN
        peer.sendall(b"hello")
    assert got == [b"hello"]
    transport.close()
    peer.close()


async def test_bytes_that_arrived_while_nobody_waited_are_read_without_a_new_event():
    transport, peer = pair()
    assert await _recv(transport, peer, b"first")  # registers the socket
    peer.sendall(b"second")  # one event, reported while no task waits
    await trio.sleep(0.05)  # the readiness task takes the event now
    with trio.fail_after(2):
        assert await transport.recv_waiting() == b"second"
    transport.close()
    peer.close()


async def test_a_full_read_leaves_the_rest_announced():
    transport, peer = pair()
    peer.sendall(b"x" * 100)
    with trio.fail_after(2):
        assert await transport.recv_waiting(40) == b"x" * 40
        assert await transport.recv_waiting(40) == b"x" * 40  # no new arrival: the flag carries it
        assert await transport.recv_waiting(40) == b"x" * 20
    transport.close()
    peer.close()


async def test_closing_wakes_a_waiting_reader_with_closed_resource_error():
    transport, peer = pair()
    errors = []

    async def reader():
        try:
            await transport.recv_waiting()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        transport.close()
    assert len(errors) == 1
    peer.close()


async def test_a_cancelled_wait_leaves_the_socket_usable():
    transport, peer = pair()
    with trio.move_on_after(0.05):
        await transport.recv_waiting()
    peer.sendall(b"later")
    with trio.fail_after(2):
        assert await transport.recv_waiting() == b"later"
    transport.close()
    peer.close()


async def test_eof_and_a_socket_number_reused_after_a_close_behind_our_back():
    transport, peer = pair()
    assert await _recv(transport, peer, b"a")
    fd = transport.sock.fileno()
    transport.sock.close()  # closed without the transport: the kernel drops the registration with the file
    peer.close()
    again, peer2 = pair()
    if again.sock.fileno() != fd:
        pytest.skip("the socket number was not reused")
    assert await _recv(again, peer2, b"b")
    peer2.shutdown(socket.SHUT_WR)
    with trio.fail_after(2):
        assert await again.recv_waiting() == b""
    again.close()
    peer2.close()


async def test_parked_connections_leave_the_set():
    transport, peer = pair()
    assert await _recv(transport, peer, b"a")
    reactor = readiness._READINESS.get()
    fd = transport.sock.fileno()
    assert fd in reactor.states
    transport.unwatch()
    assert fd not in reactor.states
    assert await _recv(transport, peer, b"b")  # the next wait registers again
    transport.close()
    assert fd not in reactor.states
    peer.close()


async def _recv(transport: SocketTransport, peer: socket.socket, data: bytes) -> bool:
    """Whether a reader waiting first gets `data` sent after it started waiting."""
    result = []

    async def reader():
        result.append(await transport.recv_waiting())

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.01)
            peer.sendall(data)
    return result == [data]


# TLS sessions (workers/tls/transport.TLSTransport) wait in the same set: the keep-alive wait, bytes that came while
# nobody waited, close and parking.


def tls_contexts():
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("web.example.com").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def tls_pair():
    from workers.tls.transport import TLSTransport

    server_ctx, client_ctx = tls_contexts()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    server = TLSTransport(a, server_ctx)
    client = TLSTransport(b, client_ctx, server_side=False, server_hostname="web.example.com")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
    return server, client


async def test_tls_keep_alive_waits_in_the_set_and_keeps_unannounced_records():
    server, client = await tls_pair()
    reactor = readiness._READINESS.get()
    fd = server.sock.fileno()
    assert reactor.states[fd] is server._rs  # the handshake's waits registered it, once
    got = []

    async def reader():
        got.append(await server.recv_waiting())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.05)
            assert got == []  # waiting, not spinning
            await client.send_all(b"first")
        assert got == [b"first"]
        await client.send_all(b"second")  # one event, taken by the readiness task while nobody waits
        await trio.sleep(0.05)
        assert await server.recv_waiting() == b"second"
    server.unwatch()  # parked: out of the set; the next wait registers again
    assert fd not in reactor.states
    with trio.fail_after(5):
        await client.send_all(b"third")
        assert await server.recv_waiting() == b"third"
    assert fd in reactor.states
    server.close()
    assert fd not in reactor.states
    client.close()


async def test_closing_a_tls_transport_wakes_its_waiting_reader():
    server, client = await tls_pair()
    errors = []

    async def reader():
        try:
            await server.recv_waiting()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(0.05)
            server.close()
    assert len(errors) == 1
    client.close()
