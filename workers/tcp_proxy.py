# L4 proxying: Gateway TCP servers, TLS passthrough chains and TLS-terminated TCP chains (Envoy tcp_proxy).
#
# Rules:
# - One destination per connection: a weighted pick among the route's clusters (weights relative, as the
#   compiler left them), then an endpoint from that cluster's balancer. One connect attempt (Envoy's
#   max_connect_attempts default), bounded by the cluster's connectTimeout; failure, no cluster or no healthy
#   endpoint → the client connection is closed. A connect failure counts against the endpoint (outlier
#   detection, status 0); a success resets its error streak and keeps it "active" until the connection ends.
# - Circuit breaking (DestinationRule connectionPool.tcp.maxConnections, per worker as for HTTP, and shared with
#   the cluster's HTTP connections, as Envoy's cluster-wide limit is): at the limit a new connection waits as a
#   pending one while fewer than http1MaxPendingRequests wait, else it is closed at once (flag UO). The wait for
#   a slot counts against the cluster's connectTimeout; running out of it closes the client too (UO).
# - Bytes already read from the client (the ClientHello of a passthrough connection) go upstream first.
# - Splice: two pumps, one per direction. Between raw sockets each pump owns a reusable SPLICE_BUFFER_BYTES
#   buffer and does try-first recv_into/send, waiting only when a call would block, with a checkpoint every
#   FAIRNESS_OPS transfers that did not wait. EOF on one side half-closes the other (shutdown(SHUT_WR)) and
#   the other direction goes on until its own EOF. A reset or error on either side ends both.
# - TLS-terminated clients (and TLS-originating upstreams) are spliced through their transports with the
#   same half-close rule; on a TLS side the half-close is close_notify followed by FIN.
# - Idle timeout: DestinationRule tcp.idleTimeout (default 1 h, 0 = off) with no byte in either direction →
#   both sides closed; checked every idle/4. maxConnectionDuration bounds the whole connection.
# - Every proxied connection ends with one TcpLog (worker.finish_tcp: access log line and closed/bytes
#   counters). It counts as opened (worker.stats.tcp_connection_opened) as soon as its cluster is chosen, so
#   opened and closed always pair, whatever happens upstream. Flags as Envoy's tcp_proxy: NC no cluster,
#   UH no healthy endpoint, UF connect failure.
from __future__ import annotations

import math
import random
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from edge.table import PROTO_TCP, L4Route, WeightedCluster
from workers.access_log import TcpLog
from workers.netio import SocketTransport, Transport, TransportClosed, open_tcp_socket, set_tcp_keepalive
from workers.upstream import Circuit, address_text

if TYPE_CHECKING:
    from workers.main import Worker
    from workers.tableview import ClusterRuntime, Compiled

SPLICE_BUFFER_BYTES = 256 * 1024
FAIRNESS_OPS = 16
IDLE_CHECKS_PER_TIMEOUT = 4
STATUS_CONNECT_FAILURE = 0
STATUS_CONNECTED = 200


def pick_weighted(clusters: Sequence[WeightedCluster], total_weight: int, rng: random.Random) -> WeightedCluster | None:
    """The destination of one connection: weight/total of the time; a lone destination always."""
    if not clusters:
        return None
    if len(clusters) == 1:
        return clusters[0]
    total = total_weight if total_weight > 0 else sum(max(0, c.weight) for c in clusters)
    if total <= 0:
        return None
    r = rng.randrange(total)
    for wc in clusters:
        r -= max(0, wc.weight)
        if r < 0:
            return wc
    return clusters[-1]


class Splice:
    """Counters of one proxied connection (also what the idle watchdog looks at)."""

    __slots__ = ("bytes_down", "bytes_up", "idle_timeout", "reset")

    def __init__(self) -> None:
        self.bytes_up = 0  # client → upstream
        self.bytes_down = 0  # upstream → client
        self.reset = False
        self.idle_timeout = False


# ---------------------------------------------------------------------------------------------------------
# Upstream connection
# ---------------------------------------------------------------------------------------------------------


class _Upstream:
    __slots__ = ("cluster_rt", "index", "sock", "transport")

    def __init__(self, sock: socket.socket, transport: Transport | None, cluster_rt: ClusterRuntime, index: int):
        self.sock = sock
        self.transport = transport  # TLS origination (DestinationRule tls); None: plain TCP, the fast splice
        self.cluster_rt = cluster_rt
        self.index = index

    def finish(self) -> None:
        self.cluster_rt.balancer.on_cancel(self.index)
        self.cluster_rt.circuit.connection_closed()
        if self.transport is not None:
            self.transport.close()
        _close(self.sock)


