# What a connection handler may touch: the worker's context, passed into each handler (as hypercorn passes its
# context into each protocol), and the registry of the worker's connections.
#
# Rules:
# - Handlers (workers/http/, workers/l4/, workers/tls/) import this module and their own pure helpers; they never
#   import workers/main.py or workers/listeners.py. main builds the context, listeners dispatches to handlers:
#   imports only go down (tests/test_layout.py checks it).
# - WorkerContext holds what every request needs: the table view and the options of its current table, the codec
#   classes, upstream pools, TLS contexts, one rng, the draining flag, a record sink and the registry. Records
#   (HTTP request logs, TCP connection logs, unexpected errors) reach their sinks one way: through `records`.
# - ConnectionRegistry owns connection state: the count and the limit (the accept loops wait on it), the live
#   HTTP connections and the sweeps over them (idle timeout scaled under pressure, stream idle timeout, the client
#   leaving while its request waits on an upstream). A sweep acts by cancelling a connection's scope: the handler
#   owns what happens next (a 408/504, or a quiet close).
# - Idle keep-alive connections are parked without a task (workers/parking.py): at once when PARK_IDLE_TASKS
#   connections already wait idle in their tasks, and by the idle sweep once idle for PARK_AFTER_S. The idle timeout
#   and drain close parked ones through the same close_idle, and they count against the limit until closed.
from __future__ import annotations

import os
import random
import socket
import ssl
import sys
import time
import traceback
from typing import Callable

import trio

from edge.table import Cluster, Options
from workers.access_log import AccessLog, TcpLog
from workers.overload import scaled_idle_timeout
from workers.parking import Parker
from workers.stats import WorkerStats
from workers.tableview import TableSnapshot, TableView
from workers.tls.contexts import TLSConfigError, TLSContexts
from workers.upstream import ConnectFailure, UpstreamPools

SWEEP_INTERVAL_S = 0.1  # client-gone checks of requests waiting on an upstream
IDLE_SWEEP_INTERVAL_S = 1.0  # idle and stream idle timeouts
MAX_ERROR_SIGNATURES = 1000  # distinct places whose first error is logged with its traceback
# Parking (no task: ~1.4 KiB of RSS per idle connection instead of ~7.2; loadtest/bench_scale.py): an HTTP
# connection going idle is parked at once when this many connections already wait idle in their tasks (so a burst
# of idle connections costs at most this many tasks' memory), and the idle sweep parks those idle PARK_AFTER_S or
# longer. A connection whose requests come more often than that keeps its task and pays nothing for parking (a
# park and resume is a new task and two epoll_ctl calls).
PARK_IDLE_TASKS = 128
PARK_AFTER_S = 1.0

# What an HTTP connection is doing, for the sweeps. BUSY: reading a head or handling a request; IDLE: waiting
# for the next request (the idle timeout applies; drain closes it); UPSTREAM_WAIT: its request waits on an
# upstream response head (the client leaving is checked by a peek); SPLICED: a WebSocket (the splice's own idle
# timeout governs). One cancel scope per connection serves every sweep, so the request path sets attributes
# instead of entering scopes or starting watcher tasks.
STATE_BUSY = 0
STATE_IDLE = 1
STATE_UPSTREAM_WAIT = 2
STATE_SPLICED = 3


def worker_logger(slot: int) -> Callable[[str], None]:
    """A worker's log: one line on stderr, prefixed with the slot and the pid (the supervisor relays it)."""

    def log(message: str) -> None:
        print(f"edge worker {slot} (pid {os.getpid()}): {message}", file=sys.stderr, flush=True)

    return log


