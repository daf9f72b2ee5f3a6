# Worker process entry: `python -m workers.main --slot N --control-fd FD --table-shm NAME [...]`.
#
# Rules:
# - One trio loop, one root nursery. Its children: the control channel (the supervisor's commands), one
#   accept loop per listening socket, the upstream idle reaper, the registry's sweeper, the parker of idle
#   connections (workers/parking.py), the stats publisher, the access-log flusher, and the connection nursery
#   that owns every client connection.
# - This module is the process shell: it builds the WorkerContext (workers/context.py) that every handler gets,
#   and talks to the supervisor. Handlers never import it.
# - The worker starts with nothing; the supervisor sends LISTENERS (sockets) and TABLE. It answers SERVING
#   with the generation it loaded, PONG to PING, and on DRAIN: stop accepting, wake idle keep-alive
#   connections so they close, let in-flight requests finish (their responses carry `Connection: close`),
#   exit 0 when none is left or at the deadline.
# - The supervisor's death (control channel EOF) makes the worker drain and exit: an orphan never serves.
# - Workers read only the table and the sockets they were given; they never read the YAML.
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

import trio

from edge import control
from edge.flags import parse_worker_args
from edge.shm import TableReader
from edge.stats_shm import SlotWriter, StatsSegmentError
from workers.access_log import AccessLog
from workers.context import WorkerContext, worker_logger
from workers.http.engines import codec_classes
from workers.listeners import serve_accept_loop, serve_parked
from workers.stats import WorkerStats

DRAIN_POLL_S = 0.05
SIGTERM_DRAIN_S = 5.0


class Worker:
    """The worker process: its context, the control channel, the listeners it was handed, drain and signals."""

    def __init__(self, slot: int, reader: TableReader, control_sock: socket.socket, args: argparse.Namespace, stats_writer: SlotWriter | None = None):
        self.slot = slot
        self.control_sock = control_sock
        access_log = AccessLog(
            getattr(args, "access_log", "off") or "off",
            getattr(args, "access_log_format", "text"),
            warn=worker_logger(slot),
            template=getattr(args, "access_log_template", "") or "",
        )
        self.ctx = WorkerContext(slot, reader, codec_classes(args.http_codec), credentials_dir=args.credentials_dir, stats=WorkerStats(stats_writer), access_log=access_log)
        self.accept_scopes: dict[str, trio.CancelScope] = {}
        self.connection_nursery: trio.Nursery | None = None
        self.root_nursery: trio.Nursery | None = None

    @property
    def access_log(self) -> AccessLog:
        return self.ctx.records.access_log

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
                self.ctx.log("supervisor went away; draining")
                await self.drain(5.0)
                return
            if message.op == control.DRAIN:
                await self.drain(message.deadline_s)
                return
            self._on_message(message, fds)

    def _on_message(self, message: control.Message, fds: list[int]) -> None:
        op = message.op
        if op == control.LISTENERS:
            self._add_listeners(message.keys, fds)
            for key in message.remove:
                scope = self.accept_scopes.pop(key, None)
                if scope is not None:
                    scope.cancel()
            self._report_serving()
        elif op == control.TABLE:
            self.ctx.view.refresh()
            self._report_serving()
        elif op == control.PING:
            self._send(control.Message(op=control.PONG, seq=message.seq, generation=self.ctx.view.generation, pid=os.getpid()))
        else:
            for fd in fds:
                os.close(fd)

    def _report_serving(self) -> None:
        self._send(control.Message(op=control.SERVING, generation=self.ctx.view.generation, keys=sorted(self.accept_scopes), pid=os.getpid()))

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
            await serve_accept_loop(self.ctx, key, sock, self.connection_nursery)

    # ------------------------------------------------------------------ drain

    async def drain(self, deadline_s: float) -> None:
        ctx = self.ctx
        ctx.draining = True
        for scope in list(self.accept_scopes.values()):
            scope.cancel()
        self.accept_scopes.clear()
        ctx.registry.close_idle(time.monotonic(), 0.0)
        with trio.move_on_after(max(0.0, deadline_s)):
            while ctx.registry.active > 0:
                ctx.registry.close_idle(time.monotonic(), 0.0)
                await trio.sleep(DRAIN_POLL_S)
        self._send(control.Message(op=control.DRAINED, pid=os.getpid()))
        ctx.pools.close_idle()
        ctx.records.stats.publish(ctx)
        ctx.records.access_log.flush_now()
        self.root_nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ main

    async def serve(self) -> None:
        ctx = self.ctx
        async with trio.open_nursery() as root:
            self.root_nursery = ctx.background = root
            async with trio.open_nursery() as connections:
                self.connection_nursery = connections
                root.start_soon(ctx.pools.serve_idle_reaper)
                root.start_soon(ctx.registry.serve_sweeper)
                root.start_soon(serve_parked, ctx, connections)
                root.start_soon(self._serve_signals)
                root.start_soon(ctx.records.stats.serve_publisher, ctx)
                root.start_soon(ctx.records.access_log.serve_flusher)
                ctx.view.refresh()
                await self.serve_control()

    async def _serve_signals(self) -> None:
        # The supervisor owns shutdown; SIGTERM sent to a worker alone drains it. SIGUSR1 (forwarded by the
        # supervisor after logrotate) reopens the access log.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    self.ctx.records.access_log.reopen()
                    continue
                await self.drain(SIGTERM_DRAIN_S)
                return


def main(argv: list[str] | None = None) -> int:
    args = parse_worker_args(argv)  # the flags table (edge/flags.py) is the one place a worker flag is defined
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


if __name__ == "__main__":
    sys.exit(main())
