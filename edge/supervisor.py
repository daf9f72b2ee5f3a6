# The supervisor (`edge run`): config → table → shared memory, listening sockets, worker processes, signals.
#
# Rules:
# - One trio loop. Blocking work (loading and compiling YAML) runs in a thread; everything else is
#   non-blocking socket and process work in this loop. Only this module starts workers.
# - Startup: remove stale shm segments of dead supervisors, bind the status port (503 until ready), start the
#   config watch, load + compile (errors: every `file:line: message` on stderr, exit 1), bind one SO_REUSEPORT
#   socket per (worker slot, listener) (edge/sockets.py), publish generation 1, spawn --workers processes with
#   the command line edge/flags.py derives from the settings (worker_arguments).
#   Ready (status 200, systemd READY=1) when every slot's worker reports SERVING the current generation;
#   once ready, readiness holds across reloads (Istio's pilot-agent does the same) until the drain starts.
# - Control channel (edge/control.py): a new worker gets LISTENERS (its slot's sockets, ≤ MAX_FDS a message)
#   then TABLE, with no checkpoint between reading the socket registry and sending, so a concurrent reload
#   can never leave it with a stale set. A worker whose control channel is full or broken is SIGKILLed and
#   replaced: its replacement starts from the full current state.
# - Supervision: a worker that exits while we are not draining is replaced with the same slot's sockets after
#   restart_delay() (edge/state.py): 0.1 s, doubling while the slot keeps dying within STABLE_RUN_S of its start,
#   capped at 5 s. PING every HEARTBEAT_INTERVAL_S; a worker without a PONG for HEARTBEAT_TIMEOUT_S is SIGKILLed.
# - Reload (file change, SIGHUP, later POST /reload): requests arriving during a reload coalesce into one more
#   reload. Compile in a thread; on errors (or a compiler crash, logged with its traceback) keep the last
#   good table, log the errors, remember them in SupervisorState. An identical table publishes nothing. Otherwise, in this order and without a checkpoint:
#   bind added listeners (all or nothing; a bind failure fails the reload), publish the new generation, send
#   each worker LISTENERS(add its slot's new sockets, remove the dropped keys), close our copies of the
#   dropped sockets, send TABLE. Unchanged listeners keep their sockets, so no request on them fails.
#   Publishing first means a worker that checks the generation when it accepts already finds an added
#   listener in the table; for an instant it may still hold the socket of a dropped listener (connections
#   there are closed) or see a listener in the table before its socket arrives.
# - Drain (first SIGTERM/SIGINT): readiness 503 and systemd STOPPING=1 at once; workers keep accepting for
#   drain_delay (and are still replaced); then DRAIN(deadline = what is left of drain_timeout) to every worker,
#   our copies of the listening sockets are closed (so the ports close once the workers let go), stragglers are
#   SIGKILLed DRAIN_KILL_GRACE_S after the deadline; the shm segment is unlinked; exit 0. A second
#   SIGTERM/SIGINT: SIGKILL every worker, clean up, exit 1.
# - systemd (NOTIFY_SOCKET set; edge/systemd.py): READY=1 when ready, RELOADING=1 + MONOTONIC_USEC when a reload starts and
#   READY=1 when it is done (failed, unchanged, or served by every worker), STOPPING=1 on drain, WATCHDOG=1
#   every WATCHDOG_USEC/2 from this loop (a stuck loop stops feeding it). Workers get none of these variables.
# - Logs: one human-readable line per event on stderr, "edge: …" (edge/log.py). tests/e2e/harness.py reads three of them, so
#   keep their shape: "reload #N (reasons)", "reload #N: outcome" ("generation G published …",
#   "configuration unchanged; …", "failed; …"), and "generation G is served by every worker".
# - --status-port 0 turns the status port off; so do --metrics-port 0 and --admin-port 0 for theirs. The metrics
#   port binds 0.0.0.0 (Prometheus scrapes it from the pod network), the admin port --admin-bind (127.0.0.1).
# - Statistics: the supervisor creates the stats segment (edge/stats_shm.py) with one slot per worker slot and
#   passes its name to every worker; the metrics and admin ports (edge/admin.py, edge/metrics.py) read it on
#   each request through the Readout (edge/readout.py), and a sampler keeps one summary a second for the admin page's live view. With both ports
#   off (0) nothing could show statistics, so none are kept and workers skip the per-request recording.
# - SIGUSR1 (logrotate's postrotate) is forwarded to every worker, which reopens its access log.
# - POST /reload waits for the outcome of the reload that covers its request (edge/reloads.py tickets); the admin
#   port gets reload_and_wait as a function, so that edge/admin.py never imports this module.
# - DNS ServiceEntries (edge/dns.py): before a compiled table is published, names seen for the first time are
#   resolved (bounded wait) and replaced by addresses; a refresher looks them up again every refresh interval and
#   publishes a new generation ("generation G published: DNS addresses changed") only when an answer changed.
#   RequestAuthentication jwksUri documents (edge/jwks.py) go the same way: fetched before publishing (bounded by
#   each rule's timeout), refreshed every --jwks-refresh-interval, republished ("JWKS keys changed") on change.
# - SupervisorState (edge/state.py) holds everything the status, metrics and admin ports show; they read it,
#   never change it.
from __future__ import annotations