class RecordSink:
    """Where records go: each HTTP request's log, each TCP connection's log, each unexpected error."""

    def __init__(self, stats: WorkerStats, access_log: AccessLog, log: Callable[[str], None]):
        self.stats = stats
        self.access_log = access_log
        self.log = log
        self.requests_total = 0
        self.connection_errors = 0
        self._error_signatures: set = set()
        # Only the enabled sinks are hooked in: a disabled sink costs a request nothing.
        self._request_hooks = [hook for enabled, hook in ((stats.enabled, stats.record_request), (access_log.enabled, access_log.write)) if enabled]

    def add_request_hook(self, hook: Callable[[object], None]) -> None:
        """One more consumer of request logs (tests and benchmarks watch what the sinks are given)."""
        self._request_hooks.append(hook)

    def request(self, log) -> None:
        """One HTTP request finished (its workers/http/log.RequestLog): metrics and the access log."""
        self.requests_total += 1
        for hook in self._request_hooks:
            hook(log)

    def tcp_opened(self, log: TcpLog) -> None:
        """A TCP connection chose its cluster: counted as opened now, so opened and closed always pair."""
        self.stats.tcp_connection_opened(log.listener, log.upstream_cluster)

    def track_tcp(self, log: TcpLog, splice) -> None:
        """A spliced connection's bytes reach the metrics while it lasts (workers/l4/splice.Splice counters)."""
        self.stats.track_tcp(log, splice)

    def tcp(self, log: TcpLog) -> None:
        """The end of a TCP/TLS-passthrough connection: its closed/bytes counters and access-log line."""
        sent, received = self.stats.untrack_tcp(log, log.bytes_sent, log.bytes_received)
        self.stats.tcp_connection_closed(log.listener, log.upstream_cluster, sent, received)
        self.access_log.write_tcp(log)

    def tcp_refused(self, log: TcpLog) -> None:
        """A TLS connection refused before any upstream (no filter chain): only its access-log line."""
        self.access_log.write_tcp(log)

    def connection_failed(self, exc: BaseException, key: str) -> None:
        """An unexpected error ended one connection (its boundary caught it): counted, and logged with its
        traceback the first time it happens at that place, in one line after that, so that a client repeating
        it cannot flood the log."""
        self.connection_errors += 1
        self.stats.connection_error()
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        signature = (type(exc).__name__, where)
        if signature in self._error_signatures:
            self.log(f"connection on {key} failed: {type(exc).__name__}: {exc} at {where} (traceback logged before)")
            return
        if len(self._error_signatures) < MAX_ERROR_SIGNATURES:
            self._error_signatures.add(signature)
        text = "".join(traceback.format_exception(exc)).rstrip()
        self.log(f"connection on {key} failed; the worker goes on:\n{text}")


class ConnectionRegistry:
    """The worker's connections: how many (against the per-worker limit), the live HTTP ones, and the sweeps."""

    def __init__(self, options: Callable[[], Options]):
        self._options = options
        self.active = 0  # accepted and not yet closed (counted by the accept loop, so a drain never misses one)
        self.http: set = set()  # the workers/http/server.Http1Downstream of every HTTP connection
        self.upstream_waiting: set = set()  # those whose request waits on an upstream response head
        self.parked = Parker(self.closed)  # idle ones held without a task (counted in `active` until closed)
        self.idle_tasks = 0  # HTTP connections waiting idle in their own task
        self.h2: set = set()  # HTTP/2 connections (workers/http2/connection.py): close_idle sweeps them too
        self._slot_free = trio.Event()

    # ------------------------------------------------------------------ counting

    def opened(self) -> None:
        self.active += 1

    def closed(self) -> None:
        self.active -= 1
        self._slot_free.set()

    def room(self) -> int:
        return self._options().max_connections_per_worker - self.active

    async def wait_slot(self) -> None:
        while self.active >= self._options().max_connections_per_worker:
            self._slot_free = trio.Event()
            await self._slot_free.wait()

    # ------------------------------------------------------------------ sweeps

    def should_park(self) -> bool:
        """Whether a connection going idle now gives up its task at once (see PARK_IDLE_TASKS)."""
        return self.idle_tasks >= PARK_IDLE_TASKS and self.parked.serving

    def park_idle(self, now: float) -> None:
        """Ask connections idle in their task for PARK_AFTER_S to park (workers/http/server.py does it when its
        idle wait is cancelled with park_requested set)."""
        if not self.parked.serving:
            return
        for down in list(self.http):
            if down.state == STATE_IDLE and now - down.since >= PARK_AFTER_S and down.scope is not None:
                down.park_requested = True
                down.scope.cancel()

    def close_idle(self, now: float, idle_timeout_s: float) -> None:
        self.parked.sweep(now, idle_timeout_s)
        for h2c in list(self.h2):  # idle, draining or their listener gone: the two-step GOAWAY
            h2c.sweep(now, idle_timeout_s)
        for down in list(self.http):
            if down.state == STATE_IDLE and now - down.since >= idle_timeout_s and down.scope is not None:
                down.scope.cancel()

    def expire_streams(self, now: float, stream_idle_timeout_s: float) -> None:
        """Envoy's stream_idle_timeout: a request in flight whose bytes have not moved for that long is cancelled;
        its connection answers 408/504 when no response has started (workers/http/server.py)."""
        for down in list(self.http):
            if (
                down.activity
                and (down.state == STATE_BUSY or down.state == STATE_UPSTREAM_WAIT)
                and now - down.activity >= stream_idle_timeout_s
                and down.scope is not None
            ):
                down.stream_timed_out = True
                down.scope.cancel()

    def check_clients_gone(self) -> None:
        for down in list(self.upstream_waiting):
            if client_has_left(down.raw_socket()):
                down.client_gone = True
                if down.scope is not None:
                    down.scope.cancel()

    def sweep_timeouts(self, now: float) -> None:
        options = self._options()
        # Under connection pressure idle connections get less time (workers/overload.py).
        timeout = scaled_idle_timeout(options.idle_timeout_s, self.active, options.max_connections_per_worker)
        if timeout > 0:
            self.close_idle(now, timeout)
        if options.stream_idle_timeout_s > 0:
            self.expire_streams(now, options.stream_idle_timeout_s)
        self.park_idle(now)

    async def serve_sweeper(self) -> None:
        """Client-gone checks every SWEEP_INTERVAL_S; idle and stream idle timeouts every IDLE_SWEEP_INTERVAL_S."""
        next_idle_sweep = time.monotonic() + IDLE_SWEEP_INTERVAL_S
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            self.check_clients_gone()
            now = time.monotonic()  # the clock of Http1Downstream.since and .activity
            if now >= next_idle_sweep:
                next_idle_sweep = now + IDLE_SWEEP_INTERVAL_S
                self.sweep_timeouts(now)


