# The HTTP/1.1 reverse proxy of one downstream connection, on the codec the worker was started with
# (workers/http1.py: h11, or httptools), bodies streamed both ways.
#
# Rules (order of what happens to a request):
#   1. Read the request head under the header timeout (408 when it runs out mid-head; a silent close
#      when the keep-alive connection was idle). The codec frames and checks it (workers/http1_framing.py)
#      and refuses malformed input with its status (400, 414, 431, 501, 505; flag DPE). Header names with "_"
#      → 400 (Envoy's edge default). HTTP/1.0 → 426 when the table says Istio's default (PILOT_HTTP10 unset)
#      applies. CONNECT → 404 NR and a close (no route takes it at an Istio gateway).
#   2. Normalise the path (RFC 3986 dot segments, as Envoy's normalize_path), take the host the codec validated
#      (absolute-form target or Host), look up listener → filter chain → virtual host → route (a miss is 404 NR).
#   3. Route-level behaviour: httpsRedirect (301), CORS preflight, fault delay/abort, redirect, direct
#      response. Otherwise forward.
#   4. Forward: pick the weighted destination once per request, then per try pick an endpoint (avoiding
#      endpoints already tried), take a pooled connection or connect, send the head (one send with a small
#      body), stream the body with backpressure, read the response head. Retry per the route's policy (or
#      Istio's default) while nothing was sent to the client and the body can be replayed.
#   5. Send the response head in one send_all, stream the body; an upstream that dies mid-body closes the
#      client connection (never a truncated body presented as complete).
# - Local replies carry Envoy's bodies and response flags (NR, UH, UF, URX, UT, UO, UPE, FI, NC, DC, DPE, SI).
# - The client going away cancels the upstream exchange at once; that upstream connection is discarded.
# - Bytes the codec rejected never reach a backend: the upstream request is built from parsed events only, and
#   framed by the proxy (Content-Length or chunked from the body the codec framed, never the client's header).
#   A body that breaks the framing after its head went upstream is answered 400 (DPE) while no response has
#   started, and the upstream exchange is reset.
# - A request whose bytes stop moving for the stream idle timeout is cancelled by the worker's sweeper and
#   answered 408 (body still arriving) or 504 (SI).
# - serve_http_connection is the connection's boundary: an unexpected error is logged and counted by the
#   worker (edge_connection_errors_total), answered 500 when no response has started, and ends this connection
#   only. Nothing else here catches Exception, but a mirror's own task (_send_mirror), which has its boundary too.
from __future__ import annotations

import math
import socket
import sys
import time
from typing import TYPE_CHECKING

import trio

from edge.table import ACTION_DIRECT, ACTION_REDIRECT, Route
from workers import headers as hdr
from workers.http1 import CLOSED, END_OF_MESSAGE, NEED_DATA, REASONS, Data, IncompleteMessage, InformationalResponse, ProtocolError, Request, Response
from workers.netio import SocketTransport, Transport, TransportClosed
from workers.paths import normalize_path, split_target
from workers.tcp_proxy import splice_transports
from workers.route_policies import FAULT_ABORT_BODY, PREFLIGHT_FORWARD, cors_preflight, cors_response_headers, decide_fault, grpc_abort_headers, hash_for_request
from workers.upstream import ConnectFailure, Overflow, UpstreamConnection


if TYPE_CHECKING:
    from workers.main import Worker
    from workers.tableview import Compiled, RouteRuntime

BODY_CHUNK_BYTES = 64 * 1024
SEND_GRACE_S = 1.0  # how long a reply on a failed or timed-out connection may take before the close wins
# Envoy's default per-connection buffer: a request body up to this size is kept so a retry can replay it.
RETRY_BUFFER_BYTES = 1024 * 1024
RETRY_BACKOFF_MAX_FACTOR = 10

# Envoy's local reply bodies (router filter / response code details).
BODY_NO_HEALTHY_UPSTREAM = b"no healthy upstream"
BODY_CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
BODY_RESET = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
BODY_OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
BODY_TIMEOUT = b"upstream request timeout"
BODY_PROTOCOL_ERROR = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"


class ClientGone(Exception):
    """The downstream client closed or reset while its request was in flight."""


class RequestInfo:
    """The request as the router and the log see it."""

    __slots__ = ("method", "path", "query", "authority", "authority_bytes", "scheme", "headers", "path_bytes", "query_bytes", "host", "port", "body_present", "chunked", "upgrade", "forwarded")


class RequestLog:
    """One access-log / stats record. The request path sets only what it learns (status, flags, upstream,
    bytes); the descriptive fields (method, path, authority, user agent, …) are derived from the request and
    the connection when a log line is written, so a request that is not logged never decodes them."""

    status = 0
    flags = "-"
    details = "-"
    bytes_received = 0
    bytes_sent = 0
    upstream_host = "-"
    upstream_cluster = "-"
    route_name = "-"
    service_time_ms = -1
    attempts = 0
    duration_ms = 0
    forwarded: "hdr.Forwarded | None" = None  # once the request got that far: what went upstream
    upstream_authority: bytes | None = None  # the Host sent upstream (after rewrites), once routed to one
    upstream_local = "-"  # our end of the upstream connection that carried the last try
    upstream_path: bytes | None = None  # the request target sent upstream (after rewrites)
    upstream_original_path: bytes | None = None  # x-envoy-original-path, when the route rewrote the path
    response_headers: list | None = None  # the response head sent to the client (custom log templates read it)

    def __init__(self, start: float, down: "Downstream | None" = None, request: "Request | None" = None):
        self.start = start
        self.down = down
        self.request = request

    def _header(self, name: bytes) -> str:
        if self.request is not None:
            value = hdr.header_value(self.request.headers, name)
            if value is not None:
                return value.decode("latin-1")
        return "-"

    @property
    def method(self) -> str:
        return self.request.method.decode("latin-1") if self.request is not None else "-"

    @property
    def path(self) -> str:
        return self.request.target.decode("latin-1") if self.request is not None else "-"

    @property
    def protocol(self) -> str:
        return "HTTP/1.0" if self.request is not None and self.request.http_version == b"1.0" else "HTTP/1.1"

    @property
    def authority(self) -> str:
        if self.upstream_authority is not None:
            return self.upstream_authority.decode("latin-1")
        if self.request is None:
            return "-"
        from_target = split_target(self.request.target)[0]
        return from_target.decode("latin-1") if from_target else self._header(b"host")

    @property
    def user_agent(self) -> str:
        return self._header(b"user-agent")

    # X-Forwarded-For, X-Request-Id, the authority and the remote address are logged as the gateway forwarded
    # them (Envoy's access log reads the request headers after its connection manager and router changed them;
    # the path stays the original, as the default format's %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% does).
    @property
    def request_id(self) -> str:
        fwd = self.forwarded
        if fwd is None:
            return self._header(b"x-request-id")
        return fwd.request_id.decode("latin-1") if fwd.request_id is not None else "-"

    @property
    def x_forwarded_for(self) -> str:
        fwd = self.forwarded
        return fwd.xff.decode("latin-1") if fwd is not None else self._header(b"x-forwarded-for")

    @property
    def downstream_remote(self) -> str:
        fwd = self.forwarded
        if fwd is not None and fwd.client_from_xff:
            ip = fwd.client_ip.decode("latin-1")
            return f"[{ip}]:0" if ":" in ip else f"{ip}:0"
        down = self.down
        return f"{down.peer[0]}:{down.peer[1]}" if down is not None and down.peer else "-"

    @property
    def downstream_local(self) -> str:
        down = self.down
        return f"{down.local[0]}:{down.local[1]}" if down is not None and down.local else "-"

    @property
    def listener(self) -> str:
        return self.down.listener_key if self.down is not None else "-"

    @property
    def sni(self) -> str:
        return (self.down.sni or "-") if self.down is not None else "-"