import ctypes
import errno
import gc
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec
import trio

from edge import control
from edge.admin import admin_routes, metrics_routes
from edge.compiler import load_and_compile
from workers.http.engines import resolve_codec
from edge.dns import DnsResolver, Resolver
from edge.jwks import Fetch, JwksFetcher
from edge.errors import ERROR, WARNING, ConfigError, Diagnostic
from edge.flags import worker_arguments
from edge.loader import FileCache
from edge.log import log
from edge.readout import Readout
from edge.reloads import ReloadRequests
from edge.settings import RunSettings
from edge.shm import ShmError, TableWriter, remove_stale_segments
from edge.sockets import ListenerError, ListenerSockets
from edge.state import DRAINING, RESTART_BACKOFF_MIN_S, SERVING, STARTING, ReloadError, SlotRecord, SupervisorState, WorkerRecord, restart_delay
from edge.stats_shm import StatsSegment
from edge.status import bind_status_socket, serve_http, serve_status
from edge.systemd import SystemdNotifier, monotonic_usec, watchdog_interval_s
from edge.table import RoutingTable, encode_table
from edge.watch import serve_config_watch

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
DRAIN_KILL_GRACE_S = 1.0
KILL_REAP_TIMEOUT_S = 5.0
METRICS_BIND = "0.0.0.0"  # Prometheus scrapes the metrics port from the pod network, like Istio's 15090
WORKER_ARGV: tuple[str, ...] = (sys.executable, "-m", "workers.main")
# Environment the workers must not see: systemd would take their messages for ours.
SUPERVISOR_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


# ----------------------------------------------------------------------------------------------- pure rules


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"exited with signal {-returncode}"
        return f"exited with signal {-returncode} ({name})"
    return f"exited with status {returncode}"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class CompiledConfig:
    table: RoutingTable
    payload: bytes
    files: tuple[str, ...]
    warnings: tuple[str, ...]
    source: RoutingTable | None = None  # the table as compiled, when `table` has DNS names resolved (edge/dns.py)


def diagnostic_lines(diagnostics: Sequence[Diagnostic], severity: str) -> tuple[str, ...]:
    return tuple(str(d) for d in diagnostics if d.severity == severity)


_FILE_CACHE = FileCache()  # parsed files by identity: a reload re-reads only what changed


def compile_config(paths: Sequence[str], settings: RunSettings) -> CompiledConfig:
    """Load and compile the config files (blocking; runs in a thread). ConfigError carries every problem."""
    try:
        loaded, result = load_and_compile(list(paths), settings.compile_options(), _FILE_CACHE)
        diagnostics = [*loaded.diagnostics, *result.diagnostics]
        if result.table is None or any(d.severity == ERROR for d in diagnostics):
            raise ConfigError(diagnostics)
        return CompiledConfig(result.table, encode_table(result.table), tuple(loaded.files), diagnostic_lines(diagnostics, WARNING))
    finally:
        release_memory()