async def reserve_connection(circuit: Circuit, deadline: float) -> bool:
    """Count one upstream connection against the cluster's maxConnections, waiting as a pending connection
    while it is full; False when too many already wait or the deadline passed (the caller's flag: UO)."""
    with trio.move_on_at(deadline):
        while circuit.connections >= circuit.max_connections:
            if circuit.pending >= circuit.max_pending:
                circuit.overflows += 1
                return False
            circuit.pending += 1
            try:
                await circuit.lot.park()
            finally:
                circuit.pending -= 1
        circuit.connections += 1
        return True
    circuit.overflows += 1
    return False


async def _open_upstream(worker: Worker, compiled: Compiled, route: L4Route, log: TcpLog) -> _Upstream | None:
    wc = pick_weighted(route.clusters, route.total_weight, worker.rng)
    cluster_rt = compiled.clusters.get(wc.cluster) if wc is not None and wc.cluster else None
    log.upstream_cluster = wc.cluster if wc is not None and wc.cluster else "-"
    log.route_name = route.virtual_service or "-"
    worker.stats.tcp_connection_opened(log.listener, log.upstream_cluster)
    if cluster_rt is None:
        log.flags = "NC"  # unknown host or subset
        return None
    cluster = cluster_rt.cluster
    timeout = cluster.pool.connect_timeout_s if cluster.pool.connect_timeout_s > 0 else math.inf
    deadline = trio.current_time() + timeout
    circuit = cluster_rt.circuit
    if not await reserve_connection(circuit, deadline):
        log.flags = "UO"
        return None
    balancer = cluster_rt.balancer
    index = balancer.choose(trio.current_time())
    if index is None:
        circuit.connection_closed()
        log.flags = "UH"
        return None
    endpoint = balancer.states[index].endpoint
    log.upstream_host = balancer.states[index].address_text
    balancer.on_start(index)
    sock: socket.socket | None = None
    transport: Transport | None = None
    connected = failed = False
    try:
        with trio.fail_at(deadline):
            sock = await open_tcp_socket(endpoint.address, endpoint.port)
            if cluster.tls is not None:
                transport = await worker.tls.connect_l4(sock, cluster.tls)
                if transport is None:
                    raise OSError("upstream TLS handshake failed")
        connected = True
    except (OSError, trio.TooSlowError):
        failed = True
        balancer.on_finish(index, STATUS_CONNECT_FAILURE, trio.current_time())
        log.flags = "UF"
        return None
    finally:
        if not connected:  # failed, or cancelled (drain, shutdown): give back what this attempt took
            if transport is not None:
                transport.close()
            if sock is not None:
                _close(sock)
            circuit.connection_closed()
            if not failed:
                balancer.on_cancel(index)
    # The connect verdict (resets the endpoint's failure streak); the endpoint stays active until the end.
    balancer.on_finish(index, STATUS_CONNECTED, trio.current_time())
    balancer.on_start(index)
    if cluster.pool.tcp_keepalive is not None:
        set_tcp_keepalive(sock, cluster.pool.tcp_keepalive)
    log.upstream_local = address_text(sock)
    return _Upstream(sock, transport, cluster_rt, index)


def _close(sock: socket.socket) -> None:
    if sock.fileno() >= 0:
        try:
            trio.lowlevel.notify_closing(sock)
        except (RuntimeError, ValueError):
            pass
        sock.close()


def _limits(upstream: _Upstream) -> tuple[float, float]:
    pool = upstream.cluster_rt.cluster.pool
    return pool.tcp_idle_timeout_s, pool.max_connection_duration_s


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------


def new_tcp_log(sock: socket.socket, listener_key: str, sni: str | None = None) -> TcpLog:
    """The log of one L4 connection, started at accept time (as far as we know it)."""
    log = TcpLog(time.time(), listener_key)
    try:
        peer, local = sock.getpeername(), sock.getsockname()
        log.downstream_remote = f"{peer[0]}:{peer[1]}"
        log.downstream_local = f"{local[0]}:{local[1]}"
    except OSError:
        pass
    if sni:
        log.sni = sni
    return log


async def serve_tcp_connection(worker: Worker, sock: socket.socket, key: str) -> None:
    """PROTO_TCP listeners: the listener's single tcp route."""
    compiled = worker.view.current()
    lr = compiled.listeners.get(key) if compiled is not None else None
    if lr is None or lr.listener.tcp is None:
        return
    await proxy_socket(worker, compiled, sock, lr.listener.tcp, new_tcp_log(sock, key))