# What a connection is doing, for the worker's sweeper (workers/main.py): IDLE connections are closed by the
# idle timeout and by drain; UPSTREAM_WAIT connections have their client socket checked for a disconnect
# (a peek), which cancels the exchange; a request in flight (BUSY or UPSTREAM_WAIT) whose bytes stopped moving
# for the stream idle timeout is cancelled and answered 408/504 (Envoy's stream_idle_timeout). One cancel
# scope per connection serves all three, so the request path sets attributes instead of entering a scope or
# starting a watcher task. SPLICED connections (WebSocket) have the splice's own idle timeout.
STATE_BUSY = 0
STATE_IDLE = 1
STATE_UPSTREAM_WAIT = 2
STATE_SPLICED = 3


class Downstream:
    """One client connection: its transport, codec state and where it came from."""

    __slots__ = ("worker", "transport", "conn", "peer_ip", "peer", "local", "scheme", "scheme_bytes", "listener_key", "chain_index", "sni", "must_close", "scope", "state", "since", "client_gone", "fresh", "response_started", "activity", "stream_timed_out", "client_cert")

    def __init__(self, worker: "Worker", transport: Transport, peer: tuple, local: tuple, scheme: str, listener_key: str, chain_index: int = -1, sni: str = "", client_cert: bytes | None = None):
        self.worker = worker
        self.transport = transport
        self.peer = peer
        self.peer_ip = str(peer[0]).encode() if peer else b"127.0.0.1"
        self.local = local
        self.scheme = scheme
        self.scheme_bytes = scheme.encode()
        self.listener_key = listener_key
        self.chain_index = chain_index
        self.sni = sni
        self.must_close = False
        self.conn = worker.server_codec(worker.max_header_bytes)
        self.scope: trio.CancelScope | None = None
        self.state = STATE_BUSY
        self.since = 0.0
        self.client_gone = False
        self.fresh = True
        self.response_started = False  # a response head for the current request went (or is going) out
        self.activity = 0.0  # monotonic time bytes last moved for the request in flight (the stream idle timeout)
        self.stream_timed_out = False
        self.client_cert = client_cert  # x-forwarded-client-cert of a verified client certificate (workers/xfcc.py)

    def raw_socket(self) -> socket.socket | None:
        return _raw_socket(self.transport)


# ---------------------------------------------------------------------------------------------------------
# Connection loop
# ---------------------------------------------------------------------------------------------------------


async def serve_http_connection(down: Downstream) -> None:
    worker = down.worker
    conn = down.conn
    transport = down.transport
    worker.connections.add(down)
    try:
        with trio.CancelScope() as down.scope:
            while True:
                event = await _read_request_head(down)
                if event is None:
                    return
                keep_alive = await _handle_request(down, event)
                if not keep_alive or down.must_close or worker.draining:
                    return
                if conn.request_body_pending and not await _drain_request_body(down, RETRY_BUFFER_BYTES):
                    return  # a body we did not forward, or the end of a body-less request, is left
                if conn.will_close or not conn.start_next_cycle():
                    return
        if down.stream_timed_out and not down.response_started:
            await _send_stream_timeout(down)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
        return
    except Exception as exc:  # noqa: BLE001 - this connection's boundary: the failure ends this connection only
        worker.connection_failed(exc, down.listener_key)
        if not down.response_started:
            await _send_internal_error(down)
    finally:
        worker.connections.discard(down)
        worker.upstream_waiting.discard(down)
        await transport.aclose()


def _closing_reply(down: Downstream, status: int, body: bytes = b"", content_type: bytes | None = None) -> bytes:
    """A whole reply written without the codec (its state is unusable or beside the point), announcing the close."""
    head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n" % (status, REASONS.get(status, b""), len(body))
    if content_type is not None:
        head += b"content-type: " + content_type + b"\r\n"
    head += b"date: " + _http_date() + b"\r\n"
    if down.worker.server_header:
        head += b"server: " + down.worker.server_header + b"\r\n"
    return head + b"connection: close\r\n\r\n" + body


async def _send_before_close(down: Downstream, data: bytes) -> None:
    """A last reply on a connection that is closing anyway: bounded, and a client already gone is no error."""
    with trio.move_on_after(SEND_GRACE_S):
        try:
            await down.transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _send_internal_error(down: Downstream) -> None:
    """500 for a request whose handling failed unexpectedly (its log line says so), then the close."""
    await _send_before_close(down, _closing_reply(down, 500))


async def _send_stream_timeout(down: Downstream) -> None:
    """Envoy's stream idle timeout reply: 408 while the request was still arriving, else 504 (the request was
    whole and nothing came back). The request's log line was written when its handler was cancelled."""
    status = 408 if down.conn.request_body_pending else 504
    await _send_before_close(down, _closing_reply(down, status, b"stream timeout", b"text/plain"))


async def _read_request_head(down: Downstream) -> Request | None:
    """The next request head; None when the connection should just close (idle, EOF, or answered error)."""
    conn = down.conn
    worker = down.worker
    opts = worker.options
    header_deadline = math.inf
    while True:
        try:
            event = conn.next_event()
        except IncompleteMessage:
            return None  # the client closed in the middle of a head: nobody to answer
        except ProtocolError as exc:
            await _reject_malformed(down, exc)
            return None
        if event is NEED_DATA:
            buffered = conn.has_buffered_data
            if buffered and header_deadline == math.inf:
                header_deadline = trio.current_time() + opts.request_headers_timeout_s
            data = await _recv_for_head(down, buffered, header_deadline)
            if data is None:
                if buffered:
                    log = RequestLog(time.time(), down)
                    log.details = "request_header_timeout"
                    await _send_raw_reply(down, log, 408, b"")
                return None
            conn.receive_data(data)
            continue
        if type(event) is Request:
            return event
        # ConnectionClosed, PAUSED or anything unexpected: end quietly.
        return None


async def _recv_for_head(down: Downstream, buffered: bool, header_deadline: float) -> bytes | None:
    """Bytes for the request head, or None on timeout. Between requests the connection is IDLE: the sweeper
    closes it at the idle timeout or when the worker drains (by cancelling the connection's scope)."""
    transport = down.transport
    if buffered:
        with trio.move_on_at(header_deadline):
            return await transport.recv()
        return None
    if down.fresh:
        # A new connection's first request is usually there already; a keep-alive connection's next one
        # almost never is, so for those the failing read is skipped and the wait comes first.
        down.fresh = False
        data = transport.recv_nowait()
        if data is not None:
            return data
    if down.worker.draining:
        return b""
    down.state = STATE_IDLE
    down.since = time.monotonic()
    try:
        return await transport.recv_waiting()
    finally:
        down.state = STATE_BUSY


# Envoy's response code details for what its HTTP/1 codec refuses (all flagged DPE, downstream protocol error).
CODEC_ERROR_DETAILS = {431: "http1.headers_too_large", 414: "http1.headers_too_large", 501: "http1.invalid_transfer_encoding"}


async def _reject_malformed(down: Downstream, exc: ProtocolError) -> None:
    log = RequestLog(time.time(), down)
    log.flags = "DPE"
    log.details = CODEC_ERROR_DETAILS.get(exc.status_hint, "http1.codec_error")
    # The codec is in an error state; the answer is written directly.
    await _send_raw_reply(down, log, exc.status_hint, b"")


# ---------------------------------------------------------------------------------------------------------
# One request
# ---------------------------------------------------------------------------------------------------------


