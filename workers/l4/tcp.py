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
# - The bytes are spliced by workers/l4/splice.py (raw sockets both ways when neither end is TLS). Idle timeout:
#   DestinationRule tcp.idleTimeout (default 1 h, 0 = off); maxConnectionDuration bounds the whole connection.
# - Every proxied connection ends with one TcpLog (ctx.records.tcp: access log line and closed/bytes
#   counters). It counts as opened (ctx.records.tcp_opened) as soon as its cluster is chosen, so
#   opened and closed always pair, whatever happens upstream. Flags as Envoy's tcp_proxy: NC no cluster,
#   UH no healthy endpoint, UF connect failure.
from __future__ import annotations

import math
import socket
import time

import trio

from edge.table import L4Route
from workers.access_log import TcpLog
from workers.authz import Facts, authorize, rbac_counts
from workers.balance import cumulative_weights, pick_weighted
from workers.context import WorkerContext
from workers.l4.splice import Splice, splice_bytes
from workers.netio import Transport, close_socket, open_tcp_socket, set_tcp_keepalive
from workers.tls.xfcc import peer_principal
from workers.upstream import Circuit, address_text

RBAC_DETAILS = "rbac_access_denied_matched_policy[%s]"  # Envoy's connection termination details of a denial
TCP_RBAC_PREFIX = "tcp"  # Istio's network RBAC filters' stat_prefix ("tcp."): tcp.rbac.allowed, tcp.rbac.denied

STATUS_CONNECT_FAILURE = 0  # the outlier verdict of a failed connect (as an HTTP failure with no response)
STATUS_CONNECTED = 200  # a connect that succeeded resets the endpoint's failure streak


class _Upstream:
    __slots__ = ("cluster_rt", "index", "sock", "transport")

    def __init__(self, sock: socket.socket, transport: Transport | None, cluster_rt, index: int):
        self.sock = sock
        self.transport = transport  # TLS origination (DestinationRule tls); None: plain TCP, the fast splice
        self.cluster_rt = cluster_rt
        self.index = index

    @property
    def end(self) -> socket.socket | Transport:
        return self.transport if self.transport is not None else self.sock

    def finish(self) -> None:
        self.cluster_rt.balancer.on_cancel(self.index)
        self.cluster_rt.circuit.connection_closed()
        if self.transport is not None:
            self.transport.close()
        close_socket(self.sock)


async def reserve_connection(circuit: Circuit, deadline: float) -> bool:
    """Count one upstream connection against the cluster's maxConnections, waiting as a pending connection
    while it is full; False when too many already wait or the deadline passed (the caller's flag: UO)."""
    with trio.move_on_at(deadline):
        while not circuit.try_reserve_connection():
            if not await circuit.wait_pending():
                return False
        return True
    circuit.overflows += 1
    return False


def _choose_cluster(snapshot, route: L4Route, rng):
    """The route's weighted destination for this connection: (its cluster runtime or None, its name or "-")."""
    if not route.clusters:
        return None, "-"
    wc = route.clusters[pick_weighted(cumulative_weights(c.weight for c in route.clusters), rng)]
    if not wc.cluster:
        return None, "-"
    return snapshot.clusters.get(wc.cluster), wc.cluster


async def _open_upstream(ctx: WorkerContext, snapshot, route: L4Route, log: TcpLog) -> _Upstream | None:
    cluster_rt, log.upstream_cluster = _choose_cluster(snapshot, route, ctx.rng)
    log.route_name = route.virtual_service or "-"
    ctx.records.tcp_opened(log)
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
    log.upstream_host = balancer.states[index].address_text
    sock: socket.socket | None = None
    transport: Transport | None = None
    connected = False
    try:
        with balancer.lease(index, trio.current_time) as lease:
            try:
                sock, transport = await _connect(ctx, balancer.states[index].endpoint, cluster, deadline)
            except (OSError, trio.TooSlowError):
                lease.verdict = STATUS_CONNECT_FAILURE
                log.flags = "UF"
                return None
            lease.verdict = STATUS_CONNECTED  # the connect verdict (resets the endpoint's failure streak)
        connected = True
    finally:
        if not connected:  # failed, or cancelled (drain, shutdown): give back what this attempt took
            circuit.connection_closed()
    balancer.on_start(index)  # the endpoint stays active until the connection ends (_Upstream.finish)
    if cluster.pool.tcp_keepalive is not None:
        set_tcp_keepalive(sock, cluster.pool.tcp_keepalive)
    log.upstream_local = address_text(sock)
    return _Upstream(sock, transport, cluster_rt, index)