async def proxy_socket(worker: Worker, compiled: Compiled, client: socket.socket, route: L4Route, log: TcpLog, initial: bytes = b"") -> Splice | None:
    """A raw client socket (TCP, TLS passthrough) to the route's destination; None when none was reached."""
    splice = None
    try:
        upstream = await _open_upstream(worker, compiled, route, log)
        if upstream is None:
            return None
        idle_s, max_s = _limits(upstream)
        splice = Splice()
        worker.stats.track_tcp(log, splice)  # bytes reach the metrics while the connection lasts
        try:
            if upstream.transport is None:
                await splice_sockets(client, upstream.sock, idle_s, max_s, initial, splice=splice)
            else:
                await splice_transports(SocketTransport(client), upstream.transport, idle_s, max_s, initial, splice=splice)
            return splice
        finally:
            upstream.finish()
    finally:
        _finish_log(worker, log, splice)


async def proxy_transport(worker: Worker, compiled: Compiled, client: Transport, route: L4Route, log: TcpLog) -> Splice | None:
    """A TLS-terminated client (Gateway protocol TLS, mode SIMPLE) to the route's destination."""
    splice = None
    try:
        upstream = await _open_upstream(worker, compiled, route, log)
        if upstream is None:
            return None
        idle_s, max_s = _limits(upstream)
        target = upstream.transport if upstream.transport is not None else SocketTransport(upstream.sock)
        splice = Splice()
        worker.stats.track_tcp(log, splice)
        try:
            await splice_transports(client, target, idle_s, max_s, splice=splice)
            return splice
        finally:
            upstream.finish()
    finally:
        _finish_log(worker, log, splice)


def _finish_log(worker: Worker, log: TcpLog, splice: Splice | None) -> None:
    if splice is not None:
        log.bytes_received = splice.bytes_up
        log.bytes_sent = splice.bytes_down
        if splice.idle_timeout:
            log.termination_details = "idle_timeout"
    log.duration_ms = int((time.time() - log.start) * 1000)
    worker.finish_tcp(log)


# ---------------------------------------------------------------------------------------------------------
# Splicing
# ---------------------------------------------------------------------------------------------------------


async def splice_sockets(client: socket.socket, upstream: socket.socket, idle_timeout_s: float = 0.0, max_duration_s: float = 0.0, initial: bytes = b"", splice: Splice | None = None) -> Splice:
    """Copy bytes both ways between two connected non-blocking sockets until both directions saw EOF, one
    side failed, or a timeout fired. Closing the sockets is the caller's business."""
    splice = splice if splice is not None else Splice()  # the caller's, to watch the bytes as they go
    with trio.move_on_after(max_duration_s if max_duration_s > 0 else math.inf):
        async with trio.open_nursery() as nursery:
            if idle_timeout_s > 0:
                nursery.start_soon(_watch_idle, splice, idle_timeout_s, nursery.cancel_scope)
            try:
                if initial:
                    await _send_all(upstream, memoryview(initial))
                    splice.bytes_up += len(initial)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(_pump_sockets, client, upstream, splice, True, nursery.cancel_scope)
                    pumps.start_soon(_pump_sockets, upstream, client, splice, False, nursery.cancel_scope)
            except OSError:
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


async def splice_transports(client: Transport, upstream: Transport, idle_timeout_s: float = 0.0, max_duration_s: float = 0.0, initial: bytes = b"", splice: Splice | None = None) -> Splice:
    """splice_sockets for transports (TLS on either side; a TLS side half-closes with close_notify)."""
    splice = splice if splice is not None else Splice()
    with trio.move_on_after(max_duration_s if max_duration_s > 0 else math.inf):
        async with trio.open_nursery() as nursery:
            if idle_timeout_s > 0:
                nursery.start_soon(_watch_idle, splice, idle_timeout_s, nursery.cancel_scope)
            try:
                if initial:
                    await upstream.send_all(initial)
                    splice.bytes_up += len(initial)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(_pump_transports, client, upstream, splice, True, nursery.cancel_scope)
                    pumps.start_soon(_pump_transports, upstream, client, splice, False, nursery.cancel_scope)
            except (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                splice.reset = True
            nursery.cancel_scope.cancel()
    return splice


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


__all__ = ["PROTO_TCP", "Splice", "new_tcp_log", "pick_weighted", "proxy_socket", "proxy_transport", "serve_tcp_connection", "splice_sockets", "splice_transports"]