def client_has_left(sock: socket.socket | None) -> bool:
    """True when the client closed or reset its connection (a peek sees EOF or an error); pipelined bytes
    waiting to be read mean it is still there."""
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class WorkerContext:
    """Everything a connection handler may use. One per worker process."""

    def __init__(
        self,
        slot: int,
        view_reader,
        codecs: tuple[type, type],
        *,
        credentials_dir: str | None = None,
        stats: WorkerStats | None = None,
        access_log: AccessLog | None = None,
        rng: random.Random | None = None,
    ):
        self.slot = slot
        self.log = worker_logger(slot)
        self.view = TableView(view_reader, on_change=self._on_table, log=self.log)
        self.options = Options()
        self.server_header = self.options.server_header.encode()
        self.max_header_bytes = self.options.max_request_headers_bytes
        self.server_codec, client_codec = codecs
        self.pools = UpstreamPools(client_codec)
        self.tls = TLSContexts(credentials_dir, log=self.log)
        self.rng = rng if rng is not None else random.Random()
        self.draining = False
        self.records = RecordSink(stats if stats is not None else WorkerStats(None), access_log if access_log is not None else AccessLog("off", "text"), self.log)
        self.registry = ConnectionRegistry(lambda: self.options)
        self.background: trio.Nursery | None = None  # tasks that outlive a request (mirrors); set by the worker
        self.mirrors_in_flight = 0


    def _on_table(self, snapshot: TableSnapshot) -> None:
        self.options = snapshot.options
        self.server_header = snapshot.server_header
        self.max_header_bytes = snapshot.options.max_request_headers_bytes

    def current(self) -> TableSnapshot | None:
        return self.view.current()

    def upstream_tls(self, cluster: Cluster) -> ssl.SSLContext | None:
        """The origination context of a cluster (workers/tls/contexts.py; rebuilt when its files change)."""
        tls = cluster.tls
        if tls is None:
            return None
        try:
            return self.tls.upstream(tls)
        except TLSConfigError as exc:
            raise ConnectFailure(f"TLS error: {exc}") from None

    def spawn(self, fn, *args) -> None:
        """A task that outlives the request that started it (a mirror); it must have its own boundary."""
        self.background.start_soon(fn, *args)
