# Access logs of one worker: Istio's default TEXT format or JSON with the same fields, buffered.
#
# Rules:
# - Destination: "off" (nothing is built), "-" (the worker's stdout, inherited from the supervisor) or a file
#   path, opened O_WRONLY|O_APPEND|O_CREAT (0644) by every worker: O_APPEND makes each write land whole at the
#   end of the file, so the workers' lines never overwrite each other.
# - TEXT is Istio's EnvoyTextLogFormat (ISTIO-SEMANTICS 3.2), field for field; a missing value prints "-".
#   JSON has the same fields under Istio's JSON keys, numbers as numbers and a missing value as null (Envoy's
#   JSON formatter does that), one object per line, keys in a fixed order.
# - TCP connections log the same line shape with `"- - -" 0` for method/path/protocol and status.
# - A proxied request's line is built in one pass (request_line: its fields read once, repeating strings encoded
#   once into cached fragments, header bytes copied unless they need escaping, one bytes %-format); the generic
#   formatters (format_text, format_json) serve every other record and define the output: both give the same
#   bytes, pinned for tricky records in tests/workers/test_access_log.py.
# - Buffered like Envoy's --file-flush-interval-msec 1000: a line is appended to a bytearray; the buffer is written
#   every FLUSH_INTERVAL_S, at once when it reaches FLUSH_BYTES, and on close (drain, exit). A regular file is
#   written from the event loop, as nginx writes its buffered access log (a 64 KiB write into the page cache costs
#   tens of µs; a trio thread hand-over per flush cost more, issue 13); a write to it that takes longer than
#   SLOW_WRITE_S (a stalled disk, a network file system) moves that log's writes to a thread from then on. Pipes
#   and terminals are always written in a thread, so a slow stdout reader never stalls the event loop. While a
#   threaded write is stuck, at most MAX_PENDING_BYTES wait; lines beyond that are dropped and counted
#   (dropped_lines), never buffered unbounded.
# - Pipes and terminals get writes of at most PIPE_BUF bytes cut at line ends (atomic for a pipe), so lines of
#   several workers sharing stdout never interleave mid-line.
# - reopen() (SIGUSR1, after logrotate moved the file): flush what is buffered into the old file, then open the
#   path anew. A failure to open keeps the old descriptor and says so once.
from __future__ import annotations

import os
import stat
import sys
import time
from typing import Callable

import orjson
import trio

from workers.http.log import RequestLog
from workers.log_format import compile_template, format_start_time

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 1.0
MAX_PENDING_BYTES = 4 * 1024 * 1024
PIPE_BUF_BYTES = 4096
SLOW_WRITE_S = 0.005  # an inline write slower than this (5 ms: ~a hundred requests' time) moves writes to a thread
OFF = "off"
STDOUT = "-"

JSON_KEYS = (
    "start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags", "response_code_details",
    "connection_termination_details", "upstream_transport_failure_reason", "bytes_received", "bytes_sent", "duration",
    "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority", "upstream_host",
    "upstream_cluster", "upstream_local_address", "downstream_local_address", "downstream_remote_address",
    "requested_server_name",
)  # fmt: skip


class TcpLog:
    """One TCP (or TLS passthrough) connection as the access log and the stats see it."""

    __slots__ = (
        "start", "listener", "upstream_cluster", "upstream_host", "bytes_received", "bytes_sent", "flags", "details",
        "downstream_local", "downstream_remote", "sni", "route_name", "duration_ms", "termination_details",
        "upstream_local", "rbac",
    )  # fmt: skip

    def __init__(self, start: float, listener: str = "-"):
        self.start = start
        self.listener = listener
        self.upstream_cluster = "-"
        self.upstream_host = "-"
        self.bytes_received = 0  # from the client
        self.bytes_sent = 0  # to the client
        self.flags = "-"
        self.details = "-"
        self.downstream_local = "-"
        self.downstream_remote = "-"
        self.sni = "-"
        self.route_name = "-"
        self.duration_ms = 0
        self.termination_details = "-"
        self.upstream_local = "-"
        self.rbac = None  # workers/authz.RbacCounts when AuthorizationPolicy's TCP rules were checked