async def _handle_request(down: Downstream, request: Request) -> bool:
    worker = down.worker
    log = RequestLog(time.time(), down, request)
    down.response_started = False
    down.activity = time.monotonic()
    try:
        return await _handle_request_logged(down, request, log)
    finally:
        down.activity = 0.0  # no request in flight: the stream idle timeout does not apply
        if down.client_gone:
            log.flags = "DC"
            log.details = "downstream_remote_disconnect"
        elif down.stream_timed_out:
            if not down.response_started:
                log.status = 408 if down.conn.request_body_pending else 504
            log.flags = "SI"
            log.details = "stream_idle_timeout"
        elif not down.response_started and _unexpected(sys.exc_info()[1]):
            log.status = 500  # the connection's boundary answers it (serve_http_connection)
            log.details = "internal_error"
        log.duration_ms = int((time.time() - log.start) * 1000)
        worker.finish_request(log)


def _unexpected(exc: BaseException | None) -> bool:
    """An error serve_http_connection's boundary will catch (not a client or transport going away)."""
    return isinstance(exc, Exception) and not isinstance(exc, (ClientGone, trio.BrokenResourceError, trio.ClosedResourceError))


async def _handle_request_logged(down: Downstream, request: Request, log: RequestLog) -> bool:
    worker = down.worker
    compiled = worker.view.current()
    head = request.head  # what the codec read from the fields, once (workers/http1_framing.RequestHead)
    req = RequestInfo()
    req.method = request.method.decode("ascii")  # a token of KNOWN_METHODS
    req.headers = request.headers
    _, raw_path, raw_query = split_target(request.target)
    # WebSocket is the upgrade Istio's gateways enable (Envoy upgrade_configs); others are plain requests.
    upgrade = head.upgrade
    req.upgrade = upgrade if upgrade is not None and upgrade.lower() == b"websocket" else None
    req.authority_bytes = authority = head.authority
    req.authority = authority.decode("ascii")  # parse_authority admits ASCII only

    if compiled is None:
        await _local_reply(down, request, log, 503, BODY_NO_HEALTHY_UPSTREAM, flags="UH", details="no_table")
        return False
    opts = compiled.options
    # Decided before routing, as Envoy's connection manager does: the scheme can come from a trusted proxy.
    req.forwarded = log.forwarded = fwd = hdr.forwarded_for(
        head.xff,
        head.xfp,
        head.request_id,
        peer_ip=down.peer_ip,
        scheme=down.scheme_bytes,
        trusted_hops=opts.num_trusted_proxies,
        generate_request_id=opts.generate_request_id,
        preserve_request_id=opts.preserve_external_request_id,
        rng=worker.rng,
    )
    req.scheme = fwd.scheme
    if request.http_version == b"1.0" and not opts.accept_http10:
        await _local_reply(down, request, log, 426, b"", close=True, flags="-", details="http1.0_not_allowed")
        return False
    req.body_present = head.chunked or head.content_length > 0
    req.chunked = head.chunked
    if head.underscore and opts.reject_underscore_headers:
        await _local_reply(down, request, log, 400, b"", close=True, flags="-", details="http1.invalid_characters")
        return False
    if request.method == b"CONNECT":
        # No route matches a CONNECT at an Istio gateway (Envoy routes it only by a connect_matcher); whatever
        # the client sends after it is a tunnel's bytes, so the connection closes after the answer.
        await _local_reply(down, request, log, 404, b"", close=True, flags="NR", details="route_not_found")
        return False
    path = normalize_path(raw_path)
    if path is None:
        await _local_reply(down, request, log, 400, b"", close=True, flags="-", details="path_normalization_failed")
        return False
    req.path_bytes = path
    req.path = path.decode("latin-1")
    req.query_bytes = raw_query
    req.query = raw_query.decode("latin-1")
    req.port = head.port
    req.host = head.host.decode("ascii")

    router = None
    listener_rt = compiled.listeners.get(down.listener_key)
    if listener_rt is not None:
        if down.chain_index >= 0:
            if down.chain_index < len(listener_rt.chains):
                router = listener_rt.chains[down.chain_index].router
        else:
            router = listener_rt.router
    vhost = router.find_virtual_host(req.host) if router is not None else None
    if vhost is None:
        await _local_reply(down, request, log, 404, b"", flags="NR", details="route_not_found")
        return True
    if vhost.require_tls and req.scheme == "http":
        # Envoy's createSslRedirectPath: the Host as the client sent it, then the normalised path and query.
        location = b"https://" + authority + path + (b"?" + raw_query if raw_query else b"")
        await _local_reply(down, request, log, 301, b"", extra=[(b"location", location)], flags="-", details="via_upstream")
        return True
    route = router.match(vhost, req)
    if route is None:
        await _local_reply(down, request, log, 404, b"", flags="NR", details="route_not_found")
        return True
    rt = compiled.route_runtime(route)
    log.route_name = route.name or "-"

    # CORS, then fault, then the route's action: the order of Istio's HTTP filter chain.
    extra: list = []
    if rt.cors is not None:
        origin = hdr.header_value(request.headers, b"origin")
        preflight = cors_preflight(rt.cors, request.method, origin, hdr.header_value(request.headers, b"access-control-request-method"))
        if preflight is not None and preflight != PREFLIGHT_FORWARD:
            await _local_reply(down, request, log, 200, b"", extra=preflight, flags="-", details="cors_response")
            return True
        if preflight is None:
            extra = cors_response_headers(rt.cors, origin)
    if route.action == ACTION_REDIRECT:
        location = _redirect_location(route, req, listener_rt.listener.port)
        await _local_reply(down, request, log, route.redirect.code, b"", extra=[(b"location", location), *extra], response_ops=rt.response_ops, flags="-", details="redirect")
        return True
    if route.action == ACTION_DIRECT:
        direct = route.direct
        await _local_reply(down, request, log, direct.status, direct.body, extra=extra, response_ops=rt.response_ops, flags="-", details="direct_response", content_type=None)
        return True
    if route.fault is not None:
        delay_s, abort_status, grpc_status = decide_fault(route.fault, worker.rng)
        if delay_s:
            log.flags = "DI"
            await trio.sleep(delay_s)
        if abort_status:
            await _local_reply(down, request, log, abort_status, FAULT_ABORT_BODY, extra=extra, response_ops=rt.response_ops, flags="FI", details="fault_filter_abort")
            return not down.must_close
        if grpc_status:
            await _local_reply(down, request, log, 200, b"", extra=grpc_abort_headers(grpc_status) + extra, response_ops=rt.response_ops, flags="FI", details="fault_filter_abort")
            return not down.must_close
    return await _forward(down, request, req, compiled, rt, log, extra)


def _redirect_location(route: Route, req: RequestInfo, listener_port: int) -> bytes:
    r = route.redirect
    scheme = r.scheme or req.scheme
    host = r.authority or req.host
    port = 0
    if r.port:
        port = r.port
    elif r.port_from_request:
        port = req.port or listener_port

    elif not r.authority and not r.scheme and req.port:
        port = req.port  # same scheme and host: keep the port the client used
    if (scheme == "http" and port == 80) or (scheme == "https" and port == 443):
        port = 0
    path = req.path
    query = req.query
    if r.path:
        path = r.path
        if "?" in path:
            path, query = path.split("?", 1)
    elif r.prefix_rewrite is not None:
        prefix = route.match.path.value if route.match.path is not None else "/"
        path = r.prefix_rewrite + path[len(prefix) :]
    location = f"{scheme}://{host}{':' + str(port) if port else ''}{path}{'?' + query if query else ''}"
    return location.encode("latin-1")


# ---------------------------------------------------------------------------------------------------------
# Local replies
# ---------------------------------------------------------------------------------------------------------


_date_cache: list = [0, b""]  # [second, formatted]: local replies in the same second share one string


def _http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _date_cache[1]


