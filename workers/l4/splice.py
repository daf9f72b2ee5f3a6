# Splicing bytes both ways between two connections: TCP and TLS-passthrough proxying, TLS-terminated TCP, and
# WebSocket after its upgrade. One frame for every pair of ends; the pumps differ only by what an end is.
#
# Rules:
# - Two pumps, one per direction. Between two raw sockets each pump owns a reusable SPLICE_BUFFER_BYTES buffer
#   and does try-first recv_into/send, waiting only when a call would block, with a checkpoint every FAIRNESS_OPS
#   transfers that did not wait. Any other pair (TLS on either side, a WebSocket's transports) goes through the
#   ends' transports (workers/netio.py, workers/tls/transport.py).
# - EOF on one side half-closes the other (shutdown(SHUT_WR); on a TLS side close_notify then FIN) and the other
#   direction goes on until its own EOF. A reset or error on either side ends both (`reset`).
# - Bytes already read from the client (a ClientHello, what followed a WebSocket handshake) go upstream first.
# - Idle timeout: no byte in either direction for idle_timeout_s ends both (checked every idle/4); max_duration_s
#   bounds the whole splice. Closing the ends is the caller's business.
from __future__ import annotations

import math
import socket

import trio

from workers.netio import SocketTransport, Transport, TransportClosed

SPLICE_BUFFER_BYTES = 256 * 1024
FAIRNESS_OPS = 16
IDLE_CHECKS_PER_TIMEOUT = 4
_ENDED = (OSError, TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError)


class Splice:
    """Counters of one proxied connection (also what the idle watchdog looks at)."""

    __slots__ = ("bytes_down", "bytes_up", "idle_timeout", "reset")

    def __init__(self) -> None:
        self.bytes_up = 0  # client → upstream
        self.bytes_down = 0  # upstream → client
        self.reset = False
        self.idle_timeout = False


async def splice_bytes(client: socket.socket | Transport, upstream: socket.socket | Transport, idle_timeout_s: float = 0.0, max_duration_s: float = 0.0, initial: bytes = b"", splice: Splice | None = None) -> Splice:
    """Copy bytes both ways until both directions saw EOF, one side failed, or a timeout fired. Each end is a
    connected non-blocking socket or a transport; two sockets get the raw-socket pumps."""
    splice = splice if splice is not None else Splice()  # the caller's, to watch the bytes as they go
    raw = isinstance(client, socket.socket) and isinstance(upstream, socket.socket)
    if not raw:
        client = SocketTransport(client) if isinstance(client, socket.socket) else client
        upstream = SocketTransport(upstream) if isinstance(upstream, socket.socket) else upstream
    pump = _pump_sockets if raw else _pump_transports
    with trio.move_on_after(max_duration_s if max_duration_s > 0 else math.inf):
        async with trio.open_nursery() as nursery:
            if idle_timeout_s > 0:
                nursery.start_soon(_watch_idle, splice, idle_timeout_s, nursery.cancel_scope)
            try:
                if initial:
                    await (_send_all(upstream, memoryview(initial)) if raw else upstream.send_all(initial))
                    splice.bytes_up += len(initial)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(pump, client, upstream, splice, True, nursery.cancel_scope)
                    pumps.start_soon(pump, upstream, client, splice, False, nursery.cancel_scope)
            except _ENDED:
                splice.reset = True
            nursery.cancel_scope.cancel()
    return splice


async def _send_all(sock: socket.socket, view: memoryview) -> None:
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def _pump_sockets(src: socket.socket, dst: socket.socket, splice: Splice, upstream_bound: bool, scope: trio.CancelScope) -> None:
    buffer = bytearray(SPLICE_BUFFER_BYTES)
    view = memoryview(buffer)
    fast = 0
    try:
        while True:
            try:
                n = src.recv_into(buffer)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                fast = 0
                continue
            if n == 0:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if upstream_bound:
                splice.bytes_up += n
            else:
                splice.bytes_down += n
            start = 0
            while start < n:
                try:
                    start += dst.send(view[start:n])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
                    fast = 0
            fast += 1
            if fast >= FAIRNESS_OPS:
                fast = 0
                await trio.lowlevel.checkpoint()
    except OSError:  # reset, broken pipe: the connection is over in both directions
        splice.reset = True
        scope.cancel()


async def _pump_transports(src: Transport, dst: Transport, splice: Splice, upstream_bound: bool, scope: trio.CancelScope) -> None:
    try:
        while True:
            data = await src.recv(SPLICE_BUFFER_BYTES)
            if not data:
                await dst.send_eof()
                return
            if upstream_bound:
                splice.bytes_up += len(data)
            else:
                splice.bytes_down += len(data)
            await dst.send_all(data)
    except (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        splice.reset = True
        scope.cancel()


async def _watch_idle(splice: Splice, idle_timeout_s: float, scope: trio.CancelScope) -> None:
    step = idle_timeout_s / IDLE_CHECKS_PER_TIMEOUT
    seen = 0
    quiet_since = trio.current_time()
    while True:
        await trio.sleep(step)
        progress = splice.bytes_up + splice.bytes_down
        now = trio.current_time()
        if progress != seen:
            seen = progress
            quiet_since = now
        elif now - quiet_since >= idle_timeout_s:
            splice.idle_timeout = True
            scope.cancel()
            return