_WANTED_HEADERS = {b"host": 0, b"user-agent": 1, b"x-request-id": 2, b"x-forwarded-for": 3}


def logged_headers(headers) -> list:
    """[host, user-agent, x-request-id, x-forwarded-for] as bytes (None when absent), repeated ones joined with
    ", " as RequestLog does: one pass over the request's headers for every formatter."""
    found: list = [None, None, None, None]
    wanted = _WANTED_HEADERS
    for name, value in headers:
        index = wanted.get(name)
        if index is not None:
            found[index] = value if found[index] is None else found[index] + b", " + value
    return found


def request_headers(log, missing="-") -> tuple:
    """(authority, user agent, request id, x-forwarded-for) of a RequestLog, `missing` when absent.

    One pass over the request's headers instead of one scan per field (RequestLog derives each field lazily,
    which is what a request that is not logged wants; a logged one wants all four). Repeated headers are
    joined with ", " as RequestLog does; X-Request-Id and X-Forwarded-For are the values sent upstream once the
    request got that far. Records without a request (tests, TCP) use their attributes."""
    request = getattr(log, "request", None)
    if request is None or not request.target.startswith(b"/"):  # absolute-form: RequestLog knows the rules
        found = (log.authority, log.user_agent, log.request_id, log.x_forwarded_for)
        return found if missing == "-" else tuple(_NULL.get(v, v) for v in found)
    a, u, r, x = logged_headers(request.headers)
    forwarded = getattr(log, "forwarded", None)
    if forwarded is not None:  # logged as forwarded upstream, like Envoy's %REQ(...)% after its header changes
        r, x = forwarded.request_id, forwarded.xff
    upstream_authority = getattr(log, "upstream_authority", None)
    if upstream_authority is not None:
        a = upstream_authority
    return (
        a.decode("latin-1") if a is not None else missing,
        u.decode("latin-1") if u is not None else missing,
        r.decode("latin-1") if r is not None else missing,
        x.decode("latin-1") if x is not None else missing,
    )


def format_text(log) -> str:
    """Istio's default TEXT line for an HTTP RequestLog (workers/http/log.py), with its newline."""
    service = log.service_time_ms
    authority, user_agent, request_id, xff = request_headers(log)
    return (
        f'[{format_start_time(log.start)}] "{log.method} {log.path} {log.protocol}" {log.status} {log.flags} {log.details} - '
        f'"-" {log.bytes_received} {log.bytes_sent} {log.duration_ms} {service if service >= 0 else "-"} '
        f'"{xff}" "{user_agent}" "{request_id}" "{authority}" "{log.upstream_host}" '
        f"{log.upstream_cluster} {log.upstream_local} {log.downstream_local} {log.downstream_remote} {log.sni} {log.route_name}\n"
    )


def format_tcp_text(log: TcpLog) -> str:
    return (
        f'[{format_start_time(log.start)}] "- - -" 0 {log.flags} {log.details} {log.termination_details} '
        f'"-" {log.bytes_received} {log.bytes_sent} {log.duration_ms} - '
        f'"-" "-" "-" "-" "{log.upstream_host}" '
        f"{log.upstream_cluster} {log.upstream_local} {log.downstream_local} {log.downstream_remote} {log.sni} {log.route_name}\n"
    )


# JSON writes a missing value ("-" in the TEXT format, or empty) as null; a dict probe costs less than a call.
_NULL = {"-": None, "": None}


def _null(value: str):
    return _NULL.get(value, value)


