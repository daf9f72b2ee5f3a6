"""Sample backend: an httpbin-like upstream for the README quick start and end-to-end tests.

One process, one trio loop, any number of listeners, each with an instance name::

    python -m edge.dev.sample_backend \\
        --listen 127.0.0.1:9001=reviews-v1 --listen 127.0.0.1:9002=reviews-v2 \\
        --listen-tls 127.0.0.1:9443=reviews-tls --tls-cert cert.pem --tls-key key.pem \\
        --tcp-echo 127.0.0.1:9100=tcp-v1 --ready-file /tmp/backend.ready

Flags (each listener flag is repeatable; at least one listener is required):
  --listen HOST:PORT=NAME      plain HTTP/1.1 listener
  --listen-tls HOST:PORT=NAME  HTTPS listener (ALPN http/1.1); needs --tls-cert and --tls-key
  --tcp-echo HOST:PORT=NAME    raw TCP: sends "NAME\\n", echoes every byte until the client half-closes
  --tls-cert PEM --tls-key PEM certificate chain and key for every --listen-tls listener
                               (giving them without any --listen-tls is an error, not a silent plain port)
  --ready-file PATH            once every socket listens, PATH is written atomically (rename) with JSON:
        {"pid": 4242, "listeners": [
            {"name": "reviews-v1", "kind": "http", "host": "127.0.0.1", "port": 9001}, ...]}
      kind is "http", "https" or "tcp-echo"; listeners are in command-line order; host is the numeric address
      actually bound and port the real port, so PORT may be 0. The file is removed on a clean exit.
HOST may be a name, an IPv4 address or a bracketed IPv6 address ([::1]:0); it is resolved to one address.
NAME is [A-Za-z0-9][A-Za-z0-9._-]*. SIGTERM/SIGINT stop the process with exit status 0; bad flags exit 2.
Nothing is printed on stdout; one line per listener goes to stderr.

HTTP endpoints (every response, 1xx included, carries `x-served-by: NAME`; keep-alive unless the client closes;
HEAD gets GET's headers and no body):
  /, /headers, any unknown path  200 JSON {"instance", "method", "path" (raw target with query),
                                 "http_version", "headers" {lowercase name: values joined ", "},
                                 "body_bytes", "tls": null | {"sni", "alpn", "version"}}
  /ip                            {"origin": peer IP}
  /status/<code>                 that status; 204/304 without body; other final codes with the JSON above.
                                 1xx (not 101) sends that informational response (skipped for HTTP/1.0
                                 clients), then a 200 with the JSON.
  /delay/<seconds>               sleeps (float, capped at 60 s) after reading the body, then the JSON above
  /bytes/<n>                     n bytes, Content-Length; byte i is i % 251 (see pattern_bytes)
  /stream-bytes/<n>              the same n bytes, chunked, 64 KiB per chunk (close-delimited for HTTP/1.0)
  /echo                          any method: the request body streamed back as it arrives, 64 KiB at a time.
                                 Chunked if the request was chunked, else Content-Length = the request's (0 if
                                 absent). Clients must read while they send (full duplex) for large bodies.
  /sha256                        reads the body streaming, answers {"bytes": n, "sha256": hex}
  /__stats                       {"instance", "connections_total", "connections_open", "requests_total"}
  /__reset                       zeroes connections_total and requests_total, answers the stats
  /drop                          closes the connection at once (FIN; the kernel sends RST instead if request
                                 bytes are left unread) without a response
  /drop-rst                      aborts the connection (TCP RST) without a response
  /websocket                     a WebSocket handshake (RFC 6455: 101 with Sec-WebSocket-Accept; 400 without
                                 Upgrade: websocket and a key), then every byte received is echoed back as is
                                 (no frame parsing: enough to prove a proxy splices both ways) until EOF
  /drop-mid                      Content-Length: 1000, 10 body bytes, then closes
  /garbage                       non-HTTP bytes, then closes
Counting rules, chosen so a test can prove upstream keep-alive reuse: requests to /__* paths are not counted;
requests_total counts every other request since the last reset; connections_total counts connections that
carried at least one counted request since the last reset (a pooled connection opened before the reset counts
once when it is next used); connections_open is every currently open connection of the listener, including
the one asking. Counters are per listener.

Rules: the request body is always read in full (and counted, never kept) before a final response, except on
/echo, which answers as it reads, and /drop and /drop-rst, which close at once. `Expect: 100-continue` is answered with a
100 when the body is first read (h11 does not send it by itself). Every receive and send is bounded by
IDLE_TIMEOUT_S; a peer or protocol error closes only its own connection (malformed requests get h11's 400/431
first). Tests can run the same server in-process: `bound = await nursery.start(serve_sample_backend, [Listener(
"127.0.0.1", 0, "v1")])` gives the BoundListener list, in order, that the ready file holds.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import contextvars
import dataclasses
import enum
import functools
import hashlib
import http
import math
import os
import re
import signal
import socket
import ssl
import struct
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal, NoReturn

import h11
import orjson
import trio

IDLE_TIMEOUT_S = 60.0
LINGER_S = 2.0  # after our last byte, how long we read the peer's leftovers so it sees our response, not an RST
MAX_DELAY_S = 60.0
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1 << 40
RECEIVE_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
DROP_MID_DECLARED_BYTES = 1000
DROP_MID_SENT_BYTES = 10
GARBAGE = b"NOT-HTTP \x00\xff\xfe this is not a status line\r\n\r\n"

PATTERN_PERIOD = 251  # prime, so no power-of-two chunking lines up with it: reordered chunks change the bytes
_PATTERN = bytes(i % PATTERN_PERIOD for i in range(PATTERN_PERIOD * (CHUNK_BYTES // PATTERN_PERIOD + 2)))

NO_BODY_STATUSES = frozenset({204, 304})
REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
JSON = b"application/json"
OCTETS = b"application/octet-stream"

ListenerKind = Literal["http", "https", "tcp-echo"]
LISTENER_KINDS: tuple[ListenerKind, ...] = ("http", "https", "tcp-echo")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ---------------------------------------------------------------- pure part: values in, values out


def pattern_bytes(offset: int, length: int) -> bytes:
    """The deterministic body of /bytes and /stream-bytes: byte i is i % 251."""
    parts = []
    while length > 0:
        start = offset % PATTERN_PERIOD
        size = min(length, len(_PATTERN) - start)
        parts.append(_PATTERN[start : start + size])
        offset += size
        length -= size
    return b"".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    endpoint: str  # key of ENDPOINTS
    arg: int | float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BadPath:
    message: str


def _parse_status(text: str) -> int | BadPath:
    if not text.isdigit() or not 100 <= int(text) <= 599:
        return BadPath(f"status must be an integer 100..599, got {text!r}")
    if int(text) == 101:
        return BadPath("101 Switching Protocols needs an Upgrade exchange; not offered here")
    return int(text)


def _parse_delay(text: str) -> float | BadPath:
    try:
        seconds = float(text)
    except ValueError:
        return BadPath(f"delay must be a number of seconds, got {text!r}")
    if not math.isfinite(seconds) or seconds < 0:
        return BadPath(f"delay must be a finite number >= 0, got {text!r}")
    return min(seconds, MAX_DELAY_S)


def _parse_size(text: str) -> int | BadPath:
    if not text.isdigit() or int(text) > MAX_BODY_BYTES:
        return BadPath(f"size must be an integer 0..{MAX_BODY_BYTES}, got {text!r}")
    return int(text)


EXACT_ROUTES = {
    "/": "request",
    "/headers": "request",
    "/ip": "ip",
    "/echo": "echo",
    "/sha256": "sha256",
    "/__stats": "stats",
    "/__reset": "reset",
    "/drop": "drop",
    "/drop-rst": "drop_rst",
    "/drop-mid": "drop_mid",
    "/garbage": "garbage",
    "/websocket": "websocket",
}
PREFIX_ROUTES: tuple[tuple[str, str, Callable[[str], int | float | BadPath]], ...] = (
    ("/status/", "status", _parse_status),
    ("/delay/", "delay", _parse_delay),
    ("/bytes/", "bytes", _parse_size),
    ("/stream-bytes/", "stream_bytes", _parse_size),
)


def route_for(target: bytes) -> Route | BadPath:
    """Exact paths first, then prefixes with an argument; anything else answers like '/'."""
    path = target.split(b"?", 1)[0].decode("latin-1")
    endpoint = EXACT_ROUTES.get(path)
    if endpoint is not None:
        return Route(endpoint)
    for prefix, endpoint, parse in PREFIX_ROUTES:
        if path.startswith(prefix):
            arg = parse(path[len(prefix) :])
            return arg if isinstance(arg, BadPath) else Route(endpoint, arg)
    return Route("request")


def is_counted(target: bytes) -> bool:
    return not target.startswith(b"/__")


def headers_document(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        joined[key] = f"{joined[key]}, {text}" if key in joined else text
    return joined


def parse_listen_spec(text: str) -> tuple[str, int, str]:
    """'HOST:PORT=NAME' (HOST may be '[v6]') → (host, port, name); argparse shows the error."""
    address, sep, name = text.rpartition("=")
    if not sep or not NAME_RE.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT=NAME, NAME matching {NAME_RE.pattern}")
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT=NAME with PORT 0..65535")
    return host, int(port), name


# ---------------------------------------------------------------- public API


@dataclasses.dataclass(frozen=True)
class Listener:
    host: str
    port: int  # 0 picks a free port; the bound one is reported by serve_sample_backend
    name: str
    kind: ListenerKind = "http"
    ssl_context: ssl.SSLContext | None = None  # server context, required exactly for kind "https"

    def __post_init__(self) -> None:
        if self.kind not in LISTENER_KINDS:
            raise ValueError(f"listener kind must be one of {LISTENER_KINDS}, got {self.kind!r}")
        if (self.kind == "https") != (self.ssl_context is not None):
            raise ValueError(f"listener {self.name!r}: ssl_context is required for https and only for https")
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(f"listener name {self.name!r} must match {NAME_RE.pattern}")


@dataclasses.dataclass(frozen=True)
class BoundListener:
    name: str
    kind: ListenerKind
    host: str
    port: int

    def as_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ListenerStats:
    instance: str
    connections_total: int = 0
    connections_open: int = 0
    requests_total: int = 0
    generation: int = 0  # bumped by reset, so connections opened earlier count again when next used

    def statistics(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "connections_total": self.connections_total,
            "connections_open": self.connections_open,
            "requests_total": self.requests_total,
        }

    def reset(self) -> None:
        self.generation += 1
        self.connections_total = 0
        self.requests_total = 0


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


async def serve_sample_backend(
    listeners: list[Listener], *, task_status: trio.TaskStatus[list[BoundListener]] = trio.TASK_STATUS_IGNORED
) -> NoReturn:
    """Bind every listener, report list[BoundListener] (same order) through task_status, serve forever.

    For https listeners this sets ALPN http/1.1 and an SNI-recording callback on the given context.
    """
    async with contextlib.AsyncExitStack() as listening:  # a failed bind closes the sockets bound before it
        opened = []
        for listener in listeners:
            socket_listener, bound = await _open_listener(listener)
            opened.append((await listening.enter_async_context(socket_listener), bound))
        async with trio.open_nursery() as nursery:  # accept loops and every connection task
            for listener, (socket_listener, _) in zip(listeners, opened):
                handler = _connection_handler(listener)
                nursery.start_soon(
                    functools.partial(trio.serve_listeners, handler, [socket_listener], handler_nursery=nursery)
                )
            task_status.started([bound for _, bound in opened])
    raise AssertionError("serve_listeners returned")  # pragma: no cover


# ---------------------------------------------------------------- I/O shell


async def _open_listener(listener: Listener) -> tuple[trio.SocketListener, BoundListener]:
    # One numeric address per listener, so port 0 means one port (a name like localhost would give v4 and v6
    # sockets on different ports).
    infos = await trio.socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_STREAM)
    numeric_host = infos[0][4][0]
    (socket_listener,) = await trio.open_tcp_listeners(listener.port, host=numeric_host)
    port = socket_listener.socket.getsockname()[1]
    return socket_listener, BoundListener(listener.name, listener.kind, numeric_host, port)


_TLS_SNI: contextvars.ContextVar[str | None] = contextvars.ContextVar("_TLS_SNI", default=None)


def _record_sni(ssl_object: object, server_name: str | None, context: ssl.SSLContext) -> None:
    # Runs synchronously inside do_handshake, in the connection's own task, so the ContextVar is per connection.
    _TLS_SNI.set(server_name)


def _connection_handler(listener: Listener) -> Callable[[trio.SocketStream], Awaitable[None]]:
    if listener.kind == "tcp-echo":
        return functools.partial(_serve_tcp_echo_connection, listener.name.encode())
    if listener.ssl_context is not None:
        listener.ssl_context.set_alpn_protocols(["http/1.1"])
        listener.ssl_context.sni_callback = _record_sni
    stats = ListenerStats(listener.name)
    return functools.partial(_serve_http_connection, listener, stats)


@contextlib.contextmanager
def _peer_failures_end_connection() -> Iterator[None]:
    """The socket edge: whatever the peer does ends its own connection, never the server."""
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
        pass


async def _receive(stream: trio.abc.ReceiveStream) -> bytes:
    with trio.fail_after(IDLE_TIMEOUT_S):
        return await stream.receive_some(RECEIVE_BYTES)


async def _send(stream: trio.abc.SendStream, data: bytes) -> None:
    with trio.fail_after(IDLE_TIMEOUT_S):
        await stream.send_all(data)


async def _serve_tcp_echo_connection(greeting_name: bytes, stream: trio.SocketStream) -> None:
    try:
        with _peer_failures_end_connection():
            await _send(stream, greeting_name + b"\n")
            while data := await _receive(stream):
                await _send(stream, data)
            await stream.aclose()
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_http_connection(listener: Listener, stats: ListenerStats, stream: trio.SocketStream) -> None:
    stats.connections_open += 1
    transport: trio.abc.Stream = stream
    try:
        with _peer_failures_end_connection():
            try:
                peer_ip = stream.socket.getpeername()[0]
            except OSError:  # the peer is already gone (ENOTCONN)
                return
            tls = None
            if listener.ssl_context is not None:
                transport = trio.SSLStream(stream, listener.ssl_context, server_side=True, https_compatible=True)
                with trio.fail_after(IDLE_TIMEOUT_S):
                    await transport.do_handshake()
                tls = {
                    "sni": _TLS_SNI.get(),
                    "alpn": transport.selected_alpn_protocol(),
                    "version": transport.version(),
                }
            session = _HttpSession(transport, stream, listener.name.encode(), stats, peer_ip, tls)
            try:
                await session.serve()
            except h11.RemoteProtocolError as exc:
                await session.answer_protocol_error(exc)
    finally:
        stats.connections_open -= 1
        await trio.aclose_forcefully(transport)


class After(enum.Enum):
    NEXT = "next"  # response complete: keep-alive or graceful close, as h11 decides
    CLOSED = "closed"  # the endpoint already ended the connection on purpose


class _HttpSession:
    def __init__(
        self,
        stream: trio.abc.Stream,
        tcp: trio.SocketStream,
        instance: bytes,
        stats: ListenerStats,
        peer_ip: str,
        tls: dict[str, object] | None,
    ) -> None:
        self.stream = stream
        self.tcp = tcp
        self.instance = instance
        self.stats = stats
        self.peer_ip = peer_ip
        self.tls = tls
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.counted_in_generation: int | None = None

    # -- moving bytes

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.conn.they_are_waiting_for_100_continue:
                continue_100 = h11.InformationalResponse(status_code=100, headers=self.served_by(), reason=REASONS[100])
                await self.send(continue_100)
            self.conn.receive_data(await _receive(self.stream))

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await _send(self.stream, data)

    async def read_body(self, on_data: Callable[[bytes], object] | None = None) -> int:
        """Reads the request body to its end, 64 KiB at a time; returns its length."""
        received = 0
        while type(event := await self.next_event()) is h11.Data:
            received += len(event.data)
            if on_data is not None:
                on_data(event.data)
        assert type(event) is h11.EndOfMessage, event
        return received

    def served_by(self, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        return [(b"x-served-by", self.instance), *extra]

    async def respond(self, request: h11.Request, status: int, body: bytes, content_type: bytes = JSON) -> None:
        headers = self.served_by()
        if status not in NO_BODY_STATUSES:
            headers += [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        await self.send(h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b"")))
        if body and status not in NO_BODY_STATUSES and request.method != b"HEAD":
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def respond_json(self, request: h11.Request, status: int, document: object) -> None:
        await self.respond(request, status, orjson.dumps(document))

    def request_document(self, request: h11.Request, body_bytes: int) -> dict[str, object]:
        return {
            "instance": self.instance.decode(),
            "method": request.method.decode("latin-1"),
            "path": request.target.decode("latin-1"),
            "http_version": request.http_version.decode("latin-1"),
            "headers": headers_document(list(request.headers)),
            "body_bytes": body_bytes,
            "tls": self.tls,
        }

    # -- the request loop

    async def serve(self) -> None:
        while True:
            event = await self.next_event()
            if type(event) is h11.ConnectionClosed:
                return
            assert type(event) is h11.Request, event
            if is_counted(event.target):
                self._count_request()
            route = route_for(event.target)
            if isinstance(route, BadPath):
                await self.read_body()
                await self.respond_json(event, 400, {"error": route.message})
                after = After.NEXT
            else:
                after = await ENDPOINTS[route.endpoint](self, event, route.arg)
            if after is After.CLOSED:
                return
            if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                self.conn.start_next_cycle()
            else:
                await self.close_gracefully()
                return

    def _count_request(self) -> None:
        if self.counted_in_generation != self.stats.generation:
            self.counted_in_generation = self.stats.generation
            self.stats.connections_total += 1
        self.stats.requests_total += 1

    async def answer_protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = orjson.dumps({"error": str(exc)})
            status = exc.error_status_hint
            headers = self.served_by((b"content-type", JSON), (b"content-length", str(len(body)).encode()))
            await self.send(h11.Response(status_code=status, headers=headers, reason=REASONS.get(status, b"")))
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
            await self.close_gracefully()

    async def close_gracefully(self) -> None:
        # Half-close, then read what the peer still sends for a moment: closing with unread bytes would make
        # the kernel send RST, which can destroy our response before the peer reads it.
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()
            with trio.move_on_after(LINGER_S):
                while await self.stream.receive_some(RECEIVE_BYTES):
                    pass
        await self.stream.aclose()

    async def abort(self, *, reset: bool) -> None:
        if reset:
            # SO_LINGER with a zero timeout turns close() into an RST.
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)


# ---------------------------------------------------------------- endpoints: (session, request, arg) -> After


async def _endpoint_request(session: _HttpSession, request: h11.Request, arg: object) -> After:
    body_bytes = await session.read_body()
    await session.respond_json(request, 200, session.request_document(request, body_bytes))
    return After.NEXT


async def _endpoint_ip(session: _HttpSession, request: h11.Request, arg: object) -> After:
    await session.read_body()
    await session.respond_json(request, 200, {"origin": session.peer_ip})
    return After.NEXT


async def _endpoint_status(session: _HttpSession, request: h11.Request, status: int) -> After:
    body_bytes = await session.read_body()
    document = session.request_document(request, body_bytes)
    if status < 200:
        if request.http_version != b"1.0":  # RFC 9110 15.2: never send a 1xx to an HTTP/1.0 client
            informational = h11.InformationalResponse(
                status_code=status, headers=session.served_by(), reason=REASONS.get(status, b"")
            )
            await session.send(informational)
        status = 200
    await session.respond_json(request, status, document)
    return After.NEXT


async def _endpoint_delay(session: _HttpSession, request: h11.Request, seconds: float) -> After:
    body_bytes = await session.read_body()
    await trio.sleep(seconds)
    await session.respond_json(request, 200, session.request_document(request, body_bytes))
    return After.NEXT


async def _send_pattern(session: _HttpSession, request: h11.Request, size: int, framing: tuple[bytes, bytes]) -> After:
    await session.read_body()
    headers = session.served_by((b"content-type", OCTETS), framing)
    await session.send(h11.Response(status_code=200, headers=headers, reason=REASONS[200]))
    if request.method != b"HEAD":
        for offset in range(0, size, CHUNK_BYTES):
            await session.send(h11.Data(data=pattern_bytes(offset, min(CHUNK_BYTES, size - offset))))
    await session.send(h11.EndOfMessage())
    return After.NEXT


async def _endpoint_bytes(session: _HttpSession, request: h11.Request, size: int) -> After:
    return await _send_pattern(session, request, size, (b"content-length", str(size).encode()))


async def _endpoint_stream_bytes(session: _HttpSession, request: h11.Request, size: int) -> After:
    return await _send_pattern(session, request, size, (b"transfer-encoding", b"chunked"))


async def _endpoint_echo(session: _HttpSession, request: h11.Request, arg: object) -> After:
    if session.conn.they_are_waiting_for_100_continue:
        # Answer the expectation first: a client that sees a final status before 100 may never send the body.
        continue_100 = h11.InformationalResponse(status_code=100, headers=session.served_by(), reason=REASONS[100])
        await session.send(continue_100)
    if _is_chunked(request):
        framing = (b"transfer-encoding", b"chunked")
    else:
        framing = (b"content-length", _content_length(request))
    headers = session.served_by((b"content-type", OCTETS), framing)
    await session.send(h11.Response(status_code=200, headers=headers, reason=REASONS[200]))
    while type(event := await session.next_event()) is h11.Data:
        if request.method != b"HEAD":
            await session.send(h11.Data(data=event.data))
    assert type(event) is h11.EndOfMessage, event
    await session.send(h11.EndOfMessage())
    return After.NEXT


def _is_chunked(request: h11.Request) -> bool:
    return any(name == b"transfer-encoding" for name, _ in request.headers)


def _content_length(request: h11.Request) -> bytes:
    return next((value for name, value in request.headers if name == b"content-length"), b"0")


async def _endpoint_sha256(session: _HttpSession, request: h11.Request, arg: object) -> After:
    digest = hashlib.sha256()
    body_bytes = await session.read_body(digest.update)
    await session.respond_json(request, 200, {"bytes": body_bytes, "sha256": digest.hexdigest()})
    return After.NEXT


async def _endpoint_stats(session: _HttpSession, request: h11.Request, arg: object) -> After:
    await session.read_body()
    await session.respond_json(request, 200, session.stats.statistics())
    return After.NEXT


async def _endpoint_reset(session: _HttpSession, request: h11.Request, arg: object) -> After:
    await session.read_body()
    session.stats.reset()
    await session.respond_json(request, 200, session.stats.statistics())
    return After.NEXT


async def _endpoint_drop(session: _HttpSession, request: h11.Request, arg: object) -> After:
    await session.abort(reset=False)
    return After.CLOSED


async def _endpoint_drop_rst(session: _HttpSession, request: h11.Request, arg: object) -> After:
    await session.abort(reset=True)
    return After.CLOSED


async def _endpoint_drop_mid(session: _HttpSession, request: h11.Request, arg: object) -> After:
    await session.read_body()
    headers = session.served_by((b"content-type", OCTETS), (b"content-length", str(DROP_MID_DECLARED_BYTES).encode()))
    await session.send(h11.Response(status_code=200, headers=headers, reason=REASONS[200]))
    await session.send(h11.Data(data=pattern_bytes(0, DROP_MID_SENT_BYTES)))
    await session.abort(reset=False)
    return After.CLOSED


async def _endpoint_garbage(session: _HttpSession, request: h11.Request, arg: object) -> After:
    await session.read_body()
    await _send(session.stream, GARBAGE)
    await session.abort(reset=False)
    return After.CLOSED


WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _endpoint_websocket(session: _HttpSession, request: h11.Request, arg: object) -> After:
    fields = headers_document(list(request.headers))
    key = fields.get("sec-websocket-key", "")
    if fields.get("upgrade", "").lower() != "websocket" or not key:
        await session.read_body()
        await session.respond_json(request, 400, {"error": "not a WebSocket handshake"})
        return After.NEXT
    await session.read_body()
    accept = base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())
    headers = session.served_by((b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", accept), (b"server", b"sample-backend"))
    await session.send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols"))
    pending, _ = session.conn.trailing_data
    if pending:
        await _send(session.stream, bytes(pending))
    while data := await _receive(session.stream):
        await _send(session.stream, data)
    await session.close_gracefully()
    return After.CLOSED


ENDPOINTS: dict[str, Callable[[_HttpSession, h11.Request, object], Awaitable[After]]] = {
    "request": _endpoint_request,
    "ip": _endpoint_ip,
    "status": _endpoint_status,
    "delay": _endpoint_delay,
    "bytes": _endpoint_bytes,
    "stream_bytes": _endpoint_stream_bytes,
    "echo": _endpoint_echo,
    "sha256": _endpoint_sha256,
    "stats": _endpoint_stats,
    "reset": _endpoint_reset,
    "drop": _endpoint_drop,
    "drop_rst": _endpoint_drop_rst,
    "drop_mid": _endpoint_drop_mid,
    "garbage": _endpoint_garbage,
    "websocket": _endpoint_websocket,
}


# ---------------------------------------------------------------- command line


class _AppendListener(argparse.Action):
    """All listener flags append to one list, so the ready file keeps command-line order across kinds."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        specs = getattr(namespace, self.dest) or []
        specs.append((self.const, values))
        setattr(namespace, self.dest, specs)


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge.dev.sample_backend",
        description="httpbin-like sample upstream for edge: HTTP, HTTPS and raw TCP echo listeners.",
    )
    for flag, kind, what in (
        ("--listen", "http", "plain HTTP listener"),
        ("--listen-tls", "https", "HTTPS listener (needs --tls-cert and --tls-key)"),
        ("--tcp-echo", "tcp-echo", "raw TCP echo listener"),
    ):
        parser.add_argument(
            flag, dest="listeners", action=_AppendListener, const=kind, type=parse_listen_spec,
            metavar="HOST:PORT=NAME", help=f"{what}; repeatable; PORT 0 picks a free port",
        )
    parser.add_argument("--tls-cert", metavar="PEM", help="certificate chain for --listen-tls listeners")
    parser.add_argument("--tls-key", metavar="PEM", help="private key for --listen-tls listeners")
    parser.add_argument("--ready-file", metavar="PATH", help="written with the bound listeners as JSON once ready")
    return parser