async def _connect(ctx: WorkerContext, endpoint, cluster, deadline: float) -> tuple[socket.socket, Transport | None]:
    """A connected socket to `endpoint`, with TLS originated when the cluster says; closed again on failure."""
    sock: socket.socket | None = None
    transport: Transport | None = None
    try:
        with trio.fail_at(deadline):
            sock = await open_tcp_socket(endpoint.address, endpoint.port)
            if cluster.tls is not None:
                transport = await ctx.tls.connect_l4(sock, cluster.tls)
                if transport is None:
                    raise OSError("upstream TLS handshake failed")
        return sock, transport
    except BaseException:
        if transport is not None:
            transport.close()
        if sock is not None:
            close_socket(sock)
        raise


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


async def serve_tcp(ctx: WorkerContext, sock: socket.socket, key: str) -> None:
    """PROTO_TCP listeners: the listener's single tcp route."""
    snapshot = ctx.current()
    lr = snapshot.listeners.get(key) if snapshot is not None else None
    if lr is None or lr.listener.tcp is None:
        return
    await proxy_l4(ctx, snapshot, sock, lr.listener.tcp, new_tcp_log(sock, key))


async def proxy_l4(ctx: WorkerContext, snapshot, client: socket.socket | Transport, route: L4Route, log: TcpLog, initial: bytes = b"") -> Splice | None:
    """A client (a raw socket: TCP or TLS passthrough; a transport: TLS terminated) to the route's destination;
    None when none was reached. `initial`: bytes already read from the client (a ClientHello)."""
    splice = None
    try:
        if snapshot.authz is not None:
            allowed = _authorized(snapshot.authz, client, log)
            if log.rbac is not None and ctx.records.stats.enabled:
                ctx.records.stats.rbac(TCP_RBAC_PREFIX, log.rbac)
            if not allowed:
                ctx.records.tcp_opened(log)
                return None  # closed by the caller, as Envoy's network RBAC filter closes it
        upstream = await _open_upstream(ctx, snapshot, route, log)
        if upstream is None:
            return None
        pool = upstream.cluster_rt.cluster.pool
        splice = Splice()
        ctx.records.track_tcp(log, splice)  # bytes reach the metrics while the connection lasts
        try:
            await splice_bytes(client, upstream.end, pool.tcp_idle_timeout_s, pool.max_connection_duration_s, initial, splice=splice)
            return splice
        finally:
            upstream.finish()
    finally:
        _finish_log(ctx, log, splice)


def _split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port) if port.isdigit() else 0


def _authorized(authz, client: socket.socket | Transport, log: TcpLog) -> bool:
    """AuthorizationPolicy's TCP rules, once at connection start, with the L4 attributes only (the addresses
    as the log took them at accept time: the PROXY protocol's when the listener reads it). A denial is logged
    with Envoy's connection termination details."""
    source, _ = _split_address(log.downstream_remote)
    local, port = _split_address(log.downstream_local)
    getpeercert = getattr(client, "getpeercert", None)  # a terminated TLS connection's verified certificate
    principal = peer_principal(getpeercert() or {}) if getpeercert is not None and getpeercert(True) else ""
    sni = log.sni if log.sni != "-" else ""
    verdict = authorize(authz.tcp, Facts(source, source, local, port, sni, principal))
    if authz.tcp:
        log.rbac = rbac_counts(authz.tcp, verdict)  # Envoy's network RBAC stats: tcp.rbac.* (Istio's stat prefix "tcp.")
    if verdict.allowed:
        return True
    log.termination_details = RBAC_DETAILS % verdict.policy
    return False


def _finish_log(ctx: WorkerContext, log: TcpLog, splice: Splice | None) -> None:
    if splice is not None:
        log.bytes_received = splice.bytes_up
        log.bytes_sent = splice.bytes_down
        if splice.idle_timeout:
            log.termination_details = "idle_timeout"
    log.duration_ms = int((time.time() - log.start) * 1000)
    ctx.records.tcp(log)