async def _local_reply(
    down: Downstream,
    request: Request | None,
    log: RequestLog,
    status: int,
    body: bytes,
    *,
    close: bool = False,
    extra: list | None = None,
    response_ops=None,
    flags: str = "-",
    details: str = "-",
    content_type: bytes | None = b"text/plain",
) -> None:
    """Answer from the gateway itself; the request body, if any, is drained or the connection closed."""
    log.status = status
    log.flags = flags
    log.details = details
    conn = down.conn
    headers = []
    if body and content_type is not None:
        headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"date", _http_date()))
    server = down.worker.server_header
    if server:
        headers.append((b"server", server))
    if extra:
        headers.extend(extra)
    if response_ops is not None:
        headers = response_ops.apply(headers)
    log.response_headers = headers
    if down.worker.draining or close:
        down.must_close = True
    # A request body we did not read: small ones are drained so the connection stays usable.
    if request is not None and conn.request_body_pending and not down.must_close:
        if not await _drain_request_body(down, limit=RETRY_BUFFER_BYTES):
            down.must_close = True
    down.response_started = True
    data = conn.send_response(status, REASONS.get(status, b""), headers, close=down.must_close)
    if body:
        data += conn.send_data(body)
    data += conn.send_end()
    log.bytes_sent += len(body)
    await down.transport.send_all(data)


async def _send_raw_reply(down: Downstream, log: RequestLog, status: int, body: bytes, close: bool = True) -> None:
    """A reply when the codec's state is unusable (after a protocol error)."""
    log.status = status
    down.must_close = True
    down.response_started = True
    try:
        await down.transport.send_all(_closing_reply(down, status, body))
    finally:
        down.worker.finish_request(log)


async def _drain_request_body(down: Downstream, limit: int) -> bool:
    """Read and drop the rest of the request body; False if it is longer than `limit`, broken, or slower
    than the request headers timeout (a trickling body must not hold the connection)."""
    conn = down.conn
    if conn.client_is_waiting_for_100_continue:
        return False  # the client has not sent its body and will not without a 100: close instead
    try:
        event = conn.next_event()
    except ProtocolError:
        return False
    if event is END_OF_MESSAGE:
        return True  # the common case: the end of a body-less request, parsed already
    if event is not NEED_DATA and type(event) is not Data:
        return False
    seen = len(event.data) if type(event) is Data else 0
    if seen > limit:
        return False
    with trio.move_on_after(down.worker.options.request_headers_timeout_s or math.inf):
        return await _drain_body(down, limit, seen)
    return False


async def _drain_body(down: Downstream, limit: int, seen: int) -> bool:
    conn = down.conn
    while True:
        try:
            event = conn.next_event()
        except ProtocolError:
            return False
        if event is NEED_DATA:
            data = await down.transport.recv()
            conn.receive_data(data)
            continue
        if event is END_OF_MESSAGE:
            return True
        if type(event) is Data:
            seen += len(event.data)
            if seen > limit:
                return False
        else:
            return False


# ---------------------------------------------------------------------------------------------------------
# Forwarding
# ---------------------------------------------------------------------------------------------------------


class Outcome:
    """Why a try ended without a response going downstream."""

    CONNECT_FAILURE = "connect_failure"
    OVERFLOW = "overflow"
    RESET = "reset"
    TIMEOUT = "timeout"
    PER_TRY_TIMEOUT = "per_try_timeout"
    PROTOCOL_ERROR = "protocol_error"
    STATUS = "status"  # a response came; `sent` says whether it went downstream


class TryResult:
    __slots__ = ("kind", "status", "reason", "upstream", "response", "sent")

    def __init__(self, kind: str, status: int = 0, reason: str = "", upstream: UpstreamConnection | None = None, response: Response | None = None):
        self.kind = kind
        self.status = status
        self.reason = reason
        self.upstream = upstream  # held only for a retriable response that was not sent
        self.response = response
        self.sent = False

    @property
    def outlier_status(self) -> int:
        """What outlier detection counts: the status, 0 for a failure with no response, -1 for no verdict."""
        if self.kind == Outcome.STATUS:
            return self.status
        if self.kind == Outcome.PROTOCOL_ERROR:
            return 502
        if self.kind == Outcome.OVERFLOW:
            return -1
        return 0


class BodyState:
    """The client's request body across tries."""

    __slots__ = ("present", "chunked", "complete", "buffer", "replayable", "consumed", "bytes", "client_failed", "upstream_failed", "dechunked", "protocol_error")

    def __init__(self, present: bool, chunked: bool):
        self.present = present
        self.chunked = chunked
        self.complete = not present
        self.buffer: list[bytes] = []
        self.replayable = True
        self.consumed = False
        self.bytes = 0
        self.client_failed = False
        self.upstream_failed = False
        self.dechunked = False  # a chunked body read whole before forwarding goes upstream with its length
        self.protocol_error: ProtocolError | None = None  # the client's body broke the framing rules

    @property
    def can_replay(self) -> bool:
        return not self.consumed or (self.complete and self.replayable)


def _take_parsed_body(conn, body: BodyState) -> None:
    """Take the body events the codec has already parsed, without I/O: a small body usually arrives in the
    same read as its head, and read whole it is forwarded in one send (and can be replayed by a retry).
    Stops at the replay-buffer limit; the rest is streamed, after these chunks."""
    while body.bytes < RETRY_BUFFER_BYTES:
        try:
            event = conn.next_event()
        except IncompleteMessage:
            return  # the client closed mid-body: the uploader meets it again and the client is gone (DC)
        except ProtocolError as exc:
            body.protocol_error = exc  # answered before anything goes upstream (_forward)
            return
        if event is NEED_DATA:
            return
        if event is END_OF_MESSAGE:
            body.complete = True
            if body.chunked:
                body.chunked = False
                body.dechunked = True
            return
        if type(event) is not Data:
            return
        body.consumed = True
        body.bytes += len(event.data)
        body.buffer.append(bytes(event.data))


class Exchange:
    """One forwarded request: what every try needs, decided once."""

    __slots__ = ("down", "request", "req", "rt", "dest", "cluster_rt", "body", "log", "policy", "host", "target", "original_path", "deadline", "hash_value", "extra_response_headers", "upstream_headers")

    def __init__(self, down: Downstream, request: Request, req: RequestInfo, rt: "RouteRuntime", dest, log: RequestLog, policy) -> None:
        self.down = down
        self.request = request
        self.req = req
        self.rt = rt
        self.dest = dest
        self.cluster_rt = dest.cluster_runtime
        self.body = BodyState(req.body_present, req.chunked)
        if self.body.present:
            _take_parsed_body(down.conn, self.body)
        self.log = log
        self.policy = policy
        self.host = log.upstream_authority = _upstream_host(req, rt.route, dest)
        self.target, self.original_path = _upstream_target(rt.route, rt, req)
        log.upstream_path, log.upstream_original_path = self.target, self.original_path
        timeout_s = rt.route.timeout_s
        self.deadline = trio.current_time() + timeout_s if timeout_s > 0 else math.inf
        self.hash_value: int | None = None
        self.extra_response_headers: list = []
        # Every try sends these plus its x-envoy-attempt-count (the x-request-id stays the same across tries).
        self.upstream_headers = hdr.upstream_request_headers(
            request.headers,
            host=self.host,
            forwarded=req.forwarded,
            attempt=0,
            timeout_ms=rt.timeout_ms,
            original_path=self.original_path,
            chunked=self.body.chunked,
            # The bytes of a chunked body read whole, else the length the codec framed the request with.
            content_length=self.body.bytes if self.body.dechunked else (request.head.content_length if request.head.content_length >= 0 else None),
            nominated=request.head.nominated,
            client_cert=down.client_cert,
            route_ops=rt.request_ops,
            destination_ops=dest.request_ops,
        )