def json_record(log) -> dict:
    service = log.service_time_ms
    authority, user_agent, request_id, xff = request_headers(log, None)
    null = _NULL.get
    route, flags, details, host, cluster = log.route_name, log.flags, log.details, log.upstream_host, log.upstream_cluster
    local, remote, sni, method, path = log.downstream_local, log.downstream_remote, log.sni, log.method, log.path
    upstream_local = log.upstream_local
    return {
        "start_time": format_start_time(log.start),
        "route_name": null(route, route),
        "method": null(method, method),
        "path": null(path, path),
        "protocol": log.protocol,
        "response_code": log.status,
        "response_flags": null(flags, flags),
        "response_code_details": null(details, details),
        "connection_termination_details": None,
        "upstream_transport_failure_reason": None,
        "bytes_received": log.bytes_received,
        "bytes_sent": log.bytes_sent,
        "duration": log.duration_ms,
        "upstream_service_time": service if service >= 0 else None,
        "x_forwarded_for": xff,
        "user_agent": user_agent,
        "request_id": request_id,
        "authority": authority,
        "upstream_host": null(host, host),
        "upstream_cluster": null(cluster, cluster),
        "upstream_local_address": null(upstream_local, upstream_local),
        "downstream_local_address": null(local, local),
        "downstream_remote_address": null(remote, remote),
        "requested_server_name": null(sni, sni),
    }


def tcp_json_record(log: TcpLog) -> dict:
    return {
        "start_time": format_start_time(log.start),
        "route_name": _null(log.route_name),
        "method": None,
        "path": None,
        "protocol": None,
        "response_code": 0,
        "response_flags": _null(log.flags),
        "response_code_details": _null(log.details),
        "connection_termination_details": _null(log.termination_details),
        "upstream_transport_failure_reason": None,
        "bytes_received": log.bytes_received,
        "bytes_sent": log.bytes_sent,
        "duration": log.duration_ms,
        "upstream_service_time": None,
        "x_forwarded_for": None,
        "user_agent": None,
        "request_id": None,
        "authority": None,
        "upstream_host": _null(log.upstream_host),
        "upstream_cluster": _null(log.upstream_cluster),
        "upstream_local_address": _null(log.upstream_local),
        "downstream_local_address": _null(log.downstream_local),
        "downstream_remote_address": _null(log.downstream_remote),
        "requested_server_name": _null(log.sni),
    }


def format_json(log) -> bytes:
    return orjson.dumps(json_record(log)) + b"\n"


def format_tcp_json(log: TcpLog) -> bytes:
    return orjson.dumps(tcp_json_record(log)) + b"\n"


# ------------------------------------------------------------------------------------------ one-pass lines
# A RequestLog with an origin-form target (every proxied request) is written by request_line(): its fields are
# read once, straight from the request, its connection and what went upstream, and the line is one bytes
# %-format. Strings that repeat (route, cluster, flags, details, upstream host, addresses, method) are encoded
# once into the fragment each format writes for them, in bounded caches; header values are bytes already and
# are copied as they are unless they need JSON escaping or UTF-8 re-encoding (then they go the same way as the
# generic formatters above, so the bytes are the same: tests/workers/test_access_log.py pins them). Anything
# else (no request, absolute-form targets, TCP, test records) takes format_text / format_json.

_JSON_LINE = (
    b'{"start_time":"%s.%03dZ","route_name":%s,"method":%s,"path":"%s","protocol":"%s","response_code":%d,'
    b'"response_flags":%s,"response_code_details":%s,"connection_termination_details":null,'
    b'"upstream_transport_failure_reason":null,"bytes_received":%d,"bytes_sent":%d,"duration":%d,'
    b'"upstream_service_time":%s,"x_forwarded_for":%s,"user_agent":%s,"request_id":%s,"authority":%s,'
    b'"upstream_host":%s,"upstream_cluster":%s,"upstream_local_address":%s,"downstream_local_address":%s,'
    b'"downstream_remote_address":%s,"requested_server_name":%s}\n'
)
_TEXT_LINE = b'[%s.%03dZ] "%s %s %s" %d %s %s - "-" %d %d %d %s "%s" "%s" "%s" "%s" "%s" %s %s %s %s %s %s\n'
_JSON_SAFE = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')  # bytes a JSON string holds as they are
_CACHE_LIMIT = 4096  # entries per fragment cache; a full cache starts over (client ports, upstream connections)


