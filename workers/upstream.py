# Per-worker pools of keep-alive HTTP/1.1 connections to upstream endpoints (HTTP/2 connections, which multiplex
# streams, are kept beside them in `multiplexed` by workers/http2/client.py, under the same Circuit).
#
# Rules:
# - One pool per (address, port, TLS settings key). Idle connections are reused LIFO: the most recently used
#   connection is the one most likely still open and warm.
# - A connection goes back to the pool only when its exchange ended cleanly (the codec says both messages
#   finished and keep-alive holds on both sides) and its request budget (maxRequestsPerConnection) is not spent. Anything else —
#   an error, a cancelled request, a body not read to the end — closes it: a connection in an unknown
#   state is never reused.
# - A connection goes back to the pool only with nothing unread after its response (the codec checks its
#   buffer). Before reuse, an idle connection is probed without blocking (a poll): readable means the server
#   closed it, or sent bytes nobody asked for (an idle-timeout 408, a second response to one request), so it is
#   discarded and the request takes another connection. A connection reused within PROBE_AFTER_IDLE_S of its
#   release is not probed: under load that is nearly every reuse, and the probe's system call then costs 2–3 %
#   of throughput (loadtest: with a 10 ms threshold, +2 µs of kernel time per request); servers close idle
#   keep-alive connections (and send their idle-timeout 408s) after seconds, not within half of one. No client
#   can make a backend send more responses than requests: the framing upstream is edge's own
#   (workers/http/framing.py).
# - Idle connections older than the pool's idle timeout are closed by `serve_idle_reaper`; at most
#   MAX_IDLE_PER_ENDPOINT idle connections are kept per endpoint.
# - Connect has its own timeout (DestinationRule connectTimeout, default 10 s); a failure raises
#   ConnectFailure, which the proxy maps to a retry or a 503 (UF).
# - Circuit breaking (DestinationRule connectionPool) is counted per cluster in a `Circuit`: open connections
#   (active and idle) up to maxConnections; beyond that a request waits for a connection (released to idle or
#   closed) while fewer than http1MaxPendingRequests wait, else it overflows (503 UO, x-envoy-overloaded).
#   Limits are per gateway: each of the N workers enforces ceil(limit / N) (see README, "Circuit breaking").
from __future__ import annotations

import math
import socket
import ssl
import time

import trio

from edge.table import UNLIMITED, ConnectionPool
from workers.netio import SocketTransport, Transport, open_tcp_socket, set_tcp_keepalive
from workers.tls.transport import TLSTransport

MAX_IDLE_PER_ENDPOINT = 256
PROBE_AFTER_IDLE_S = 0.5
REAPER_INTERVAL_S = 1.0


class ConnectFailure(Exception):
    """The upstream connection could not be established (refused, timed out, TLS failed)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Overflow(Exception):
    """A circuit breaker is open: too many connections, pending or active requests for the cluster."""


def _per_worker(limit: int, workers: int) -> int:
    if limit >= UNLIMITED or limit <= 0:
        return UNLIMITED
    return max(1, math.ceil(limit / max(1, workers)))


class Circuit:
    """Circuit-breaker counters of one cluster in one worker; kept across table generations."""

    __slots__ = ("max_connections", "max_pending", "max_requests", "max_retries", "connections", "pending", "requests", "retries", "lot", "overflows")

    def __init__(self) -> None:
        self.max_connections = self.max_pending = self.max_requests = self.max_retries = UNLIMITED
        self.connections = 0  # open upstream connections, active or idle
        self.pending = 0  # requests waiting for a connection
        self.requests = 0  # requests in flight
        self.retries = 0  # retries in flight
        self.lot = trio.lowlevel.ParkingLot()
        self.overflows = 0

    def configure(self, pool: ConnectionPool, workers: int) -> None:
        self.max_connections = _per_worker(pool.max_connections, workers)
        self.max_pending = _per_worker(pool.http1_max_pending_requests, workers)
        self.max_requests = _per_worker(pool.http2_max_requests, workers)
        self.max_retries = _per_worker(pool.max_retries, workers)

    # The circuit's rules, for HTTP requests and TCP connections alike (Envoy's circuit breakers): a reservation that
    # would exceed its limit is refused and counted as an overflow.

    def try_reserve_connection(self) -> bool:
        """Count one more upstream connection if maxConnections allows it."""
        if self.connections < self.max_connections:
            self.connections += 1
            return True
        return False

    async def wait_pending(self) -> bool:
        """Wait as a pending request for a connection to close; False (an overflow) when too many already wait
        (http1MaxPendingRequests)."""
        if self.pending >= self.max_pending:
            self.overflows += 1
            return False
        self.pending += 1
        try:
            await self.lot.park()
        finally:
            self.pending -= 1
        return True

    def reserve_request(self) -> bool:
        """Count one more request in flight if http2MaxRequests allows it."""
        if self.requests >= self.max_requests:
            self.overflows += 1
            return False
        self.requests += 1
        return True

    def release_request(self) -> None:
        self.requests -= 1

    def retry_budget_left(self) -> bool:
        """Whether a request may retry now (maxRetries counts requests retrying, each once)."""
        if self.retries >= self.max_retries:
            self.overflows += 1
            return False
        return True

    def reserve_retry(self) -> None:
        self.retries += 1

    def release_retry(self) -> None:
        self.retries -= 1

    def connection_closed(self) -> None:
        if self.connections > 0:
            self.connections -= 1
        if self.lot:
            self.lot.unpark()


def address_text(sock) -> str:
    """A connected socket's own address as the access log prints it ("ip:port", "[ip6]:port"), or "-"."""
    try:
        local = sock.getsockname()
    except OSError:
        return "-"
    return f"[{local[0]}]:{local[1]}" if sock.family == socket.AF_INET6 else f"{local[0]}:{local[1]}"