def _pick_destination(rt: "RouteRuntime", rng) -> int:
    n = len(rt.destinations)
    if n <= 1 or rt.total_weight <= 0:
        return 0
    r = rng.randrange(rt.total_weight)
    for i, edge in enumerate(rt.cumulative):
        if r < edge:
            return i
    return n - 1


def _retriable(result: TryResult, policy, body: BodyState) -> bool:
    if policy is None or policy.attempts <= 0 or not body.can_replay:
        return False
    retry_on = policy.retry_on
    kind = result.kind
    if kind == Outcome.CONNECT_FAILURE:
        return "connect-failure" in retry_on or "5xx" in retry_on or "gateway-error" in retry_on or "reset" in retry_on
    if kind in (Outcome.RESET, Outcome.PROTOCOL_ERROR):
        # Envoy counts an upstream reset (a broken response included) as a 5xx for both policies.
        return "reset" in retry_on or "5xx" in retry_on or "gateway-error" in retry_on
    if kind == Outcome.PER_TRY_TIMEOUT:
        return "5xx" in retry_on or "gateway-error" in retry_on
    if kind == Outcome.STATUS:
        return _status_retriable(result.status, policy)
    return False


def _status_retriable(status: int, policy) -> bool:
    if policy is None or policy.attempts <= 0:
        return False
    retry_on = policy.retry_on
    if status >= 500 and "5xx" in retry_on:
        return True
    if status in (502, 503, 504) and "gateway-error" in retry_on:
        return True
    if status == 409 and "retriable-4xx" in retry_on:
        return True
    return status in policy.retriable_status_codes


def _backoff(policy, attempt: int, rng) -> float:
    base = policy.backoff_base_s if policy is not None and policy.backoff_base_s > 0 else 0.025
    return min(base * RETRY_BACKOFF_MAX_FACTOR, rng.random() * base * (2 ** (attempt - 1)))


def _upstream_host(req: RequestInfo, route: Route, dest) -> bytes:
    if route.rewrite is not None and route.rewrite.authority:
        return route.rewrite.authority.encode("latin-1")
    if dest.host_rewrite:
        return dest.host_rewrite
    if route.headers is not None and route.headers.authority:
        return route.headers.authority.encode("latin-1")
    return req.authority_bytes


def _upstream_target(route: Route, rt: "RouteRuntime", req: RequestInfo) -> tuple[bytes, bytes | None]:
    """The request target sent upstream, and the original path when it was rewritten."""
    path = req.path_bytes
    original = None  # x-envoy-original-path: only when the route rewrites (Envoy's finalizePathHeader)
    rewrite = route.rewrite
    if rewrite is not None:
        new_path = None
        if rewrite.prefix is not None and route.match.path is not None:
            new_path = rewrite.prefix + req.path[len(route.match.path.value) :]
        elif rewrite.full_path is not None:
            new_path = rewrite.full_path
        elif rt.regex_rewrite is not None:
            new_path = rt.regex_rewrite.sub(rewrite.regex_substitution, req.path)
        if new_path is not None:
            original = req.path_bytes + (b"?" + req.query_bytes if req.query_bytes else b"")
            path = new_path.encode("latin-1")
    if req.query_bytes:
        return path + b"?" + req.query_bytes, original
    return path, original


async def _forward(down: Downstream, request: Request, req: RequestInfo, compiled: "Compiled", rt: "RouteRuntime", log: RequestLog, extra_response_headers: list) -> bool:
    worker = down.worker
    route = rt.route
    if not rt.destinations:
        await _local_reply(down, request, log, 503, b"", flags="NC", details="cluster_not_found")
        return not down.must_close
    dest = rt.destinations[_pick_destination(rt, worker.rng)]
    log.upstream_cluster = dest.wc.cluster or "-"
    if dest.cluster_runtime is None:
        await _local_reply(down, request, log, 503, b"", flags="NC", details="cluster_not_found")
        return not down.must_close
    policy = route.retry if route.retry is not None else compiled.table.default_retry
    ex = Exchange(down, request, req, rt, dest, log, policy)
    if ex.body.protocol_error is not None:  # a broken body already parsed: answered before any upstream sees it
        return await _answer_body_error(ex)
    ex.extra_response_headers = extra_response_headers
    hash_policy = dest.wc.hash_policy or dest.cluster_runtime.cluster.hash_policy
    if hash_policy is not None:
        ex.hash_value, set_cookie = hash_for_request(hash_policy, request.headers, req.query, req.forwarded.client_ip)
        if set_cookie is not None:
            ex.extra_response_headers.append((b"set-cookie", set_cookie))
    circuit = ex.cluster_rt.circuit
    if circuit.requests >= circuit.max_requests:
        circuit.overflows += 1
        await _local_reply(down, request, log, 503, BODY_OVERFLOW, extra=[(b"x-envoy-overloaded", b"true")], flags="UO", details="overflow", close=ex.body.present)
        return not down.must_close
    circuit.requests += 1
    try:
        keep_alive = await (_forward_upgrade(ex) if req.upgrade is not None else _forward_with_retries(ex))
    finally:
        circuit.requests -= 1
        log.bytes_received = ex.body.bytes  # %BYTES_RECEIVED% and istio_request_bytes (issue 6)
    if rt.mirrors and ex.body.complete and ex.body.replayable:
        _start_mirrors(ex)
    return keep_alive


async def _forward_with_retries(ex: Exchange) -> bool:
    down = ex.down
    worker = down.worker
    log = ex.log
    balancer = ex.cluster_rt.balancer
    circuit = ex.cluster_rt.circuit
    policy = ex.policy
    max_tries = 1 + (policy.attempts if policy is not None else 0)
    per_try = policy.per_try_timeout_s if policy is not None else 0.0
    # Envoy drops the previous-hosts predicate when the route hashes: the same key must find the same host.
    avoid_tried = ex.hash_value is None and (policy is None or policy.ignore_previous_hosts)
    tried: list[int] = []
    result: TryResult | None = None
    attempt = 0
    retrying = False
    try:
        while True:
            attempt += 1
            log.attempts = attempt
            index = balancer.choose(trio.current_time(), ex.hash_value, tried if avoid_tried else ())
            if index is None:
                await _local_reply(down, ex.request, log, 503, BODY_NO_HEALTHY_UPSTREAM, flags="UH", details="no_healthy_upstream", close=not ex.body.can_replay)
                return not down.must_close
            tried.append(index)
            state = balancer.states[index]
            endpoint = state.endpoint
            log.upstream_host = state.address_text
            try_deadline = min(ex.deadline, trio.current_time() + per_try) if per_try > 0 else ex.deadline
            balancer.on_start(index)
            verdict = -1  # stays -1 when the client left: no verdict on the endpoint
            try:
                result = await _try_once(ex, attempt, endpoint, try_deadline)
                verdict = result.outlier_status
            except ClientGone:
                log.flags = "DC"
                log.details = "downstream_remote_disconnect"
                down.must_close = True
                return False
            except RequestBodyError:
                return await _answer_body_error(ex)
            finally:
                if verdict >= 0:
                    balancer.on_finish(index, verdict, trio.current_time())
                else:
                    balancer.on_cancel(index)
            if result.sent:
                return not down.must_close
            if attempt < max_tries and _retriable(result, policy, ex.body) and trio.current_time() < ex.deadline:
                if circuit.retries >= circuit.max_retries:
                    circuit.overflows += 1
                    break  # retry budget exhausted (maxRetries): answer with what we have
                if result.upstream is not None:
                    worker.pools.discard(result.upstream)
                    result.upstream = None
                if not retrying:
                    retrying = True
                    circuit.retries += 1
                await trio.sleep(_backoff(policy, attempt, worker.rng))
                continue
            break
    finally:
        if retrying:
            circuit.retries -= 1
    return await _answer_failure(ex, result, attempt > 1)