class _Fragments:
    """value → the bytes a format writes for it, computed once per distinct value."""

    __slots__ = ("cache", "make")

    def __init__(self, make: Callable):
        self.cache: dict = {}
        self.make = make

    def miss(self, value) -> bytes:
        fragment = self.make(value)
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        self.cache[value] = fragment
        return fragment


def _json_str(value: str) -> bytes:
    return b"null" if value == "-" or value == "" else orjson.dumps(value)


def _text_str(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def _address(pair) -> str:
    return f"{pair[0]}:{pair[1]}" if pair else "-"  # RequestLog.downstream_local / downstream_remote


_JSON_STR = _Fragments(_json_str)
_TEXT_STR = _Fragments(_text_str)
_JSON_ADDRESS = _Fragments(lambda pair: _json_str(_address(pair)))
_TEXT_ADDRESS = _Fragments(lambda pair: _text_str(_address(pair)))
_JSON_METHOD = _Fragments(lambda method: _json_str(method.decode("latin-1")))


class _SecondPrefix:
    """The start time up to the seconds, as bytes, for the second last seen (format_start_time's rounding)."""

    __slots__ = ("second", "prefix")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = b""

    def set(self, second: int) -> bytes:
        self.second = second
        self.prefix = format_start_time(second)[:-5].encode("ascii")
        return self.prefix


_PROTOCOLS = {b"1.0": b"HTTP/1.0", b"2": b"HTTP/2"}  # Request.http_version → %PROTOCOL% (else HTTP/1.1)
_CLOCK = _SecondPrefix()


def _json_body(value: bytes) -> bytes:
    """The inside of the JSON string orjson writes for value.decode("latin-1")."""
    return value if not value.translate(None, _JSON_SAFE) else orjson.dumps(value.decode("latin-1"))[1:-1]


def _json_value(value: bytes | None) -> bytes:
    if value is None:
        return b"null"
    return b'"%s"' % value if not value.translate(None, _JSON_SAFE) else orjson.dumps(value.decode("latin-1"))


def _text_value(value: bytes | None) -> bytes:
    if value is None:
        return b"-"
    return value if value.isascii() else value.decode("latin-1").encode("utf-8")


def request_line(log, json: bool) -> bytes | None:
    """The TEXT or JSON line of a proxied RequestLog in one pass; None when it needs the generic formatter."""
    request = log.request
    down = log.down
    if request is None or down is None or request.target[:1] != b"/":
        return None
    host, agent, rid, xff = logged_headers(request.headers)
    forwarded = log.forwarded
    remote = None  # the client's address, when it is not the connection's peer
    if forwarded is not None:
        rid, xff = forwarded.request_id, forwarded.xff
        if forwarded.client_from_xff:
            remote = log.downstream_remote
    if log.upstream_authority is not None:
        host = log.upstream_authority
    second, ms = divmod(int(log.start * 1000 + 0.5), 1000)
    clock = _CLOCK
    prefix = clock.prefix if second == clock.second else clock.set(second)
    service = log.service_time_ms
    route, flags, details, upstream_host, cluster, upstream_local = (
        log.route_name, log.flags, log.details, log.upstream_host, log.upstream_cluster, log.upstream_local,
    )  # fmt: skip
    peer, local, sni = down.peer, down.local, down.sni or "-"
    protocol = _PROTOCOLS.get(request.http_version, b"HTTP/1.1")
    if json:
        strs, addresses = _JSON_STR.cache, _JSON_ADDRESS.cache
        miss, address_miss = _JSON_STR.miss, _JSON_ADDRESS.miss
        method, target, safe = request.method, request.target, _JSON_SAFE
        return _JSON_LINE % (
            prefix, ms, strs.get(route) or miss(route), _JSON_METHOD.cache.get(method) or _JSON_METHOD.miss(method),
            target if not target.translate(None, safe) else _json_body(target), protocol, log.status, strs.get(flags) or miss(flags), strs.get(details) or miss(details),
            log.bytes_received, log.bytes_sent, log.duration_ms, b"%d" % service if service >= 0 else b"null",
            b"null" if xff is None else b'"%s"' % xff if not xff.translate(None, safe) else _json_value(xff),
            b"null" if agent is None else b'"%s"' % agent if not agent.translate(None, safe) else _json_value(agent),
            b"null" if rid is None else b'"%s"' % rid if not rid.translate(None, safe) else _json_value(rid),
            b"null" if host is None else b'"%s"' % host if not host.translate(None, safe) else _json_value(host),
            strs.get(upstream_host) or miss(upstream_host), strs.get(cluster) or miss(cluster),
            strs.get(upstream_local) or miss(upstream_local), addresses.get(local) or address_miss(local),
            (addresses.get(peer) or address_miss(peer)) if remote is None else _json_str(remote), strs.get(sni) or miss(sni),
        )  # fmt: skip
    strs, addresses = _TEXT_STR.cache, _TEXT_ADDRESS.cache
    miss, address_miss = _TEXT_STR.miss, _TEXT_ADDRESS.miss
    return _TEXT_LINE % (
        prefix, ms, _text_value(request.method), _text_value(request.target), protocol, log.status,
        strs.get(flags) or miss(flags), strs.get(details) or miss(details), log.bytes_received, log.bytes_sent,
        log.duration_ms, b"%d" % service if service >= 0 else b"-",
        b"-" if xff is None else xff if xff.isascii() else _text_value(xff),
        b"-" if agent is None else agent if agent.isascii() else _text_value(agent),
        b"-" if rid is None else rid if rid.isascii() else _text_value(rid),
        b"-" if host is None else host if host.isascii() else _text_value(host), strs.get(upstream_host) or miss(upstream_host),
        strs.get(cluster) or miss(cluster), strs.get(upstream_local) or miss(upstream_local),
        addresses.get(local) or address_miss(local), (addresses.get(peer) or address_miss(peer)) if remote is None else _text_str(remote),
        strs.get(sni) or miss(sni), strs.get(route) or miss(route),
    )  # fmt: skip


def split_for_pipe(data: bytes, limit: int = PIPE_BUF_BYTES) -> list[bytes]:
    """Pieces of at most `limit` bytes cut after a newline (a single longer line stays whole)."""
    pieces = []
    start = 0
    n = len(data)
    while n - start > limit:
        cut = data.rfind(b"\n", start, start + limit)
        if cut < 0:
            cut = data.find(b"\n", start + limit)
            if cut < 0:
                break
        pieces.append(data[start : cut + 1])
        start = cut + 1
    if start < n:
        pieces.append(data[start:])
    return pieces


def _write_all(fd: int, data: bytes | bytearray, atomic_pieces: bool) -> None:
    for piece in split_for_pipe(data) if atomic_pieces else (data,):
        view = memoryview(piece)
        while view:
            written = os.write(fd, view)
            view = view[written:]


class AccessLog:
    """The access log of one worker. `write(log)` / `write_tcp(log)` are the per-request calls."""

    def __init__(self, destination: str, fmt: str = "text", *, warn: Callable[[str], None] | None = None, template: str = ""):
        self.destination = destination
        self.fmt = fmt
        # A custom format (Istio's accessLogFormat), validated by the supervisor before the workers start.
        self._template = compile_template(template, fmt) if template else None
        self.enabled = destination != OFF
        self._warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self._fd = -1
        self._owns_fd = False
        self._pipe = False
        self.threaded = False  # writes go through a thread (pipes, terminals, or a file that once wrote slowly)
        self._buffer = bytearray()  # the lines not handed to a write yet, back to back
        self._pending = 0  # bytes handed to a writer thread and not yet written
        self._wake = trio.Event() if self.enabled else None
        self._retired: list[int] = []  # descriptors replaced by reopen() while a write to them was running
        self.dropped_lines = 0  # refused because MAX_PENDING_BYTES were waiting
        self.lost_lines = 0  # in a write that failed
        self.lines = 0
        self.write_errors = 0
        self._json = fmt == "json"
        if self.enabled:
            self._open()

    # ------------------------------------------------------------------------------------------ files

    def _open(self) -> None:
        if self.destination == STDOUT:
            fd, owns = sys.stdout.fileno(), False
        else:
            fd, owns = os.open(self.destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644), True
        self._fd, self._owns_fd = fd, owns
        try:
            self._pipe = not stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            self._pipe = True
        self.threaded = self._pipe

    def reopen(self) -> None:
        """After logrotate: flush into the old file, then open the path anew (stdout: just flush)."""
        if not self.enabled:
            return
        self.flush_now()
        if not self._owns_fd:
            return
        old = self._fd
        try:
            self._open()
        except OSError as exc:
            self._warn(f"cannot reopen the access log {self.destination}: {exc.strerror or exc}; writing to the old file")
            self._fd, self._owns_fd = old, True
            return
        if self._pending:
            self._retired.append(old)  # a flusher thread still writes to it; closed when it is done
        else:
            os.close(old)

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush_now()
        if self._owns_fd and self._fd >= 0:
            if self._pending:
                self._retired.append(self._fd)
            else:
                os.close(self._fd)
        self._fd = -1
        self.enabled = False

    # ---------------------------------------------------------------------------------------- hot path

    def write(self, log) -> None:
        if self._template is not None:
            line = self._template.render(log)
        elif log.__class__ is not RequestLog or (line := request_line(log, self._json)) is None:
            line = format_json(log) if self._json else format_text(log).encode("utf-8", "replace")
        self._append(line)

    def write_tcp(self, log: TcpLog) -> None:
        if not self.enabled:
            return
        if self._template is not None:
            line = self._template.render(log)
        else:
            line = format_tcp_json(log) if self._json else format_tcp_text(log).encode("utf-8", "replace")
        self._append(line)

    def _append(self, line: bytes) -> None:
        buffer = self._buffer
        if len(buffer) + self._pending >= MAX_PENDING_BYTES:
            self.dropped_lines += 1
            return
        buffer += line
        self.lines += 1
        if len(buffer) >= FLUSH_BYTES:
            self._wake.set()

    @property
    def _buffered(self) -> int:
        """Bytes buffered and not handed to a write yet."""
        return len(self._buffer)

    # ---------------------------------------------------------------------------------------- flushing

    def _take(self) -> bytearray:
        """The buffered bytes, for one write (the writer owns them; appends go to a fresh buffer)."""
        data = self._buffer
        self._buffer = bytearray()
        return data

    def _write(self, fd: int, pipe: bool, data: bytes | bytearray) -> None:
        try:
            _write_all(fd, data, pipe)
        except OSError as exc:
            self.write_errors += 1
            self.lost_lines += data.count(b"\n")
            if self.write_errors == 1:
                self._warn(f"access log write to {self.destination} failed: {exc.strerror or exc}; lines are lost until it works again")

    def flush_now(self) -> None:
        """Write what is buffered, synchronously (drain, exit, reopen)."""
        if self._buffer and self._fd >= 0:
            self._write(self._fd, self._pipe, self._take())

    async def serve_flusher(self) -> None:
        """Write the buffer every FLUSH_INTERVAL_S, or at once when it reaches FLUSH_BYTES."""
        if not self.enabled:
            return
        while self.enabled:
            with trio.move_on_after(FLUSH_INTERVAL_S):
                await self._wake.wait()
            self._wake = trio.Event()
            if not self._buffer or self._fd < 0:
                continue
            data = self._take()
            if not self.threaded:
                started = time.monotonic()
                self._write(self._fd, False, data)
                self.threaded = time.monotonic() - started > SLOW_WRITE_S
                continue
            self._pending += len(data)
            try:
                await trio.to_thread.run_sync(self._write, self._fd, self._pipe, data)
            finally:
                self._pending -= len(data)
                while self._retired and not self._pending:
                    os.close(self._retired.pop())


__all__ = ["AccessLog", "TcpLog", "format_text", "format_json", "format_tcp_text", "format_tcp_json", "json_record", "split_for_pipe", "JSON_KEYS"]