def listeners_from_args(argv: list[str]) -> tuple[list[Listener], str | None]:
    parser = _argument_parser()
    args = parser.parse_args(argv)
    specs: list[tuple[ListenerKind, tuple[str, int, str]]] = args.listeners or []
    if not specs:
        parser.error("give at least one --listen, --listen-tls or --tcp-echo")
    wants_tls = any(kind == "https" for kind, _ in specs)
    if wants_tls and not (args.tls_cert and args.tls_key):
        parser.error("--listen-tls needs --tls-cert and --tls-key")
    if not wants_tls and (args.tls_cert or args.tls_key):
        parser.error("--tls-cert/--tls-key are used only by --listen-tls listeners, and none was given")
    context = None
    if wants_tls:
        try:
            context = server_ssl_context(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"cannot load --tls-cert/--tls-key: {exc}")
    listeners = [
        Listener(host, port, name, kind, context if kind == "https" else None) for kind, (host, port, name) in specs
    ]
    return listeners, args.ready_file


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_ready_file(path: str, bound: list[BoundListener]) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as file:
        file.write(orjson.dumps({"pid": os.getpid(), "listeners": [b.as_json() for b in bound]}))
    os.replace(temporary, path)


async def _run(listeners: list[Listener], ready_file: str | None) -> int:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            try:
                bound = await nursery.start(serve_sample_backend, listeners)
            except OSError as exc:
                print(f"sample_backend: cannot listen: {exc}", file=sys.stderr)
                return 1
            for b in bound:
                address = _host_port(b.host, b.port)
                print(f"sample_backend: {b.name} ({b.kind}) listening on {address}", file=sys.stderr, flush=True)
            if ready_file:
                _write_ready_file(ready_file, bound)
            try:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
            finally:
                if ready_file:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(ready_file)
    return 0


def main(argv: list[str] | None = None) -> None:
    listeners, ready_file = listeners_from_args(sys.argv[1:] if argv is None else argv)
    sys.exit(trio.run(_run, listeners, ready_file))


if __name__ == "__main__":
    main()
