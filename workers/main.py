# Worker process entry: `python -m workers.main --slot N --control-fd FD --table-shm NAME [...]`.
#
# Rules:
# - One trio loop, one root nursery. Its children: the control channel (the supervisor's commands), one
#   accept loop per listening socket, the upstream idle reaper, and the connection nursery that owns every
#   client connection.
# - The worker starts with nothing; the supervisor sends LISTENERS (sockets) and TABLE. It answers SERVING
#   with the generation it loaded, PONG to PING, and on DRAIN: stop accepting, wake idle keep-alive
#   connections so they close, let in-flight requests finish (their responses carry `Connection: close`),
#   exit 0 when none is left or at the deadline.
# - The supervisor's death (control channel EOF) makes the worker drain and exit: an orphan never serves.
# - Workers read only the table and the sockets they were given; they never read the YAML.
from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import ssl
import sys
import time
import traceback

import trio

from edge import control
from edge.shm import TableReader
from edge.stats_shm import SlotWriter, StatsSegmentError
from edge.table import Cluster, Options
from workers.access_log import AccessLog, TcpLog
from workers.http1 import codec_classes
from workers.http_proxy import STATE_BUSY, STATE_IDLE, STATE_UPSTREAM_WAIT
from workers.overload import scaled_idle_timeout
from workers.listeners import accept_proxy_header, serve_accept_loop
from workers.stats import WorkerStats
from workers.tableview import Compiled, TableView
from workers.tls import TLSConfigError, TLSContexts
from workers.upstream import ConnectFailure, UpstreamPools

DRAIN_POLL_S = 0.05
SWEEP_INTERVAL_S = 0.1
IDLE_SWEEP_INTERVAL_S = 1.0
SIGTERM_DRAIN_S = 5.0