class RequestBodyError(Exception):
    """The client's request body broke the framing rules while it was being forwarded (BodyState.protocol_error)."""


async def _answer_body_error(ex: Exchange) -> bool:
    """Envoy's HTTP/1 codec error: 400 (DPE) when no response has started, then the connection closes and the
    upstream exchange is reset (its connection was discarded by the exchange)."""
    down = ex.down
    down.must_close = True
    error = ex.body.protocol_error
    if not down.response_started:
        await _local_reply(down, ex.request, ex.log, error.status_hint if error is not None else 400, b"", close=True, flags="DPE", details="http1.codec_error")
    else:
        ex.log.flags = "DPE"
        ex.log.details = "http1.codec_error"
    return False


async def _answer_failure(ex: Exchange, result: TryResult, retried: bool) -> bool:
    """Out of tries: a held response passes through; a failure gets Envoy's local reply."""
    down = ex.down
    request = ex.request
    log = ex.log
    if result.upstream is not None and result.response is not None:
        return await _relay_response(ex, result.upstream, result.response)
    close = not ex.body.can_replay or not ex.body.complete
    kind = result.kind
    if kind in (Outcome.TIMEOUT, Outcome.PER_TRY_TIMEOUT):
        await _local_reply(down, request, log, 504, BODY_TIMEOUT, flags="UT", details="upstream_response_timeout", close=close)
    elif kind == Outcome.OVERFLOW:
        await _local_reply(down, request, log, 503, BODY_OVERFLOW, extra=[(b"x-envoy-overloaded", b"true")], flags="UO", details="upstream_reset_before_response_started{overflow}", close=close)
    elif kind == Outcome.PROTOCOL_ERROR:
        await _local_reply(down, request, log, 502, BODY_PROTOCOL_ERROR, flags="UPE", details="upstream_reset_before_response_started{protocol_error}", close=close)
    elif kind == Outcome.CONNECT_FAILURE:
        await _local_reply(down, request, log, 503, BODY_CONNECT_FAILURE, flags="URX" if retried else "UF", details="upstream_reset_before_response_started{connection_failure}", close=close)
    else:
        await _local_reply(down, request, log, 503, BODY_RESET, flags="URX" if retried else "UC", details="upstream_reset_before_response_started{connection_termination}", close=close)
    return not down.must_close


async def _acquire(ex: Exchange, endpoint, try_deadline: float) -> UpstreamConnection | TryResult:
    worker = ex.down.worker
    cluster_rt = ex.cluster_rt
    cluster = cluster_rt.cluster
    key = (endpoint.address, endpoint.port) + cluster_rt.pool_key
    server_name = _sni_for(cluster, ex.host)
    if cluster.tls is not None and not cluster.tls.sni:
        key += (server_name,)  # auto SNI: a connection verified for one Host carries only that Host (Envoy too)
    idle = worker.pools.take_idle(key)
    if idle is not None:
        return idle
    try:

        with trio.move_on_at(try_deadline):
            return await worker.pools.acquire(key, cluster_rt.circuit, endpoint.address, endpoint.port, cluster.pool, worker.upstream_tls(cluster), server_name)
    except ConnectFailure as exc:
        return TryResult(Outcome.CONNECT_FAILURE, reason=exc.reason)
    except Overflow:
        return TryResult(Outcome.OVERFLOW)
    return TryResult(Outcome.TIMEOUT if try_deadline >= ex.deadline else Outcome.PER_TRY_TIMEOUT)


async def _try_once(ex: Exchange, attempt: int, endpoint, try_deadline: float) -> TryResult:
    acquired = await _acquire(ex, endpoint, try_deadline)
    if isinstance(acquired, TryResult):
        return acquired
    upstream = acquired
    ex.log.upstream_local = upstream.local
    down = ex.down
    headers = ex.upstream_headers + [(b"x-envoy-attempt-count", _ATTEMPTS[attempt] if attempt < len(_ATTEMPTS) else b"%d" % attempt)]
    try:
        head = upstream.codec.send_request(ex.request.method, ex.target, headers)
    except ProtocolError as exc:
        down.worker.pools.discard(upstream)
        return TryResult(Outcome.PROTOCOL_ERROR, reason=str(exc))
    if ex.body.complete:
        return await _exchange_buffered(ex, upstream, head, try_deadline)
    return await _exchange_streaming(ex, upstream, head, try_deadline)


_ATTEMPTS = tuple(b"%d" % i for i in range(16))


def _failure(exc: BaseException) -> TryResult:
    if isinstance(exc, (UpstreamClosed, TransportClosed, trio.ClosedResourceError)):
        return TryResult(Outcome.RESET, reason="connection termination")
    return TryResult(Outcome.PROTOCOL_ERROR, reason=str(exc))


def _timed_out(ex: Exchange, try_deadline: float) -> TryResult:
    return TryResult(Outcome.TIMEOUT if try_deadline >= ex.deadline else Outcome.PER_TRY_TIMEOUT)


_EXCHANGE_ERRORS = (ProtocolError, TransportClosed, trio.ClosedResourceError)


async def _exchange_buffered(ex: Exchange, upstream: UpstreamConnection, head: bytes, try_deadline: float) -> TryResult:
    """No body, or a body already read whole (a retry): one send, then the response."""
    codec = upstream.codec
    pools = ex.down.worker.pools
    data = head
    for chunk in ex.body.buffer:
        data += codec.send_data(chunk)
    data += codec.send_end()
    sent_at = ex.down.activity = time.monotonic()
    response = None
    try:
        if try_deadline == math.inf:  # no route or per-try timeout: no cancel scope on the hot path
            await upstream.transport.send_all(data)
            response = await _read_response_head(ex.down, upstream, watch_client=True)
        else:
            with trio.move_on_at(try_deadline):
                await upstream.transport.send_all(data)
                response = await _read_response_head(ex.down, upstream, watch_client=True)
    except _EXCHANGE_ERRORS as exc:
        pools.discard(upstream)
        return _failure(exc)
    except BaseException:
        pools.discard(upstream)
        raise
    if response is None:
        pools.discard(upstream)
        return _timed_out(ex, try_deadline)
    ex.log.service_time_ms = int((time.monotonic() - sent_at) * 1000)
    if _status_retriable(response.status_code, ex.policy):
        return TryResult(Outcome.STATUS, status=response.status_code, upstream=upstream, response=response)
    result = TryResult(Outcome.STATUS, status=response.status_code)
    result.sent = True
    await _relay_response(ex, upstream, response)
    return result


async def _exchange_streaming(ex: Exchange, upstream: UpstreamConnection, head: bytes, try_deadline: float) -> TryResult:
    """A body still arriving from the client: upload and download run at once (full duplex), so an upstream
    that answers while it reads (an echo) never deadlocks against us."""
    down = ex.down
    body = ex.body
    pools = down.worker.pools
    result: TryResult | None = None
    client_gone = False
    codec = upstream.codec
    try:
        # Body chunks the codec had parsed already go with the head; the uploader continues from there.
        await upstream.transport.send_all(head + b"".join(codec.send_data(chunk) for chunk in body.buffer))
    except _EXCHANGE_ERRORS as exc:
        pools.discard(upstream)
        return _failure(exc)
    sent_at = down.activity = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_upload_body, down, upstream, body, nursery.cancel_scope)
        response = None
        try:
            with trio.move_on_at(try_deadline):
                response = await _read_response_head(down, upstream, watch_client=False)
        except _EXCHANGE_ERRORS as exc:
            result = _failure(exc)
        if result is None and response is None:
            result = _timed_out(ex, try_deadline)
        if result is None:
            ex.log.service_time_ms = int((time.monotonic() - sent_at) * 1000)
            if _status_retriable(response.status_code, ex.policy) and body.complete and body.replayable:
                result = TryResult(Outcome.STATUS, status=response.status_code, upstream=upstream, response=response)
            else:
                result = TryResult(Outcome.STATUS, status=response.status_code)
                result.sent = True
                try:
                    await _relay_response(ex, upstream, response)
                except ClientGone:
                    client_gone = True
                if not body.complete:
                    # The response ended before the request body: stop reading it; the client connection
                    # cannot be reused (Envoy resets the stream in this case).
                    down.must_close = True
                    nursery.cancel_scope.cancel()
        else:
            pools.discard(upstream)
            nursery.cancel_scope.cancel()
    if body.client_failed or client_gone:
        if result is not None and result.upstream is not None:
            pools.discard(result.upstream)
        if body.protocol_error is not None and not client_gone:
            raise RequestBodyError()
        raise ClientGone()
    if result is None:  # the upload failed and cancelled the exchange
        pools.discard(upstream)
        return TryResult(Outcome.RESET, reason="connection termination")
    return result