async def _originate_tls(sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None) -> TLSTransport:
    """TLS over a connected upstream socket (the same transport as TCP origination and termination use); the
    socket is closed when the session cannot be established."""
    try:
        transport = TLSTransport(sock, context, server_side=False, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise
    try:
        await transport.do_handshake()
    except BaseException:
        transport.close()
        raise
    return transport


async def open_transport(address: str, port: int, connect_timeout_s: float, tls: ssl.SSLContext | None = None, server_hostname: str | None = None, keepalive: tuple | None = None) -> tuple[Transport | TLSTransport, str]:
    """A connected transport to an endpoint (TLS originated with `tls`) and our end's address; raises
    ConnectFailure with Envoy's reason. Shared by the HTTP/1.1 pools and the HTTP/2 connections."""
    try:
        with trio.fail_after(connect_timeout_s if connect_timeout_s > 0 else 3600):
            sock = await open_tcp_socket(address, port)
            if keepalive is not None:
                set_tcp_keepalive(sock, keepalive)
            transport: Transport | TLSTransport
            if tls is None:
                transport = SocketTransport(sock)
            else:
                transport = await _originate_tls(sock, tls, server_hostname)
    except trio.TooSlowError:
        raise ConnectFailure("connection timeout") from None
    except ValueError as exc:
        # ssl refuses the server name before anything is sent: an auto SNI from a Host such as ".x" or ""
        # (Envoy's handshake fails the same way). A failure of this request, not of the worker.
        raise ConnectFailure(f"TLS error: {exc}") from None
    except ssl.SSLError as exc:  # the handshake failed (verification, protocol): Envoy's TLS error reason
        raise ConnectFailure(f"TLS error: {getattr(exc, 'reason', None) or exc}") from None
    except (OSError, trio.BrokenResourceError) as exc:
        reason = "connection failure"
        if isinstance(exc, OSError) and exc.strerror:
            reason = f"connection failure, transport failure reason: {exc.strerror}"
        raise ConnectFailure(reason) from None
    return transport, address_text(sock)


class UpstreamConnection:
    __slots__ = ("transport", "codec", "key", "requests", "idle_since", "created", "reused", "circuit", "local")

    def __init__(self, transport: Transport, codec, key: tuple, circuit: Circuit | None = None, local: str = "-"):
        self.transport = transport
        self.local = local  # "ip:port" of our end, for the access log's %UPSTREAM_LOCAL_ADDRESS%
        self.codec = codec
        self.key = key
        self.requests = 0
        self.idle_since = 0.0
        self.created = time.monotonic()
        self.reused = False
        self.circuit = circuit

    def close(self) -> None:
        if not self.transport.closed:
            self.transport.close()
            if self.circuit is not None:
                self.circuit.connection_closed()


class Pool:
    __slots__ = ("idle", "active", "idle_timeout_s", "connects", "reuses")

    def __init__(self) -> None:
        self.idle: list[UpstreamConnection] = []
        self.active = 0
        self.idle_timeout_s = 3600.0
        self.connects = 0
        self.reuses = 0


class UpstreamPools:
    """All upstream pools of one worker."""

    def __init__(self, client_codec) -> None:
        self.pools: dict[tuple, Pool] = {}
        # HTTP/2 connections per pool key, each carrying many streams (workers/http2/client.py keeps them).
        self.multiplexed: dict[tuple, list] = {}
        self.client_codec = client_codec  # workers.http.codec_h11.H11Client or FastClient

    def pool(self, key: tuple) -> Pool:
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool()
        return pool

    def take_idle(self, key: tuple) -> UpstreamConnection | None:
        pool = self.pools.get(key)
        if pool is None:
            return None
        idle = pool.idle
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.transport.closed:
                continue
            if now - conn.idle_since < PROBE_AFTER_IDLE_S or not conn.transport.has_unread():  # nothing said since
                conn.reused = True
                conn.codec.start_next_cycle()
                pool.active += 1
                pool.reuses += 1
                return conn
            conn.close()
        return None

    async def acquire(self, key: tuple, circuit: Circuit, address: str, port: int, pool_settings: ConnectionPool, tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> UpstreamConnection:
        """An idle connection, or a new one within the circuit's limits; waits as a pending request when the
        cluster is at maxConnections. Raises Overflow or ConnectFailure. The caller bounds the wait."""
        while True:
            conn = self.take_idle(key)
            if conn is not None:
                return conn
            if circuit.try_reserve_connection():
                break
            if not await circuit.wait_pending():
                raise Overflow()
        try:
            conn = await self.connect(key, address, port, pool_settings.connect_timeout_s, tls, server_hostname, pool_settings.tcp_keepalive)
        except BaseException:
            circuit.connection_closed()
            raise
        conn.circuit = circuit
        self.pools[key].idle_timeout_s = pool_settings.idle_timeout_s
        return conn

    async def connect(self, key: tuple, address: str, port: int, connect_timeout_s: float, tls: ssl.SSLContext | None = None, server_hostname: str | None = None, keepalive: tuple | None = None) -> UpstreamConnection:
        pool = self.pool(key)
        transport, local = await open_transport(address, port, connect_timeout_s, tls, server_hostname, keepalive)
        pool.connects += 1
        pool.active += 1
        return UpstreamConnection(transport, self.client_codec(), key, local=local)

    def release(self, conn: UpstreamConnection, reusable: bool, max_requests: int = 0) -> None:
        pool = self.pools.get(conn.key)
        if pool is not None and pool.active > 0:
            pool.active -= 1
        conn.requests += 1
        if (
            reusable
            and pool is not None
            and not conn.transport.closed
            and conn.codec.reusable
            and (max_requests <= 0 or conn.requests < max_requests)
            and len(pool.idle) < MAX_IDLE_PER_ENDPOINT
        ):
            conn.idle_since = time.monotonic()
            pool.idle.append(conn)
            if conn.circuit is not None and conn.circuit.lot:
                conn.circuit.lot.unpark()  # a pending request can take it
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        if type(conn) is not UpstreamConnection:  # an HTTP/2 stream held for a retry (workers/http2/client.py)
            conn.release()
            return
        self.release(conn, reusable=False)

    def close_idle(self, expired_only: bool = False) -> int:
        """Close idle connections (only those past their pool's idle timeout when `expired_only`)."""
        closed = 0
        now = time.monotonic()
        for pool in self.pools.values():
            keep = []
            for conn in pool.idle:
                if not expired_only or now - conn.idle_since >= pool.idle_timeout_s:
                    conn.close()
                    closed += 1
                else:
                    keep.append(conn)
            pool.idle[:] = keep
        return closed

    async def serve_idle_reaper(self) -> None:
        while True:
            await trio.sleep(REAPER_INTERVAL_S)
            self.close_idle(expired_only=True)

    def statistics(self) -> dict[str, int]:
        return {
            "pools": len(self.pools),
            "idle": sum(len(p.idle) for p in self.pools.values()),
            "active": sum(p.active for p in self.pools.values()),
            "connects": sum(p.connects for p in self.pools.values()),
            "reuses": sum(p.reuses for p in self.pools.values()),
        }