class Worker:
    def __init__(self, slot: int, reader: TableReader, control_sock: socket.socket, args: argparse.Namespace, stats_writer: SlotWriter | None = None):
        self.slot = slot
        self.args = args
        self.control_sock = control_sock
        self.view = TableView(reader, on_change=self._on_table, log=self.log)
        self.options = Options()
        self.server_header = self.options.server_header.encode()
        self.max_header_bytes = self.options.max_request_headers_bytes
        self.server_codec, client_codec = codec_classes(args.http_codec)
        self.pools = UpstreamPools(client_codec)
        self.rng = random.Random()
        self.draining = False
        self.mirrors_in_flight = 0

        self.connections: set = set()  # http_proxy.Downstream of every HTTP connection
        self.upstream_waiting: set = set()  # those waiting for an upstream response head
        self.active_connections = 0
        self._slot_free = trio.Event()
        self.accept_scopes: dict[str, trio.CancelScope] = {}
        self.connection_nursery: trio.Nursery | None = None
        self.root_nursery: trio.Nursery | None = None
        self.tls = TLSContexts(args.credentials_dir, log=self.log)
        self.requests_total = 0
        self.connection_errors = 0
        self._error_signatures: set = set()  # where unexpected errors happened: each is logged with a traceback once
        self.finish_hooks: list = []
        # Operations (issue 6): metrics in the stats segment and the access log, both on finish_hooks.
        self.stats = WorkerStats(stats_writer)
        self.access_log = AccessLog(
            getattr(args, "access_log", "off") or "off",
            getattr(args, "access_log_format", "text"),
            warn=self.log,
            template=getattr(args, "access_log_template", "") or "",
        )
        if self.stats.enabled:
            self.finish_hooks.append(self.stats.record_request)
        if self.access_log.enabled:
            self.finish_hooks.append(self.access_log.write)

    # ------------------------------------------------------------------ logging and stats

    def log(self, message: str) -> None:
        print(f"edge worker {self.slot} (pid {os.getpid()}): {message}", file=sys.stderr, flush=True)

    def finish_request(self, log) -> None:
        self.requests_total += 1
        for hook in self.finish_hooks:
            hook(log)

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
        if len(self._error_signatures) < 1000:
            self._error_signatures.add(signature)
        text = "".join(traceback.format_exception(exc)).rstrip()
        self.log(f"connection on {key} failed; the worker goes on:\n{text}")

    def finish_tcp(self, log: TcpLog) -> None:
        """The end of a TCP/TLS-passthrough connection: its access-log line and its closed/bytes counters."""
        sent, received = self.stats.untrack_tcp(log, log.bytes_sent, log.bytes_received)
        self.stats.tcp_connection_closed(log.listener, log.upstream_cluster, sent, received)
        self.access_log.write_tcp(log)

    # ------------------------------------------------------------------ table

    def _on_table(self, compiled: Compiled) -> None:
        self.options = compiled.options
        self.server_header = compiled.server_header
        self.max_header_bytes = compiled.options.max_request_headers_bytes

    def upstream_tls(self, cluster: Cluster) -> ssl.SSLContext | None:
        """The origination context of a cluster (workers/tls.py; rebuilt when its files change)."""
        tls = cluster.tls
        if tls is None:
            return None
        try:
            return self.tls.upstream(tls)
        except TLSConfigError as exc:
            raise ConnectFailure(f"TLS error: {exc}") from None

    # ------------------------------------------------------------------ connections

    async def wait_connection_slot(self) -> None:
        while self.active_connections >= self.options.max_connections_per_worker:
            self._slot_free = trio.Event()
            await self._slot_free.wait()

    async def run_connection(self, handler, sock: socket.socket, key: str) -> None:
        """One accepted connection, start to end. This is the connection's boundary: an unexpected error is
        logged, counted and closes this connection only (an HTTP connection's own loop has the same boundary
        one level down, where it can still answer 500: workers/http_proxy.serve_http_connection)."""
        # active_connections was incremented by the accept loop.
        served: socket.socket | None = sock
        try:
            if self.options.proxy_protocol:
                served = await accept_proxy_header(sock)
                if served is None:
                    return
            await handler(self, served, key)
        except Exception as exc:  # noqa: BLE001 - the connection boundary (see the docstring)
            self.connection_failed(exc, key)
        finally:
            self.active_connections -= 1
            self._slot_free.set()
            for each in (sock, served):
                if each is not None and each.fileno() >= 0:
                    each.close()

    # ------------------------------------------------------------------ control channel

    def _send(self, message: control.Message) -> None:
        try:
            control.send_message(self.control_sock, message)
        except (BlockingIOError, OSError):
            pass

    async def serve_control(self) -> None:
        sock = self.control_sock
        sock.setblocking(False)
        while True:
            try:
                message, fds = control.recv_message(sock)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError:
                message, fds = None, []
            if message is None:
                self.log("supervisor went away; draining")
                await self.drain(5.0)
                return
            op = message.op
            if op == control.LISTENERS:
                self._add_listeners(message.keys, fds)
                for key in message.remove:
                    scope = self.accept_scopes.pop(key, None)
                    if scope is not None:
                        scope.cancel()
                self._report_serving()
            elif op == control.TABLE:
                self.view.refresh()
                self._report_serving()
            elif op == control.PING:
                self._send(control.Message(op=control.PONG, seq=message.seq, generation=self.view.generation, pid=os.getpid()))
            elif op == control.DRAIN:
                await self.drain(message.deadline_s)
                return
            else:
                for fd in fds:
                    os.close(fd)

    def _report_serving(self) -> None:
        self._send(control.Message(op=control.SERVING, generation=self.view.generation, keys=sorted(self.accept_scopes), pid=os.getpid()))

    def _add_listeners(self, keys: list[str], fds: list[int]) -> None:
        for key, fd in zip(keys, fds):
            sock = socket.socket(fileno=fd)
            old = self.accept_scopes.pop(key, None)
            if old is not None:
                old.cancel()
            scope = trio.CancelScope()
            self.accept_scopes[key] = scope
            self.root_nursery.start_soon(self._serve_listener, key, sock, scope)
        for fd in fds[len(keys) :]:
            os.close(fd)

    async def _serve_listener(self, key: str, sock: socket.socket, scope: trio.CancelScope) -> None:
        with scope:
            await serve_accept_loop(self, key, sock, self.connection_nursery)

    # ------------------------------------------------------------------ drain

    async def drain(self, deadline_s: float) -> None:
        self.draining = True
        for scope in list(self.accept_scopes.values()):
            scope.cancel()
        self.accept_scopes.clear()
        self._close_idle_connections(time.monotonic(), 0.0)
        with trio.move_on_after(max(0.0, deadline_s)):
            while self.active_connections > 0:
                self._close_idle_connections(time.monotonic(), 0.0)
                await trio.sleep(DRAIN_POLL_S)
        self._send(control.Message(op=control.DRAINED, pid=os.getpid()))
        self.pools.close_idle()
        self.stats.publish(self)
        self.access_log.flush_now()
        self.root_nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ main

    async def serve(self) -> None:
        async with trio.open_nursery() as root:
            self.root_nursery = root
            async with trio.open_nursery() as connections:
                self.connection_nursery = connections
                root.start_soon(self.pools.serve_idle_reaper)
                root.start_soon(self.serve_connection_sweeper)
                root.start_soon(self._serve_signals)
                root.start_soon(self.stats.serve_publisher, self)
                root.start_soon(self.access_log.serve_flusher)
                self.view.refresh()
                await self.serve_control()

    def _close_idle_connections(self, now: float, idle_timeout_s: float) -> None:
        for down in list(self.connections):
            if down.state == STATE_IDLE and now - down.since >= idle_timeout_s and down.scope is not None:
                down.scope.cancel()

    def _expire_streams(self, now: float, stream_idle_timeout_s: float) -> None:
        """Envoy's stream_idle_timeout: a request in flight whose bytes have not moved for that long is cancelled;
        its connection answers 408/504 when no response has started (http_proxy.serve_http_connection)."""
        for down in list(self.connections):
            if (
                down.activity
                and (down.state == STATE_BUSY or down.state == STATE_UPSTREAM_WAIT)
                and now - down.activity >= stream_idle_timeout_s
                and down.scope is not None
            ):
                down.stream_timed_out = True
                down.scope.cancel()

    async def serve_connection_sweeper(self) -> None:
        """Client-gone checks for requests waiting on an upstream (every SWEEP_INTERVAL_S); idle timeouts, scaled
        down under connection pressure, and stream idle timeouts (every IDLE_SWEEP_INTERVAL_S)."""
        next_idle_sweep = time.monotonic() + IDLE_SWEEP_INTERVAL_S
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            for down in list(self.upstream_waiting):
                if client_has_left(down.raw_socket()):
                    down.client_gone = True
                    if down.scope is not None:
                        down.scope.cancel()
            now = time.monotonic()  # the clock of Downstream.since and Downstream.activity
            if now >= next_idle_sweep:
                next_idle_sweep = now + IDLE_SWEEP_INTERVAL_S
                options = self.options
                # Under connection pressure idle connections get less time (workers/overload.py).
                timeout = scaled_idle_timeout(options.idle_timeout_s, self.active_connections, options.max_connections_per_worker)
                if timeout > 0:
                    self._close_idle_connections(now, timeout)
                if options.stream_idle_timeout_s > 0:
                    self._expire_streams(now, options.stream_idle_timeout_s)

    async def _serve_signals(self) -> None:
        # The supervisor owns shutdown; SIGTERM sent to a worker alone drains it. SIGUSR1 (forwarded by the
        # supervisor after logrotate) reopens the access log.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    self.access_log.reopen()
                    continue
                await self.drain(SIGTERM_DRAIN_S)
                return


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="workers.main", description="edge worker process (started by the supervisor)")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--table-shm", required=True)
    p.add_argument("--credentials-dir", default=None)
    p.add_argument("--access-log", default="off")
    p.add_argument("--access-log-format", default="text", choices=["text", "json"])
    p.add_argument("--access-log-template", default="")
    p.add_argument("--http-codec", default="h11", choices=["h11", "httptools"])
    p.add_argument("--stats-shm", default=None, help="stats segment (edge/stats_shm.py); this worker writes its slot")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A terminal's Ctrl-C or a SIGHUP to the whole process group reaches us too; the supervisor decides
    # what they mean (drain, reload) and tells us over the control channel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the signal task takes it: never die of a logrotate

    control_sock = socket.socket(fileno=args.control_fd)
    reader = TableReader.attach(args.table_shm)
    stats_writer = None
    if args.stats_shm:
        try:
            stats_writer = SlotWriter.attach(args.stats_shm, args.slot)
        except (OSError, StatsSegmentError) as exc:
            print(f"edge worker {args.slot} (pid {os.getpid()}): no statistics: {exc}", file=sys.stderr, flush=True)
    worker = Worker(args.slot, reader, control_sock, args, stats_writer)
    try:
        trio.run(worker.serve)
    finally:
        worker.access_log.close()
        if stats_writer is not None:
            stats_writer.close()
        reader.close()
        control_sock.close()
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