class UpstreamClosed(ProtocolError):
    """The upstream closed (or reset) the connection before a response head."""


async def _read_response_head(down: Downstream, upstream: UpstreamConnection, watch_client: bool, accept_switch: bool = False) -> Response:
    """The upstream's final response head (1xx skipped). Raises ProtocolError on garbage, UpstreamClosed when
    the connection closed before a head, ClientGone when the client left meanwhile."""
    codec = upstream.codec
    transport = upstream.transport
    while True:
        event = codec.next_event()
        if event is NEED_DATA:
            # Right after the request went out the answer is not there yet: wait first, then read
            # (one recv call instead of a failed one and a second one).
            if watch_client:
                # The sweeper peeks at the client meanwhile and cancels the connection if it left.
                waiting = down.worker.upstream_waiting
                down.state = STATE_UPSTREAM_WAIT
                waiting.add(down)
                try:
                    data = await transport.recv_waiting()
                finally:
                    down.state = STATE_BUSY
                    waiting.discard(down)
            else:
                data = await transport.recv_waiting()
            if not data and not codec.has_buffered_data:
                raise UpstreamClosed("upstream closed before sending a response", 503)
            codec.receive_data(data)
            continue
        t = type(event)
        if t is Response:
            if hdr.has_conflicting_framing(event.headers):
                raise ProtocolError("upstream response with both Content-Length and Transfer-Encoding", 502)
            return event
        if t is InformationalResponse:
            if accept_switch and event.status_code == 101:
                return event
            continue
        if event is CLOSED:
            raise UpstreamClosed("upstream closed before sending a response", 503)
        raise ProtocolError(f"unexpected upstream event {event!r}", 502)


def _raw_socket(transport: Transport) -> socket.socket | None:
    if isinstance(transport, SocketTransport):
        return transport.sock
    inner = getattr(getattr(transport, "stream", None), "transport_stream", None)
    return getattr(inner, "socket", None)


async def _upload_body(down: Downstream, upstream: UpstreamConnection, body: BodyState, exchange: trio.CancelScope) -> None:
    """Client body → upstream with backpressure, keeping a copy for replay while it is small enough.
    Failures are recorded on `body` and cancel the exchange; nothing is raised into the nursery. Every chunk
    moved counts as activity for the stream idle timeout (the worker's sweeper enforces it)."""
    conn = down.conn
    codec = upstream.codec
    try:
        if conn.client_is_waiting_for_100_continue:
            # Envoy answers 100-continue itself and does not forward Expect.
            await down.transport.send_all(conn.send_informational(100))
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                data = await down.transport.recv()
                conn.receive_data(data)
                down.activity = time.monotonic()
                continue
            if type(event) is Data:
                chunk = event.data
                body.consumed = True
                body.bytes += len(chunk)
                if body.replayable:
                    if body.bytes <= RETRY_BUFFER_BYTES:
                        body.buffer.append(bytes(chunk))
                    else:
                        body.replayable = False
                        body.buffer.clear()
                try:
                    await upstream.transport.send_all(codec.send_data(chunk))
                except (TransportClosed, trio.ClosedResourceError):
                    body.upstream_failed = True
                    return  # the upstream stopped reading; its response (if any) decides
                down.activity = time.monotonic()
            elif event is END_OF_MESSAGE:
                body.complete = True
                try:
                    end = codec.send_end()
                    if end:
                        await upstream.transport.send_all(end)
                except (TransportClosed, trio.ClosedResourceError):
                    body.upstream_failed = True
                return
            else:
                body.client_failed = True
                exchange.cancel()
                return
    except IncompleteMessage:
        # The client closed its side in the middle of the body: it is gone, as Envoy sees it (DC).
        body.client_failed = True
        down.must_close = True
        exchange.cancel()
    except ProtocolError as exc:
        # A broken body (bad chunk size or extension, missing CRLF, bad trailers): nothing more goes upstream,
        # and the client is answered 400 when no response has started (RequestBodyError).
        body.protocol_error = exc
        body.client_failed = True
        down.must_close = True
        exchange.cancel()
    except (TransportClosed, trio.ClosedResourceError):
        # The client went away: nothing more goes upstream.
        body.client_failed = True
        down.must_close = True
        exchange.cancel()


async def _relay_response(ex: Exchange, upstream: UpstreamConnection, response: Response) -> bool:
    """The upstream's response, downstream: the head with the first body bytes in one send, the rest
    streamed. Returns keep-alive. Raises ClientGone when either side broke mid-body."""
    down = ex.down
    log = ex.log
    worker = down.worker
    conn = down.conn
    codec = upstream.codec
    log.status = response.status_code
    log.flags = "-"
    log.details = "via_upstream"
    out_headers = hdr.downstream_response_headers(
        response.headers,
        server=worker.server_header,
        service_time_ms=log.service_time_ms if log.service_time_ms >= 0 else None,
        route_ops=ex.rt.response_ops,
        destination_ops=ex.dest.response_ops,
        extra=ex.extra_response_headers,
    )
    log.response_headers = out_headers
    if worker.draining or not ex.body.complete:
        # A request body still arriving when the response starts: the connection cannot be reused (the
        # rest of the body is not read once the response is done), so the response says so.
        down.must_close = True
    clean = False
    down.response_started = True
    try:
        pending = conn.send_response(response.status_code, response.reason, out_headers, close=down.must_close)
        while True:
            event = codec.next_event()
            if event is NEED_DATA:
                if pending:
                    await down.transport.send_all(pending)
                    pending = b""
                codec.receive_data(await upstream.transport.recv())
                down.activity = time.monotonic()
                continue
            if type(event) is Data:
                log.bytes_sent += len(event.data)
                pending += conn.send_data(event.data)
                if len(pending) >= BODY_CHUNK_BYTES:
                    await down.transport.send_all(pending)
                    pending = b""
            elif event is END_OF_MESSAGE:
                pending += conn.send_end()
                await down.transport.send_all(pending)
                clean = True
                break
            else:
                raise ProtocolError("upstream closed in the middle of the body", 502)
    except ProtocolError:
        # The upstream broke mid-body (truncated or garbage): the client must not see it as complete.
        log.flags = "UPE"
        log.details = "upstream_reset_after_response_started"
        down.must_close = True
        worker.pools.discard(upstream)
        raise ClientGone() from None
    except (TransportClosed, trio.ClosedResourceError):
        down.must_close = True
        worker.pools.discard(upstream)
        raise ClientGone() from None
    except BaseException:
        worker.pools.discard(upstream)
        raise
    worker.pools.release(upstream, clean and ex.body.complete, ex.cluster_rt.cluster.pool.max_requests_per_connection)
    return not down.must_close


