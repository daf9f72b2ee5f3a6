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

import trio

from edge import control
from edge.shm import TableReader
from edge.table import Cluster, Options
from workers.listeners import serve_accept_loop
from workers.tableview import Compiled, TableView
from workers.tls import TLSConfigError, TLSContexts
from workers.upstream import ConnectFailure, UpstreamPools

DRAIN_POLL_S = 0.05
SIGTERM_DRAIN_S = 5.0


class Worker:
    def __init__(self, slot: int, reader: TableReader, control_sock: socket.socket, args: argparse.Namespace):
        self.slot = slot
        self.args = args
        self.control_sock = control_sock
        self.view = TableView(reader, on_change=self._on_table, log=self.log)
        self.options = Options()
        self.server_header = self.options.server_header.encode()
        self.max_header_bytes = self.options.max_request_headers_bytes
        self.pools = UpstreamPools()
        self.rng = random.Random()
        self.draining = False
        self.mirrors_in_flight = 0

        self.idle_scopes: set[trio.CancelScope] = set()
        self.active_connections = 0
        self._slot_free = trio.Event()
        self.accept_scopes: dict[str, trio.CancelScope] = {}
        self.connection_nursery: trio.Nursery | None = None
        self.root_nursery: trio.Nursery | None = None
        self.tls = TLSContexts(args.credentials_dir, log=self.log)
        self.requests_total = 0
        self.finish_hooks: list = []

    # ------------------------------------------------------------------ logging and stats

    def log(self, message: str) -> None:
        print(f"edge worker {self.slot} (pid {os.getpid()}): {message}", file=sys.stderr, flush=True)

    def finish_request(self, log) -> None:
        self.requests_total += 1
        for hook in self.finish_hooks:
            hook(log)

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
        # active_connections was incremented by the accept loop.
        try:

            await handler(self, sock, key)
        finally:
            self.active_connections -= 1
            self._slot_free.set()
            if sock.fileno() >= 0:
                sock.close()

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
        for scope in list(self.idle_scopes):
            scope.cancel()
        with trio.move_on_after(max(0.0, deadline_s)):
            while self.active_connections > 0:
                for scope in list(self.idle_scopes):
                    scope.cancel()
                await trio.sleep(DRAIN_POLL_S)
        self._send(control.Message(op=control.DRAINED, pid=os.getpid()))
        self.pools.close_idle()
        self.root_nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ main

    async def serve(self) -> None:
        async with trio.open_nursery() as root:
            self.root_nursery = root
            async with trio.open_nursery() as connections:
                self.connection_nursery = connections
                root.start_soon(self.pools.serve_idle_reaper)
                root.start_soon(self._serve_signals)
                self.view.refresh()
                await self.serve_control()

    async def _serve_signals(self) -> None:
        # The supervisor owns shutdown; SIGTERM sent to a worker alone drains it.
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A terminal's Ctrl-C or a SIGHUP to the whole process group reaches us too; the supervisor decides
    # what they mean (drain, reload) and tells us over the control channel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    control_sock = socket.socket(fileno=args.control_fd)
    reader = TableReader.attach(args.table_shm)
    worker = Worker(args.slot, reader, control_sock, args)
    try:
        trio.run(worker.serve)
    finally:
        reader.close()
        control_sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