def payload_digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).digest()


def release_memory() -> None:
    """Give the compile's transient peak back to the system: the supervisor lives as long as the gateway, and
    glibc keeps freed arenas otherwise (a 1,000-VirtualService compile left ~20 MiB behind)."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """malloc_trim: hand glibc's free pages back (no collection: a table is acyclic and freed by refcount). Called
    after a reload dropped the previous table too (10,000 VirtualServices: 5 MiB, well under a millisecond)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def listener_addresses(table: RoutingTable) -> list[tuple[str, int]]:
    return [(listener.bind, listener.port) for listener in table.listeners]


# ---------------------------------------------------------------------------------------------- workers


class WorkerHandle:
    """One running worker process and the supervisor's end of its control channel."""

    def __init__(self, record: WorkerRecord, process: trio.Process, channel: socket.socket):
        self.record = record
        self.process = process
        self.channel = channel
        self.killed = False

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def kill(self) -> None:
        if self.alive:
            self.killed = True
            try:
                self.process.kill()
            except ProcessLookupError:
                pass


class Supervisor:
    def __init__(
        self,
        settings: RunSettings,
        *,
        worker_argv: Sequence[str] | None = None,
        environ: Mapping[str, str] = os.environ,
        dns_resolve: Resolver | None = None,
        jwks_fetch: Fetch | None = None,
    ):
        self.settings = settings
        # ServiceEntry DNS names → addresses (edge/dns.py); --dns-refresh-rate replaces every cluster's interval.
        self.dns = DnsResolver(dns_resolve, log=log, refresh_override_s=settings.dns_refresh_rate_s)
        self.jwks = JwksFetcher(jwks_fetch, refresh_s=settings.jwks_refresh_interval_s, log=log)
        self.worker_argv = tuple(WORKER_ARGV if worker_argv is None else worker_argv)
        self.config_paths = tuple(settings.config)
        workers = settings.workers
        self.state = SupervisorState(config_paths=self.config_paths, workers=workers)
        self.state.slots = [SlotRecord(slot) for slot in range(workers)]
        self.registry = ListenerSockets(workers, dict(settings.port_map))
        self.writer: TableWriter | None = None
        self.readout = Readout(self.state)  # what the metrics and admin ports read; it holds the stats segment
        self.readout.jwks = self.jwks  # its statistics() on /config_dump and the metrics port
        self.payload_digest = b""  # of the published table: an unchanged compile is not republished
        self.notifier = SystemdNotifier.from_environ(environ)
        self.watchdog_s = watchdog_interval_s(environ, os.getpid())
        self.worker_env = {k: v for k, v in environ.items() if k not in SUPERVISOR_ONLY_ENV}
        self.handles: dict[int, WorkerHandle] = {}  # slot → its current worker
        self.processes: set[trio.Process] = set()  # every worker not yet reaped, whatever its slot's state
        self.reloads = ReloadRequests()
        self.exit_code = 0
        self.drain_sent = False
        self.drain_deadline = 0.0  # trio clock, once DRAIN was sent
        self.ready_pending = True  # READY=1 still owed to systemd (startup or a reload)
        self._changed = trio.Event()  # pulsed whenever a worker's state changes
        self._nursery: trio.Nursery | None = None
        self._shutdown_started = False

    # ------------------------------------------------------------------------------------------------ main

    async def serve(self) -> int:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._serve_signals)
                if not await self._start(nursery):
                    self.exit_code = 1
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._kill_all_workers()
            self._close_everything()
        return self.exit_code

    async def _start(self, nursery: trio.Nursery) -> bool:
        status_port = self.settings.status_port
        if status_port:
            try:
                await nursery.start(serve_status, status_port, self.state.readiness)
            except ListenerError as exc:
                log(f"status port: {exc}")
                return False
        for name, port, bind, routes in (
            ("metrics", self.settings.metrics_port, METRICS_BIND, metrics_routes(self.readout)),
            ("admin", self.settings.admin_port, self.settings.admin_bind, admin_routes(self.readout, self.reload_and_wait)),
        ):
            if not port:
                continue
            try:
                sock = bind_status_socket(port, bind)
            except ListenerError as exc:
                log(f"{name} port: {exc}")
                return False
            await nursery.start(serve_http, sock, routes)
        await nursery.start(self._serve_watch)
        started = trio.current_time()
        try:
            compiled = await trio.to_thread.run_sync(compile_config, self.config_paths, self.settings)
        except ConfigError as exc:
            for diagnostic in exc.diagnostics:
                if diagnostic.severity in (ERROR, WARNING):
                    print(str(diagnostic), file=sys.stderr, flush=True)
            log(f"configuration has {len(exc.errors)} error(s); not starting")
            return False
        for line in compiled.warnings:
            print(line, file=sys.stderr, flush=True)
        compiled = await self._resolve_dns(compiled)
        try:
            self.registry.sync(listener_addresses(compiled.table))
        except ListenerError as exc:
            log(str(exc))
            return False
        try:
            self.writer = TableWriter.create()
            generation = self.writer.publish(compiled.payload)
        except (OSError, ShmError) as exc:
            log(f"cannot publish the table in shared memory: {exc}")
            return False
        self._adopt(compiled, generation)
        if self.settings.metrics_port or self.settings.admin_port:  # counted only when something can show it
            try:
                self.readout.stats = StatsSegment.create(self.state.workers)
            except OSError as exc:
                log(f"cannot create the stats segment in shared memory: {exc}; metrics will show no traffic")
        log(
            f"generation {generation}: {len(compiled.table.listeners)} listener(s), "
            f"{len(compiled.table.clusters)} cluster(s) from {len(compiled.files)} file(s) "
            f"compiled in {format_seconds(trio.current_time() - started)}; "
            f"starting {self.state.workers} worker(s), HTTP/1.1 codec {resolve_codec(self.settings.http_codec)}"
        )
        for key in self.registry.keys():
            bind, port = self.registry.address(key)
            log(f"listener {key} bound to {bind or '0.0.0.0'}:{port} ({self.state.workers} sockets)")
        await nursery.start(self._serve_workers)
        nursery.start_soon(self._serve_heartbeats)
        nursery.start_soon(self._serve_reloads)
        nursery.start_soon(self.dns.serve_refresh, self._publish_dns_change)
        nursery.start_soon(self.jwks.serve_refresh, lambda: self._publish_dns_change("JWKS keys changed"))
        nursery.start_soon(self.readout.serve_live_samples)
        if self.watchdog_s is not None:
            nursery.start_soon(self._serve_watchdog)
        return True

    def _adopt(self, compiled: CompiledConfig, generation: int) -> None:
        self.dns.follow(compiled.source if compiled.source is not None else compiled.table)
        self.jwks.follow(compiled.source if compiled.source is not None else compiled.table)
        self.payload_digest = payload_digest(compiled.payload)
        self.state.generation = generation
        self.state.table = compiled.table
        self.state.source_files = compiled.files
        self.state.warnings = compiled.warnings
        self.state.last_reload_success_at = time.time()

    def _close_everything(self) -> None:
        for handle in self.handles.values():
            handle.channel.close()
        self.registry.close_all()
        if self.writer is not None:
            self.writer.close()
        if self.readout.stats is not None:
            self.readout.stats.close()
        self.notifier.close()

    # --------------------------------------------------------------------------------------------- signals

    async def _serve_signals(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    self.request_reload(name)
                elif signum == signal.SIGUSR1:
                    self._forward_signal(signum)
                elif not self._shutdown_started:
                    self._shutdown_started = True
                    assert self._nursery is not None
                    self._nursery.start_soon(self._drain, name)
                else:
                    log(f"{name} again: stopping now without waiting for in-flight requests")
                    self.exit_code = 1
                    self._kill_all_workers_now()
                    assert self._nursery is not None
                    self._nursery.cancel_scope.cancel()
                    return

    # ---------------------------------------------------------------------------------------------- reload

    def request_reload(self, reason: str) -> int:
        return self.reloads.request(reason)

    async def reload_and_wait(self, reason: str) -> str:
        """Request a reload and wait for the outcome line of the reload that covers it (POST /reload)."""
        return await self.reloads.wait_outcome(self.request_reload(reason))

    def _forward_signal(self, signum: int) -> None:
        """SIGUSR1 (logrotate): every worker reopens its access log. A worker still starting is skipped: it may
        not handle the signal yet (its default action kills), and it opens the path afresh anyway."""
        sent = 0
        for handle in list(self.handles.values()):
            if handle.alive and handle.record.state != STARTING:
                try:
                    handle.process.send_signal(signum)
                    sent += 1
                except ProcessLookupError:
                    pass
        log(f"{signal.Signals(signum).name}: access logs reopened by {sent} worker(s)")

    async def _serve_watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        def on_change(paths: set[str]) -> None:
            names = sorted(os.path.basename(p) for p in paths)
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self.request_reload(f"changed: {shown}")

        await serve_config_watch(self.config_paths, on_change, log=log, task_status=task_status)

    async def _serve_reloads(self) -> None:
        while True:
            reasons = await self.reloads.wait()
            if self.state.draining:
                self.reloads.finish("abandoned: draining")
                continue
            self.reloads.finish(await self.reload(reasons))

    async def reload(self, reasons: Sequence[str]) -> str:
        """One reload; returns its outcome line (also logged)."""
        self.state.reloads_total += 1
        number = self.state.reloads_total
        started = trio.current_time()
        log(f"reload #{number} ({', '.join(reasons)})")
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading")
        try:
            compiled = await trio.to_thread.run_sync(compile_config, self.config_paths, self.settings)
        except ConfigError as exc:
            return self._reload_failed(number, [str(d) for d in exc.errors] or [str(exc)])
        except Exception as exc:  # noqa: BLE001 - a compiler bug must not take down what serves traffic
            traceback.print_exc(file=sys.stderr)
            return self._reload_failed(number, [f"internal error while compiling: {exc!r}"])
        compiled = await self._resolve_dns(compiled)
        if self.state.draining:
            return self._reload_done(number, "abandoned: draining")
        if payload_digest(compiled.payload) == self.payload_digest:
            self.state.last_reload_ok = True
            return self._reload_done(number, f"configuration unchanged; generation {self.state.generation} stays")
        assert self.writer is not None
        # From here to the end: no checkpoint, so no worker is spawned against a half-applied state.
        try:
            added, removed = self.registry.sync(listener_addresses(compiled.table))
        except ListenerError as exc:
            return self._reload_failed(number, [str(exc)])
        try:
            generation = self.writer.publish(compiled.payload)
        except (OSError, ShmError) as exc:
            self.registry.close_keys(added)
            return self._reload_failed(number, [f"cannot publish the table: {exc}"])
        self._adopt(compiled, generation)
        trim_heap()  # the previous table is gone now
        self.state.last_reload_ok = True
        for slot, handle in list(self.handles.items()):
            if handle.record.state == DRAINING:
                continue
            sockets = self.registry.sockets_for_slot(slot)
            if (added or removed) and not self._send_listeners(handle, {k: sockets[k] for k in added}, removed):
                continue
            self._send(handle, control.Message(op=control.TABLE, generation=generation))
        self.registry.close_keys(removed)
        for line in compiled.warnings:
            print(line, file=sys.stderr, flush=True)
        changes = "".join([f"; +listener {k}" for k in added] + [f"; -listener {k}" for k in removed])
        self.ready_pending = True
        outcome = self._reload_done(
            number,
            f"generation {generation} published in {format_seconds(trio.current_time() - started)}{changes}",
            notify_ready=False,
        )
        self._check_ready()
        return outcome

    def _reload_failed(self, number: int, lines: list[str]) -> str:
        self.state.reload_failures_total += 1
        self.state.last_reload_ok = False
        self.state.last_reload_error = ReloadError(tuple(lines), time.time(), self.state.generation)
        for line in lines:
            print(line, file=sys.stderr, flush=True)
        return self._reload_done(number, f"failed; generation {self.state.generation} stays served")

    def _reload_done(self, number: int, outcome: str, *, notify_ready: bool = True) -> str:
        line = f"reload #{number}: {outcome}"
        log(line)
        if notify_ready and not self.state.draining:
            self.notifier.notify("READY=1", f"STATUS={self._status_line()}")
        return line

    def _status_line(self) -> str:
        line = f"serving generation {self.state.generation} with {self.state.workers} worker(s)"
        return line if self.state.last_reload_ok else line + "; the last reload failed (see the log)"

    # ----------------------------------------------------------------------------------------------- DNS

    async def _resolve_dns(self, compiled: CompiledConfig) -> CompiledConfig:
        """The compiled table with the names of its DNS ServiceEntries replaced by addresses; names never
        looked up before are resolved now, with a bounded wait (edge/dns.py)."""
        table = await self.jwks.resolve_new(await self.dns.resolve_new(compiled.table))
        if table is compiled.table:
            return compiled
        return CompiledConfig(table, encode_table(table), compiled.files, compiled.warnings, source=compiled.table)

    def _publish_dns_change(self, reason: str = "DNS addresses changed") -> None:
        """A refresher saw new addresses (or JWKS keys): publish them as a new generation (the listeners are
        unchanged)."""
        if self.writer is None or self.state.draining or self.dns.source is None:
            return
        source = self.dns.source
        table = self.jwks.apply(self.dns.resolved())
        payload = encode_table(table)
        if payload_digest(payload) == self.payload_digest:
            return
        try:
            generation = self.writer.publish(payload)
        except (OSError, ShmError) as exc:
            log(f"cannot publish the DNS update: {exc}")
            return
        self._adopt(CompiledConfig(table, payload, self.state.source_files, self.state.warnings, source=source), generation)
        for handle in list(self.handles.values()):
            if handle.record.state != DRAINING:
                self._send(handle, control.Message(op=control.TABLE, generation=generation))
        log(f"generation {generation} published: {reason}")
        self.ready_pending = True
        self._check_ready()

    # ------------------------------------------------------------------------------------------- readiness

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _check_ready(self) -> None:
        state = self.state
        if state.draining or not self.ready_pending or not state.all_serving(state.generation):
            return
        self.ready_pending = False
        if not state.ever_ready:
            state.ever_ready = True
            log(f"ready: {state.workers} worker(s) serve generation {state.generation}")
        else:
            log(f"generation {state.generation} is served by every worker")
        self.notifier.notify("READY=1", f"STATUS={self._status_line()}")

    # --------------------------------------------------------------------------------------- worker slots

    async def _serve_workers(self, task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for slot in range(self.state.workers):
                nursery.start_soon(self._serve_slot, slot)
            task_status.started(nursery)

    async def _serve_slot(self, slot: int) -> None:
        record = self.state.slots[slot]
        while not self.drain_sent:
            try:
                handle = await self._spawn(slot)
            except OSError as exc:
                log(f"worker {slot}: cannot start: {exc}")
                lifetime = 0.0
                exit_text = "could not start"
                pid = None
            else:
                await self._supervise(handle)
                lifetime = trio.current_time() - handle.record.started_at
                exit_text = describe_exit(handle.process.returncode)
                pid = handle.process.pid
            if self.drain_sent:
                return
            record.restarts += 1
            record.backoff_s = restart_delay(record.backoff_s, lifetime)
            record.last_exit = exit_text
            who = f"worker {slot} (pid {pid})" if pid is not None else f"worker {slot}"
            loop = " (crash loop: backing off)" if record.backoff_s > RESTART_BACKOFF_MIN_S else ""
            log(f"{who} {exit_text} after {format_seconds(lifetime)}; restarting in {record.backoff_s:g} s{loop}")
            await trio.sleep(record.backoff_s)

    def _worker_command(self, slot: int, control_fd: int) -> list[str]:
        assert self.writer is not None
        stats = self.readout.stats
        flags = worker_arguments(self.settings, slot=slot, control_fd=control_fd, table_shm=self.writer.name, stats_shm=stats.name if stats is not None else None)
        return [*self.worker_argv, *flags]

    async def _spawn(self, slot: int) -> WorkerHandle:
        parent, child = control.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                self._worker_command(slot, child.fileno()),
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                env=self.worker_env,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.processes.add(process)
        parent.setblocking(False)
        now = trio.current_time()
        record = WorkerRecord(slot=slot, pid=process.pid, started_at=now, last_pong_at=now)
        handle = WorkerHandle(record, process, parent)
        self.handles[slot] = handle
        self.state.slots[slot].worker = record
        # No checkpoint from here to the end: the registry and the generation cannot change under us.
        if self._send_listeners(handle, self.registry.sockets_for_slot(slot), []):
            self._send(handle, control.Message(op=control.TABLE, generation=self.state.generation))
        if self.drain_sent:  # spawned while the drain began: it drains at once
            self._send_drain(handle)
        self._pulse()
        return handle

    async def _supervise(self, handle: WorkerHandle) -> None:
        slot = handle.record.slot
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_control, handle)
                await handle.process.wait()
                self.processes.discard(handle.process)
                nursery.cancel_scope.cancel()
        finally:
            handle.channel.close()
            if self.handles.get(slot) is handle:
                del self.handles[slot]
                self.state.slots[slot].worker = None
            self._pulse()

    # ------------------------------------------------------------------------------------ control channel

    def _send(self, handle: WorkerHandle, message: control.Message, fds: list[int] | None = None) -> bool:
        """Send now or never: a worker that cannot take a control message is killed (and replaced)."""
        try:
            control.send_message(handle.channel, message, fds)
        except BlockingIOError:
            problem = "its control channel is full"
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                return False  # it is exiting; its exit is handled by _supervise
            problem = f"its control channel failed: {exc}"
        else:
            return True
        if handle.alive and not handle.killed:
            log(f"worker {handle.record.slot} (pid {handle.record.pid}) is not reading: {problem}; killing it")
            handle.kill()
        return False

    def _send_listeners(self, handle: WorkerHandle, add: Mapping[str, socket.socket], remove: Sequence[str]) -> bool:
        keys = list(add)
        batches = [keys[i : i + control.MAX_FDS] for i in range(0, len(keys), control.MAX_FDS)] or [[]]
        for index, batch in enumerate(batches):
            message = control.Message(op=control.LISTENERS, keys=batch, remove=list(remove) if index == 0 else [])
            if not self._send(handle, message, [add[key].fileno() for key in batch]):
                return False
        return True

    def _send_drain(self, handle: WorkerHandle) -> None:
        remaining = max(0.0, self.drain_deadline - trio.current_time())
        if self._send(handle, control.Message(op=control.DRAIN, deadline_s=remaining)):
            handle.record.state = DRAINING

    async def _serve_control(self, handle: WorkerHandle) -> None:
        channel = handle.channel
        record = handle.record
        while True:
            try:
                message, fds = control.recv_message(channel)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(channel)
                continue
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                if isinstance(exc, OSError):
                    return
                log(f"worker {record.slot} (pid {record.pid}) sent an unreadable control message: {exc}")
                continue
            for fd in fds:  # workers send no descriptors; never leak one they did
                os.close(fd)
            if message is None:
                return
            if message.op == control.PONG:
                record.last_pong_at = trio.current_time()
            elif message.op == control.SERVING:
                record.last_pong_at = trio.current_time()
                record.serving_generation = message.generation
                record.keys = tuple(message.keys)
                if record.state == STARTING and message.generation >= self.state.generation:
                    record.state = SERVING
                    if self.state.slots[record.slot].restarts:
                        log(f"worker {record.slot} (pid {record.pid}) serves generation {message.generation}")
                self._pulse()
                self._check_ready()
            elif message.op == control.DRAINED:
                record.state = DRAINING

    # ---------------------------------------------------------------------------------------- heartbeats

    async def _serve_heartbeats(self) -> None:
        seq = 0
        while True:
            await trio.sleep(HEARTBEAT_INTERVAL_S)
            seq += 1
            now = trio.current_time()
            for handle in list(self.handles.values()):
                record = handle.record
                if record.state == DRAINING or handle.killed or not handle.alive:
                    continue
                silent_s = now - record.last_pong_at
                if silent_s > HEARTBEAT_TIMEOUT_S:
                    log(
                        f"worker {record.slot} (pid {record.pid}) has not answered heartbeats for "
                        f"{format_seconds(silent_s)}; killing it"
                    )
                    handle.kill()
                    continue
                self._send(handle, control.Message(op=control.PING, seq=seq))

    async def _serve_watchdog(self) -> None:
        assert self.watchdog_s is not None
        while True:
            self.notifier.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_s)

    # --------------------------------------------------------------------------------------------- drain

    async def _drain(self, reason: str) -> None:
        state = self.state
        drain_delay = self.settings.drain_delay_s
        drain_timeout = self.settings.drain_timeout_s
        started = trio.current_time()
        state.draining = True
        self.notifier.notify("STOPPING=1", "STATUS=draining")
        log(
            f"{reason}: draining: readiness is 503"
            + (f", accepting for {drain_delay:g} s more" if drain_delay > 0 else "")
            + f", in-flight requests have {drain_timeout:g} s"
        )
        if drain_delay > 0:
            await trio.sleep(drain_delay)
        self.drain_deadline = started + max(drain_timeout, drain_delay)
        self.drain_sent = True
        for handle in list(self.handles.values()):
            self._send_drain(handle)
        # The ports close as soon as the workers let go of their copies.
        self.registry.close_all()
        grace_deadline = self.drain_deadline + DRAIN_KILL_GRACE_S
        with trio.move_on_at(grace_deadline):
            while any(handle.alive for handle in self.handles.values()):
                await self._changed.wait()
        stragglers = [h for h in self.handles.values() if h.alive]
        for handle in stragglers:
            log(f"worker {handle.record.slot} (pid {handle.record.pid}) still running after the drain timeout; killing it")
            handle.kill()
        await self._kill_all_workers()
        log(f"drained in {format_seconds(trio.current_time() - started)}; exiting")
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _kill_all_workers_now(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()

    async def _kill_all_workers(self) -> None:
        """SIGKILL whatever still runs and reap it (bounded)."""
        self._kill_all_workers_now()
        with trio.move_on_after(KILL_REAP_TIMEOUT_S):
            for process in list(self.processes):
                await process.wait()
                self.processes.discard(process)
        for process in self.processes:
            log(f"worker pid {process.pid} did not exit after SIGKILL")


# -------------------------------------------------------------------------------------------------- entry


def run(settings: RunSettings, *, worker_argv: Sequence[str] | None = None) -> int:
    """`edge run`: serve until SIGTERM/SIGINT; the process exit code. worker_argv replaces WORKER_ARGV (the
    worker command before its flags), for tests of the supervisor alone."""
    removed = remove_stale_segments()
    if removed:
        log(f"removed {len(removed)} shared-memory segment(s) left by dead supervisors: {', '.join(removed)}")
    supervisor = Supervisor(settings, worker_argv=worker_argv)
    try:
        return trio.run(supervisor.serve)
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 130