def _sni_for(cluster, host: bytes) -> str | None:
    """The SNI of TLS origination: DestinationRule tls.sni, else the Host sent upstream (Envoy's auto SNI,
    after any authority rewrite)."""
    tls = cluster.tls
    if tls is None:
        return None
    if tls.sni:
        return tls.sni
    name = host.decode("latin-1")
    return name if name.endswith("]") else name.rsplit(":", 1)[0]


# ---------------------------------------------------------------------------------------------------------
# Mirroring: fire and forget
# ---------------------------------------------------------------------------------------------------------

MIRROR_TIMEOUT_S = 10.0
_MIRROR_REPLACED = frozenset({b"host", b"content-length", b"transfer-encoding"})
MAX_MIRRORS_IN_FLIGHT = 256


def _shadow_host(host: bytes) -> bytes:
    name, sep, port = host.rpartition(b":")
    if sep and port.isdigit() and not host.endswith(b"]"):
        return name + b"-shadow:" + port
    return host + b"-shadow"


def _start_mirrors(ex: Exchange) -> None:
    worker = ex.down.worker
    rng = worker.rng
    for mirror, cluster_rt in ex.rt.mirrors:
        if cluster_rt is None or worker.mirrors_in_flight >= MAX_MIRRORS_IN_FLIGHT:
            continue
        if mirror.ppm < 1_000_000 and rng.randrange(1_000_000) >= mirror.ppm:
            continue
        host = _shadow_host(ex.host) if worker.options.shadow_host_suffix else ex.host
        # The primary's headers (same x-request-id), the body re-framed with its length.
        headers = [(b"host", host)]
        headers += [h for h in ex.upstream_headers if h[0] not in _MIRROR_REPLACED]
        body = b"".join(ex.body.buffer)
        if ex.body.present:
            headers.append((b"content-length", str(len(body)).encode()))
        worker.mirrors_in_flight += 1
        worker.root_nursery.start_soon(_send_mirror, worker, cluster_rt, ex.request.method, ex.target, host, headers, body)


async def _send_mirror(worker, cluster_rt, method: bytes, target: bytes, host: bytes, headers: list, body: bytes) -> None:
    """One mirrored request; its response is read and dropped, and nothing about it reaches the client. A task of
    its own in the worker's root nursery, so it has its own boundary: an unexpected error is logged and counted
    like a connection's, and the worker goes on."""
    upstream = None
    try:
        with trio.move_on_after(MIRROR_TIMEOUT_S):
            index = cluster_rt.balancer.choose(trio.current_time())
            if index is None:
                return
            endpoint = cluster_rt.balancer.states[index].endpoint
            cluster = cluster_rt.cluster
            key = (endpoint.address, endpoint.port) + cluster_rt.pool_key
            server_name = _sni_for(cluster, host)
            if cluster.tls is not None and not cluster.tls.sni:
                key += (server_name,)
            upstream = await worker.pools.acquire(key, cluster_rt.circuit, endpoint.address, endpoint.port, cluster.pool, worker.upstream_tls(cluster), server_name)

            codec = upstream.codec
            data = codec.send_request(method, target, headers)
            if body:
                data += codec.send_data(body)
            data += codec.send_end()
            await upstream.transport.send_all(data)
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    codec.receive_data(await upstream.transport.recv())
                elif event is END_OF_MESSAGE:
                    worker.pools.release(upstream, True, cluster.pool.max_requests_per_connection)
                    upstream = None
                    return
                elif event is CLOSED:
                    return
    except (ConnectFailure, Overflow, ProtocolError, TransportClosed, trio.ClosedResourceError, OSError):
        pass
    except Exception as exc:  # noqa: BLE001 - a mirror's boundary: it runs in the worker's root nursery
        worker.connection_failed(exc, "mirror")
    finally:
        worker.mirrors_in_flight -= 1
        if upstream is not None:
            worker.pools.discard(upstream)


# ---------------------------------------------------------------------------------------------------------
# WebSocket: the upgrade handshake is proxied, then bytes are spliced both ways
# ---------------------------------------------------------------------------------------------------------

UPGRADE_RESPONSE_HOP_BY_HOP = hdr.HOP_BY_HOP - {b"upgrade", b"connection"}


async def _forward_upgrade(ex: Exchange) -> bool:
    """One try (a handshake is not retried once sent): the upstream's 101 goes to the client and the
    connection becomes a byte pipe until either side closes; any other answer is relayed and the client
    connection closes after it."""
    down = ex.down
    log = ex.log
    worker = down.worker
    request = ex.request
    down.must_close = True  # whatever happens, this connection does not return to HTTP keep-alive
    if ex.body.present or not await _drain_request_body(down, 0):
        await _local_reply(down, request, log, 400, b"", close=True, details="upgrade_with_body")
        return False
    balancer = ex.cluster_rt.balancer
    index = balancer.choose(trio.current_time(), ex.hash_value)
    if index is None:
        await _local_reply(down, request, log, 503, BODY_NO_HEALTHY_UPSTREAM, flags="UH", details="no_healthy_upstream", close=True)
        return False
    endpoint = balancer.states[index].endpoint
    log.upstream_host = balancer.states[index].address_text
    log.attempts = 1
    balancer.on_start(index)
    verdict = -1
    try:
        acquired = await _acquire(ex, endpoint, ex.deadline)
        if isinstance(acquired, TryResult):
            verdict = acquired.outlier_status
            return await _answer_failure(ex, acquired, False)
        upstream = acquired
        log.upstream_local = upstream.local
        headers = ex.upstream_headers + [(b"x-envoy-attempt-count", b"1"), (b"connection", b"upgrade"), (b"upgrade", ex.req.upgrade)]
        try:
            await upstream.transport.send_all(upstream.codec.send_request(request.method, ex.target, headers) + upstream.codec.send_end())
            response = await _read_response_head(down, upstream, watch_client=True, accept_switch=True)
        except _EXCHANGE_ERRORS as exc:
            worker.pools.discard(upstream)
            result = _failure(exc)
            verdict = result.outlier_status
            return await _answer_failure(ex, result, False)
        except BaseException:
            worker.pools.discard(upstream)
            raise
        verdict = response.status_code
        if response.status_code != 101:
            return await _relay_response(ex, upstream, response)
        await _splice_upgraded(ex, upstream, response)
        return False
    finally:
        if verdict >= 0:
            balancer.on_finish(index, verdict, trio.current_time())
        else:
            balancer.on_cancel(index)


async def _splice_upgraded(ex: Exchange, upstream: UpstreamConnection, response: Response) -> None:
    down = ex.down
    log = ex.log
    worker = down.worker
    # `server` as for any response (hdr.downstream_response_headers): ours replaces the upstream's unless the
    # gateway was told to pass the upstream's through (--server-header "").
    server = worker.server_header
    headers = [(n, v) for n, v in response.headers if n not in UPGRADE_RESPONSE_HOP_BY_HOP and not (server and n == b"server")]
    if server:
        headers.append((b"server", server))
    log.status = 101
    log.details = "via_upstream"
    down.response_started = True
    down.state = STATE_SPLICED  # the splice's own idle timeout governs from here
    try:
        # The 101, then whatever the upstream sent behind it, go to the client in one send; what the client
        # sent behind its handshake opens the upstream direction of the splice (tcp_proxy's, with its idle
        # watchdog and half-close).
        await down.transport.send_all(down.conn.send_switching(headers) + upstream.codec.take_switched_data())
        splice = await splice_transports(down.transport, upstream.transport, worker.options.idle_timeout_s, initial=down.conn.take_switched_data())
        log.bytes_received += splice.bytes_up
        log.bytes_sent += splice.bytes_down
    except (ProtocolError, TransportClosed, trio.ClosedResourceError):
        pass
    finally:
        worker.pools.discard(upstream)
