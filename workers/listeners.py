# Accept loops of a worker, and the dispatch of each accepted connection to its protocol's handler.
#
# Rules:
# - One accept loop per listening socket the supervisor handed us (SO_REUSEPORT: the kernel spreads new
#   connections over the workers' sockets). A loop accepts everything that is ready before it waits again.
# - The protocol of a listener comes from the current table; HANDLERS maps it to the coroutine that serves a
#   connection. A connection for a listener the table no longer has is closed.
# - At most Options.max_connections_per_worker connections at a time; above that the loop stops accepting
#   and the kernel's backlog holds new connections until one ends.
# - Every connection task lives in the worker's connection nursery, so drain can wait for all of them.
# - run_connection is each connection's outermost boundary: an unexpected error is logged, counted and closes that
#   connection only (an HTTP connection has the same boundary one level down, where it can still answer 500:
#   workers/http/server.serve_http_connection).
# - Handlers take (WorkerContext, socket, listener key); this module imports them, they never import it. A handler
#   returns True when it parked the connection (workers/parking.py): it stays open and counted, and the parker
#   hands it to resume_connection, a fresh task with the same boundary, when its socket is readable or closed.
# - With --proxy-protocol (Istio's gatewayTopology.proxyProtocol) every connection must start with a PROXY
#   protocol header (workers/proxy_protocol.py), read within PROXY_HEADER_TIMEOUT_S before the protocol handler
#   runs; its addresses replace the connection's own for everything downstream (X-Forwarded-For, logs,
#   hashing). The header is consumed exactly (peeked first), so the handler sees the connection's own bytes.
from __future__ import annotations

import socket
from typing import Awaitable, Callable

import trio

from edge.table import PROTO_HTTP, PROTO_HTTPS, PROTO_TCP, PROTO_TLS
from workers.context import WorkerContext
from workers.http.server import serve_http, serve_http_connection
from workers.l4.tcp import serve_tcp
from workers.proxy_protocol import MAX_HEADER_BYTES, NEED_MORE, ProxyProtocolError, parse_header
from workers.tls.listener import serve_tls

Handler = Callable[[WorkerContext, socket.socket, str], Awaitable[bool | None]]

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


async def _serve_unsupported(ctx: WorkerContext, sock: socket.socket, key: str) -> None:
    sock.close()
    await trio.lowlevel.checkpoint()


HANDLERS: dict[str, Handler] = {
    PROTO_HTTP: serve_http,  # workers/http/server.py
    PROTO_HTTPS: serve_tls,  # SNI → filter chain → terminate → HTTP (workers/tls/listener.py)
    PROTO_TLS: serve_tls,  # SNI → passthrough splice, or terminate → HTTP/TCP
    PROTO_TCP: serve_tcp,  # workers/l4/tcp.py
}


async def run_connection(ctx: WorkerContext, handler: Handler, sock: socket.socket, key: str) -> None:
    """One accepted connection, start to end (the boundary: see the module's rules)."""
    # The registry counted it when it was accepted.
    served: socket.socket | None = sock
    parked = False
    try:
        if ctx.options.proxy_protocol:
            served = await accept_proxy_header(sock)
            if served is None:
                return
        parked = bool(await handler(ctx, served, key))
    except Exception as exc:  # noqa: BLE001 - the connection boundary (see the module's rules)
        ctx.records.connection_failed(exc, key)
    finally:
        if not parked:
            ctx.registry.closed()
            for each in (sock, served):
                if each is not None and each.fileno() >= 0:
                    each.close()


async def resume_connection(ctx: WorkerContext, down) -> None:
    """A parked HTTP connection whose socket became readable (or closed): served on in a fresh task, with the
    boundary of run_connection."""
    parked = False
    try:
        parked = bool(await serve_http_connection(down))
    except Exception as exc:  # noqa: BLE001 - the connection boundary (see the module's rules)
        ctx.records.connection_failed(exc, down.listener_key)
    finally:
        if not parked:
            ctx.registry.closed()
            down.transport.close()


async def serve_parked(ctx: WorkerContext, connections: trio.Nursery) -> None:
    """The worker's parker (workers/parking.py): a parked connection that wakes gets its task in `connections`."""
    await ctx.registry.parked.serve(lambda down: connections.start_soon(resume_connection, ctx, down))


def _accept_ready(ctx: WorkerContext, key: str, listen_sock: socket.socket, connections: trio.Nursery, limit: int) -> int:
    """Accept up to `limit` queued connections without waiting; returns how many were taken."""
    accepted = 0
    while accepted < limit:
        try:
            sock, _addr = listen_sock.accept()
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            ctx.log(f"accept on {key} failed: {exc}")
            break
        accepted += 1
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the client reset it already: nothing to serve, and the accept loop goes on
            sock.close()
            continue
        snapshot = ctx.current()
        listener_rt = snapshot.listeners.get(key) if snapshot is not None else None
        if listener_rt is None:
            sock.close()
            continue
        ctx.registry.opened()  # counted now, so a drain never misses a connection not yet started
        connections.start_soon(run_connection, ctx, HANDLERS.get(listener_rt.listener.protocol, _serve_unsupported), sock, key)
    return accepted


async def serve_accept_loop(ctx: WorkerContext, key: str, listen_sock: socket.socket, connections: trio.Nursery) -> None:
    listen_sock.setblocking(False)
    try:
        while True:
            await ctx.registry.wait_slot()
            if _accept_ready(ctx, key, listen_sock, connections, min(ACCEPT_BURST, ctx.registry.room())):
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(listen_sock)
    finally:
        # Stopped (drain or listener removed): connections already in the kernel's queue are taken and
        # served before the socket closes, since closing the last copy would reset them.
        _accept_ready(ctx, key, listen_sock, connections, 1 << 30)
        try:
            trio.lowlevel.notify_closing(listen_sock)
        except (RuntimeError, ValueError):
            pass
        listen_sock.close()


__all__ = ["HANDLERS", "accept_proxy_header", "resume_connection", "run_connection", "serve_accept_loop", "serve_parked"]
