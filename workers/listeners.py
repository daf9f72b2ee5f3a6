# Accept loops and the per-protocol connection handlers of a worker.
#
# Rules:
# - One accept loop per listening socket the supervisor handed us (SO_REUSEPORT: the kernel spreads new
#   connections over the workers' sockets). A loop accepts everything that is ready before it waits again.
# - The protocol of a listener comes from the current table; HANDLERS maps it to the coroutine that serves a
#   connection. A connection for a listener the table no longer has is closed.
# - At most Options.max_connections_per_worker connections at a time; above that the loop stops accepting
#   and the kernel's backlog holds new connections until one ends.
# - Every connection task lives in the worker's connection nursery, so drain can wait for all of them.
# - With --proxy-protocol (Istio's gatewayTopology.proxyProtocol) every connection must start with a PROXY
#   protocol header (workers/proxy_protocol.py), read within PROXY_HEADER_TIMEOUT_S before the protocol handler
#   runs; its addresses replace the connection's own for everything downstream (X-Forwarded-For, logs,
#   hashing). The header is consumed exactly (peeked first), so the handler sees the connection's own bytes.
from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Awaitable, Callable

import trio

from edge.table import PROTO_HTTP, PROTO_HTTPS, PROTO_TCP, PROTO_TLS
from workers.http_proxy import Downstream, serve_http_connection
from workers.netio import SocketTransport
from workers.proxy_protocol import MAX_HEADER_BYTES, NEED_MORE, ProxyProtocolError, parse_header
from workers.tcp_proxy import serve_tcp_connection
from workers.tls import serve_tls_connection

if TYPE_CHECKING:
    from workers.main import Worker

ACCEPT_BURST = 64
PROXY_HEADER_TIMEOUT_S = 15.0  # Envoy's listener_filters_timeout default
PROXY_HEADER_RETRY_S = 0.005  # a partial header is peeked again after this (the socket stays readable)


class ProxiedSocket(socket.socket):
    """A client socket that reports the addresses its PROXY protocol header announced."""

    def adopt(self, peer: tuple, local: tuple) -> "ProxiedSocket":
        self._peer, self._local = peer, local
        return self

    def getpeername(self):
        return self._peer

    def getsockname(self):
        return self._local


async def accept_proxy_header(sock: socket.socket) -> socket.socket | None:
    """Consume the PROXY protocol header at the start of `sock`: the socket to serve (a ProxiedSocket when the
    header carries addresses, `sock` itself for LOCAL/UNKNOWN), or None when the connection must be closed
    (no valid header, closed, or too slow)."""
    with trio.move_on_after(PROXY_HEADER_TIMEOUT_S):
        while True:
            try:
                data = sock.recv(MAX_HEADER_BYTES, socket.MSG_PEEK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                return None
            if not data:
                return None
            try:
                header = parse_header(data)
            except ProxyProtocolError:
                return None
            if header is NEED_MORE:
                await trio.sleep(PROXY_HEADER_RETRY_S)
                continue
            taken = 0
            while taken < header.length:  # already peeked, so these reads do not wait
                try:
                    chunk = sock.recv(header.length - taken)
                except OSError:
                    return None
                if not chunk:
                    return None
                taken += len(chunk)
            if header.source is None or header.destination is None:
                return sock
            proxied = ProxiedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            proxied.setblocking(False)
            return proxied.adopt(header.source, header.destination)
    return None


async def serve_plain_http(worker: "Worker", sock: socket.socket, key: str) -> None:
    transport = SocketTransport(sock)
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        transport.close()
        return
    await serve_http_connection(Downstream(worker, transport, peer, local, "http", key))


async def _serve_unsupported(worker: "Worker", sock: socket.socket, key: str) -> None:
    sock.close()
    await trio.lowlevel.checkpoint()


def _handler(protocol: str) -> Callable[["Worker", socket.socket, str], Awaitable[None]]:
    handler = HANDLERS.get(protocol)
    if handler is None:
        return _serve_unsupported
    return handler


HANDLERS: dict[str, Callable[["Worker", socket.socket, str], Awaitable[None]]] = {
    PROTO_HTTP: serve_plain_http,
    PROTO_HTTPS: serve_tls_connection,  # SNI → filter chain → terminate → HTTP (workers/tls.py)
    PROTO_TLS: serve_tls_connection,  # SNI → passthrough splice, or terminate → HTTP/TCP
    PROTO_TCP: serve_tcp_connection,  # workers/tcp_proxy.py
}


def register_handler(protocol: str, handler: Callable[["Worker", socket.socket, str], Awaitable[None]]) -> None:
    HANDLERS[protocol] = handler


def _accept_ready(worker: "Worker", key: str, listen_sock: socket.socket, connections: trio.Nursery, limit: int) -> int:
    """Accept up to `limit` queued connections without waiting; returns how many were taken."""
    accepted = 0
    while accepted < limit:
        try:
            sock, _addr = listen_sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            worker.log(f"accept on {key} failed: {exc}")
            break
        accepted += 1
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the client reset it already: nothing to serve, and the accept loop goes on
            sock.close()
            continue
        compiled = worker.view.current()
        listener_rt = compiled.listeners.get(key) if compiled is not None else None
        if listener_rt is None:
            sock.close()
            continue
        worker.active_connections += 1  # counted now, so a drain never misses a connection not yet started
        connections.start_soon(worker.run_connection, _handler(listener_rt.listener.protocol), sock, key)
    return accepted


async def serve_accept_loop(worker: "Worker", key: str, listen_sock: socket.socket, connections: trio.Nursery) -> None:
    listen_sock.setblocking(False)
    try:
        while True:
            await worker.wait_connection_slot()
            room = worker.options.max_connections_per_worker - worker.active_connections
            if _accept_ready(worker, key, listen_sock, connections, min(ACCEPT_BURST, room)):
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(listen_sock)
    finally:
        # Stopped (drain or listener removed): connections already in the kernel's queue are taken and
        # served before the socket closes, since closing the last copy would reset them.
        _accept_ready(worker, key, listen_sock, connections, 1 << 30)
        try:
            trio.lowlevel.notify_closing(listen_sock)
        except (RuntimeError, ValueError):
            pass
        listen_sock.close()


__all__ = ["serve_accept_loop", "register_handler", "HANDLERS", "PROTO_HTTP", "PROTO_HTTPS", "PROTO_TLS", "PROTO_TCP"]
