# The HTTP/1.1 reverse proxy of one downstream connection: h11 on both sides, bodies streamed both ways.
#
# Rules (order of what happens to a request):
#   1. Read the request head under the header timeout (408 when it runs out mid-head; a silent close
#      when the keep-alive connection was idle). h11 rejects malformed input → its status hint (400, 431;
#      414 when the request line alone is too long). Header names with "_" → 400 (Envoy's edge default).
#      HTTP/1.0 → 426 when the table says Istio's default (PILOT_HTTP10 unset) applies.
#   2. Normalise the path (RFC 3986 dot segments, as Envoy's normalize_path), take the host from the
#      absolute-form target or Host, look up listener → filter chain → virtual host → route (a miss is 404 NR).
#   3. Route-level behaviour: httpsRedirect (301), CORS preflight, fault delay/abort, redirect, direct
#      response. Otherwise forward.
#   4. Forward: pick the weighted destination once per request, then per try pick an endpoint (avoiding
#      endpoints already tried), take a pooled connection or connect, send the head (one send with a small
#      body), stream the body with backpressure, read the response head. Retry per the route's policy (or
#      Istio's default) while nothing was sent to the client and the body can be replayed.
#   5. Send the response head in one send_all, stream the body; an upstream that dies mid-body closes the
#      client connection (never a truncated body presented as complete).
# - Local replies carry Envoy's bodies and response flags (NR, UH, UF, URX, UT, UO, UPE, FI, NC, DC).
# - The client going away cancels the upstream exchange at once; that upstream connection is discarded.
# - Bytes h11 rejected never reach a backend: the upstream request is built from h11's parsed events only.
from __future__ import annotations

import math
import socket
import time
from typing import TYPE_CHECKING

import h11
import trio

from edge.table import ACTION_DIRECT, ACTION_REDIRECT, Route
from workers import headers as hdr
from workers.netio import SocketTransport, Transport, TransportClosed
from workers.paths import normalize_path, split_target
from workers.upstream import ConnectFailure, UpstreamConnection

if TYPE_CHECKING:
    from workers.main import Worker
    from workers.tableview import Compiled, RouteRuntime

BODY_CHUNK_BYTES = 64 * 1024
# Envoy's default per-connection buffer: a request body up to this size is kept so a retry can replay it.
RETRY_BUFFER_BYTES = 1024 * 1024
RETRY_BACKOFF_MAX_FACTOR = 10

# Envoy's local reply bodies (router filter / response code details).
BODY_NO_HEALTHY_UPSTREAM = b"no healthy upstream"
BODY_CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
BODY_RESET = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
BODY_OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
BODY_TIMEOUT = b"upstream request timeout"
BODY_FAULT_ABORT = b"fault filter abort"
BODY_PROTOCOL_ERROR = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"

STATUS_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 301: b"Moved Permanently", 302: b"Found",
    303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 408: b"Request Timeout", 413: b"Payload Too Large",
    414: b"URI Too Long", 426: b"Upgrade Required", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class ClientGone(Exception):
    """The downstream client closed or reset while its request was in flight."""


class RequestInfo:
    """The request as the router and the log see it."""

    __slots__ = ("method", "path", "query", "authority", "scheme", "headers", "method_bytes", "target", "path_bytes", "host", "http_version", "original_path", "port")

    def __init__(self) -> None:
        self.original_path: bytes | None = None


class RequestLog:
    """One access-log / stats record, filled as the request goes."""

    __slots__ = (
        "start", "method", "path", "protocol", "status", "flags", "details", "bytes_received", "bytes_sent", "upstream_host",
        "upstream_cluster", "route_name", "authority", "x_forwarded_for", "user_agent", "request_id", "service_time_ms",
        "downstream_local", "downstream_remote", "sni", "listener", "attempts", "original_path", "duration_ms",
    )

    def __init__(self, start: float):
        self.start = start
        self.method = "-"
        self.path = "-"
        self.protocol = "HTTP/1.1"
        self.status = 0
        self.flags = "-"
        self.details = "-"
        self.bytes_received = 0
        self.bytes_sent = 0
        self.upstream_host = "-"
        self.upstream_cluster = "-"
        self.route_name = "-"
        self.authority = "-"
        self.x_forwarded_for = "-"
        self.user_agent = "-"
        self.request_id = "-"
        self.service_time_ms = -1
        self.downstream_local = "-"
        self.downstream_remote = "-"
        self.sni = "-"
        self.listener = "-"
        self.attempts = 0
        self.original_path = "-"
        self.duration_ms = 0


class Downstream:
    """One client connection: its transport, h11 state and where it came from."""

    __slots__ = ("worker", "transport", "conn", "peer_ip", "peer", "local", "scheme", "listener_key", "chain_index", "sni", "must_close", "head_bytes")

    def __init__(self, worker: "Worker", transport: Transport, peer: tuple, local: tuple, scheme: str, listener_key: str, chain_index: int = -1, sni: str = ""):
        self.worker = worker
        self.transport = transport
        self.peer = peer
        self.peer_ip = str(peer[0]).encode() if peer else b"127.0.0.1"
        self.local = local
        self.scheme = scheme
        self.listener_key = listener_key
        self.chain_index = chain_index
        self.sni = sni
        self.must_close = False
        self.head_bytes = 0
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=worker.max_header_bytes)


# ---------------------------------------------------------------------------------------------------------
# Connection loop
# ---------------------------------------------------------------------------------------------------------


async def serve_http_connection(down: Downstream) -> None:
    worker = down.worker
    conn = down.conn
    transport = down.transport
    try:
        while True:
            event = await _read_request_head(down)
            if event is None:
                return
            keep_alive = await _handle_request(down, event)
            if not keep_alive or down.must_close or worker.draining:
                return
            if conn.their_state is h11.SEND_BODY and not await _drain_request_body(down, RETRY_BUFFER_BYTES):
                return  # a body we did not forward, or the EndOfMessage of a body-less request, is left
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
        return
    finally:
        await transport.aclose()


async def _read_request_head(down: Downstream) -> h11.Request | None:
    """The next request head; None when the connection should just close (idle, EOF, or answered error)."""
    conn = down.conn
    worker = down.worker
    opts = worker.options
    header_deadline = math.inf
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            await _reject_malformed(down, exc)
            return None
        if event is h11.NEED_DATA:
            buffered = bool(conn.trailing_data[0])
            if buffered and header_deadline == math.inf:
                header_deadline = trio.current_time() + opts.request_headers_timeout_s
            data = await _recv_for_head(down, buffered, header_deadline)
            if data is None:
                if buffered:
                    log = RequestLog(time.time())
                    log.details = "request_header_timeout"
                    await _send_raw_reply(down, log, 408, b"")
                return None
            down.head_bytes += len(data)
            conn.receive_data(data)
            continue
        if type(event) is h11.Request:
            return event
        # ConnectionClosed, PAUSED or anything unexpected: end quietly.
        return None


async def _recv_for_head(down: Downstream, buffered: bool, header_deadline: float) -> bytes | None:
    """Bytes for the request head, or None on timeout. An idle connection waits under the idle timeout and
    is woken by drain."""
    worker = down.worker
    transport = down.transport
    if buffered:
        with trio.move_on_at(header_deadline):
            return await transport.recv()
        return None
    data = transport.recv_nowait()
    if data is not None:
        return data
    timeout = worker.options.idle_timeout_s
    with trio.move_on_after(timeout if timeout > 0 else math.inf) as scope:
        worker.idle_scopes.add(scope)
        try:
            if worker.draining:
                return b""
            return await transport.recv()
        finally:
            worker.idle_scopes.discard(scope)
    return b""  # idle timeout or drain: behave as EOF, the loop closes the connection


async def _reject_malformed(down: Downstream, exc: h11.RemoteProtocolError) -> None:
    status = exc.error_status_hint or 400
    max_head = down.worker.max_header_bytes
    if status == 431:
        data, _ = down.conn.trailing_data
        if b"\n" not in bytes(data[: max_head + 2]):
            status = 414  # the request line alone is over the limit
    log = RequestLog(time.time())
    log.flags = "-"
    log.details = "codec_error"
    # h11 is in an error state; answer with a fresh serializer.
    await _send_raw_reply(down, log, status, b"", close=True)


# ---------------------------------------------------------------------------------------------------------
# One request
# ---------------------------------------------------------------------------------------------------------


async def _handle_request(down: Downstream, request: h11.Request) -> bool:
    worker = down.worker
    log = RequestLog(time.time())
    log.downstream_remote = f"{down.peer[0]}:{down.peer[1]}" if down.peer else "-"
    log.downstream_local = f"{down.local[0]}:{down.local[1]}" if down.local else "-"
    log.listener = down.listener_key
    log.sni = down.sni or "-"
    try:
        return await _handle_request_logged(down, request, log)
    finally:
        log.duration_ms = int((time.time() - log.start) * 1000)
        worker.finish_request(log)


async def _handle_request_logged(down: Downstream, request: h11.Request, log: RequestLog) -> bool:
    worker = down.worker
    compiled = worker.view.current()
    req = RequestInfo()
    req.method_bytes = request.method
    req.method = request.method.decode("ascii", "replace")
    req.http_version = request.http_version
    req.headers = request.headers
    req.scheme = down.scheme
    req.target = request.target
    log.method = req.method
    log.protocol = "HTTP/1.0" if request.http_version == b"1.0" else "HTTP/1.1"
    authority_from_target, raw_path, raw_query = split_target(request.target)
    host_header = None
    head_size = len(request.target)
    for name, value in request.headers:
        head_size += len(name) + len(value) + 4
        if name == b"host":
            host_header = value
        elif name == b"user-agent":
            log.user_agent = value.decode("latin-1")
        elif name == b"x-request-id":
            log.request_id = value.decode("latin-1")
        elif name == b"x-forwarded-for":
            log.x_forwarded_for = value.decode("latin-1")
    authority = authority_from_target or host_header or b""
    req.authority = authority.decode("latin-1")
    log.authority = req.authority or "-"
    log.path = request.target.decode("latin-1")

    if compiled is None:
        await _local_reply(down, request, log, 503, BODY_NO_HEALTHY_UPSTREAM, flags="UH", details="no_table")
        return False
    opts = compiled.options
    # h11 bounds only a head that arrives in pieces; one that arrives whole is measured here.
    if head_size > worker.max_header_bytes:
        status = 414 if len(request.target) > worker.max_header_bytes else 431
        await _local_reply(down, request, log, status, b"", close=True, flags="-", details="http1.headers_too_large")
        return False
    if request.http_version == b"1.0" and not opts.accept_http10:

        await _local_reply(down, request, log, 426, b"", close=True, flags="-", details="http1.0_not_allowed")
        return False
    if hdr.has_conflicting_framing(request.headers):
        await _local_reply(down, request, log, 400, b"", close=True, flags="-", details="http1.content_length_and_chunked_not_allowed")
        return False
    if opts.reject_underscore_headers and hdr.has_underscore_name(request.headers) is not None:
        await _local_reply(down, request, log, 400, b"", close=True, flags="-", details="http1.invalid_characters")
        return False
    path = normalize_path(raw_path)
    if path is None:
        await _local_reply(down, request, log, 400, b"", close=True, flags="-", details="path_normalization_failed")
        return False
    if path != raw_path:
        req.original_path = raw_path
    req.path_bytes = path
    req.path = path.decode("latin-1")
    req.query = raw_query.decode("latin-1")
    host = req.authority
    colon = host.rfind(":")
    if colon > 0 and host[colon + 1 :].isdigit() and not host.endswith("]"):
        req.port = int(host[colon + 1 :])
        host = host[:colon]
    else:
        req.port = 0
    req.host = host.lower()

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
    if vhost.require_tls and down.scheme == "http":
        location = b"https://" + req.host.encode("latin-1") + request.target if not authority_from_target else b"https://" + req.host.encode("latin-1") + raw_path + (b"?" + raw_query if raw_query else b"")
        await _local_reply(down, request, log, 301, b"", extra=[(b"location", location)], flags="-", details="via_upstream")
        return True
    route = router.match(vhost, req)
    if route is None:
        await _local_reply(down, request, log, 404, b"", flags="NR", details="route_not_found")
        return True
    rt = compiled.route_runtime(route)
    log.route_name = route.name or "-"

    if route.action == ACTION_REDIRECT:
        await _local_reply(down, request, log, route.redirect.code, b"", extra=[(b"location", _redirect_location(route, req, down))], response_ops=rt.response_ops, flags="-", details="redirect")
        return True
    if route.action == ACTION_DIRECT:
        direct = route.direct
        await _local_reply(down, request, log, direct.status, direct.body, response_ops=rt.response_ops, flags="-", details="direct_response", content_type=None)
        return True
    return await _forward(down, request, req, compiled, rt, log)


def _redirect_location(route: Route, req: RequestInfo, down: Downstream) -> bytes:
    r = route.redirect
    scheme = r.scheme or down.scheme
    host = r.authority or req.host
    port = 0
    if r.port:
        port = r.port
    elif r.port_from_request:
        port = req.port or down.local[1] if down.local else 0
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


def _http_date() -> bytes:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()


async def _local_reply(
    down: Downstream,
    request: h11.Request | None,
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
    if down.worker.draining or close:
        headers.append((b"connection", b"close"))
        down.must_close = True
    # A request body we did not read: small ones are drained so the connection stays usable.
    if request is not None and conn.their_state is h11.SEND_BODY and not down.must_close:
        if not await _drain_request_body(down, limit=RETRY_BUFFER_BYTES):
            headers.append((b"connection", b"close"))
            down.must_close = True
    try:
        is_head = request is not None and request.method == b"HEAD"
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=STATUS_REASONS.get(status, b"")))
        if body and not is_head:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        down.must_close = True
        return
    log.bytes_sent += len(body)
    await down.transport.send_all(data)


async def _send_raw_reply(down: Downstream, log: RequestLog, status: int, body: bytes, close: bool = True) -> None:
    """A reply when h11's server state is unusable (after a protocol error)."""
    log.status = status
    reason = STATUS_REASONS.get(status, b"")
    head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ndate: %s\r\n" % (status, reason, len(body), _http_date())
    if down.worker.server_header:
        head += b"server: " + down.worker.server_header + b"\r\n"
    head += b"connection: close\r\n\r\n"
    down.must_close = True
    try:
        await down.transport.send_all(head + body)
    finally:
        down.worker.finish_request(log)


async def _drain_request_body(down: Downstream, limit: int) -> bool:
    """Read and drop the rest of the request body; False if it is longer than `limit` or broken."""
    conn = down.conn
    seen = 0
    if conn.client_is_waiting_for_100_continue:
        return False  # the client has not sent its body and will not without a 100: close instead
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return False
        if event is h11.NEED_DATA:
            data = await down.transport.recv()
            conn.receive_data(data)
            continue
        t = type(event)
        if t is h11.Data:
            seen += len(event.data)
            if seen > limit:
                return False
        elif t is h11.EndOfMessage:
            return True
        else:
            return False


# ---------------------------------------------------------------------------------------------------------
# Forwarding
# ---------------------------------------------------------------------------------------------------------



class Outcome:
    """Why a try ended without a response going downstream."""

    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"
    TIMEOUT = "timeout"
    PER_TRY_TIMEOUT = "per_try_timeout"
    PROTOCOL_ERROR = "protocol_error"
    STATUS = "status"  # a response came; `sent` says whether it went downstream


class TryResult:
    __slots__ = ("kind", "status", "reason", "upstream", "response", "sent")

    def __init__(self, kind: str, status: int = 0, reason: str = "", upstream: UpstreamConnection | None = None, response: h11.Response | None = None):
        self.kind = kind
        self.status = status
        self.reason = reason
        self.upstream = upstream  # held only for a retriable response that was not sent
        self.response = response
        self.sent = False

    @property
    def outlier_status(self) -> int:
        """What outlier detection counts: the status, or 0 for a failure with no response."""
        if self.kind == Outcome.STATUS:
            return self.status
        if self.kind == Outcome.PROTOCOL_ERROR:
            return 502
        return 0


class BodyState:
    """The client's request body across tries."""

    __slots__ = ("present", "chunked", "complete", "buffer", "replayable", "consumed", "bytes", "client_failed", "upstream_failed")

    def __init__(self, request: h11.Request):
        present = False
        chunked = False
        for name, value in request.headers:
            if name == b"content-length":
                present = value.strip() not in (b"0", b"")
            elif name == b"transfer-encoding":
                present = chunked = True
        self.present = present
        self.chunked = chunked
        self.complete = not present
        self.buffer: list[bytes] = []
        self.replayable = True
        self.consumed = False
        self.bytes = 0
        self.client_failed = False
        self.upstream_failed = False

    @property
    def can_replay(self) -> bool:
        return not self.consumed or (self.complete and self.replayable)


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
    if kind == Outcome.RESET:
        return "reset" in retry_on or "5xx" in retry_on
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
    return req.authority.encode("latin-1")


def _upstream_target(route: Route, rt: "RouteRuntime", req: RequestInfo) -> tuple[bytes, bytes | None]:
    """The request target sent upstream, and the original path when it was rewritten."""
    path = req.path_bytes
    original = req.original_path
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
            original = req.path_bytes
            path = new_path.encode("latin-1")
    if req.query:
        return path + b"?" + req.query.encode("latin-1"), original
    return path, original


async def _forward(down: Downstream, request: h11.Request, req: RequestInfo, compiled: "Compiled", rt: "RouteRuntime", log: RequestLog) -> bool:
    worker = down.worker
    route = rt.route
    if not rt.destinations:
        await _local_reply(down, request, log, 503, b"", flags="NC", details="cluster_not_found")
        return not down.must_close
    dest = rt.destinations[_pick_destination(rt, worker.rng)]
    cluster_rt = dest.cluster_runtime
    log.upstream_cluster = dest.wc.cluster or "-"
    if cluster_rt is None:
        await _local_reply(down, request, log, 503, b"", flags="NC", details="cluster_not_found")
        return not down.must_close
    cluster = cluster_rt.cluster
    balancer = cluster_rt.balancer
    policy = route.retry if route.retry is not None else compiled.table.default_retry
    max_tries = 1 + (policy.attempts if policy is not None else 0)
    body = BodyState(request)
    host = _upstream_host(req, route, dest)
    target, original_path = _upstream_target(route, rt, req)
    deadline = trio.current_time() + route.timeout_s if route.timeout_s > 0 else math.inf
    per_try = policy.per_try_timeout_s if policy is not None else 0.0
    tried: list[int] = []
    result: TryResult | None = None
    attempt = 0
    while True:
        attempt += 1
        log.attempts = attempt
        index = balancer.choose(trio.current_time(), None, tried if (policy is None or policy.ignore_previous_hosts) else ())
        if index is None:
            await _local_reply(down, request, log, 503, BODY_NO_HEALTHY_UPSTREAM, flags="UH", details="no_healthy_upstream", close=not body.can_replay)
            return not down.must_close
        tried.append(index)
        endpoint = balancer.states[index].endpoint
        log.upstream_host = f"{endpoint.address}:{endpoint.port}"
        headers = hdr.upstream_request_headers(
            request.headers,
            host=host,
            peer_ip=down.peer_ip,
            scheme=down.scheme.encode(),
            attempt=attempt,
            timeout_ms=rt.timeout_ms,
            original_path=original_path,
            chunked=body.chunked,
            generate_request_id=compiled.options.generate_request_id,
            route_ops=rt.request_ops,
            destination_ops=dest.request_ops,
        )
        try_deadline = min(deadline, trio.current_time() + per_try) if per_try > 0 else deadline
        balancer.on_start(index)
        verdict = -1  # -1: the client left; no verdict on the endpoint
        try:
            result = await _try_once(down, request, rt, dest, headers, target, body, (endpoint.address, endpoint.port) + cluster_rt.pool_key, endpoint, cluster, try_deadline, deadline, policy, log)
            verdict = result.outlier_status
        except ClientGone:
            log.flags = "DC"
            log.details = "downstream_remote_disconnect"
            down.must_close = True
            return False
        finally:
            if verdict >= 0:
                balancer.on_finish(index, verdict, trio.current_time())
            else:
                balancer.on_cancel(index)
        if result.sent:
            return not down.must_close
        if attempt < max_tries and _retriable(result, policy, body) and trio.current_time() < deadline:
            if result.upstream is not None:
                worker.pools.discard(result.upstream)
                result.upstream = None
            await trio.sleep(_backoff(policy, attempt, worker.rng))
            continue
        break

    # Out of tries: a held response passes through; a failure gets Envoy's local reply.
    if result.upstream is not None and result.response is not None:
        return await _relay_response(down, rt, dest, result.upstream, result.response, body, log)
    close = not body.can_replay or not body.complete
    retried = attempt > 1
    kind = result.kind
    if kind in (Outcome.TIMEOUT, Outcome.PER_TRY_TIMEOUT):
        await _local_reply(down, request, log, 504, BODY_TIMEOUT, flags="UT", details="upstream_response_timeout", close=close)
    elif kind == Outcome.PROTOCOL_ERROR:
        await _local_reply(down, request, log, 502, BODY_PROTOCOL_ERROR, flags="UPE", details="upstream_reset_before_response_started{protocol_error}", close=close)
    elif kind == Outcome.CONNECT_FAILURE:
        await _local_reply(down, request, log, 503, BODY_CONNECT_FAILURE, flags="URX" if retried else "UF", details="upstream_reset_before_response_started{connection_failure}", close=close)
    else:
        await _local_reply(down, request, log, 503, BODY_RESET, flags="URX" if retried else "UC", details="upstream_reset_before_response_started{connection_termination}", close=close)
    return not down.must_close


async def _connect(down: Downstream, request: h11.Request, pool_key: tuple, endpoint, cluster, try_deadline: float, deadline: float) -> UpstreamConnection | TryResult:
    worker = down.worker
    server_name = _sni_for(cluster, request)
    if cluster.tls is not None and not cluster.tls.sni:
        pool_key = pool_key + (server_name,)  # auto SNI: a connection verified for one Host carries only that Host
    upstream = worker.pools.take_idle(pool_key)
    if upstream is not None:
        return upstream
    try:
        with trio.move_on_at(try_deadline):
            return await worker.pools.connect(pool_key, endpoint.address, endpoint.port, cluster.pool.connect_timeout_s, worker.upstream_tls(cluster), server_name)
    except ConnectFailure as exc:
        return TryResult(Outcome.CONNECT_FAILURE, reason=exc.reason)
    return TryResult(Outcome.TIMEOUT if try_deadline >= deadline else Outcome.PER_TRY_TIMEOUT)


async def _try_once(
    down: Downstream,
    request: h11.Request,
    rt: "RouteRuntime",
    dest,
    headers: list,
    target: bytes,
    body: BodyState,
    pool_key: tuple,
    endpoint,
    cluster,
    try_deadline: float,
    deadline: float,
    policy,
    log: RequestLog,
) -> TryResult:
    connected = await _connect(down, request, pool_key, endpoint, cluster, try_deadline, deadline)
    if isinstance(connected, TryResult):
        return connected
    upstream = connected
    pools = down.worker.pools
    try:
        head = upstream.h11.send(h11.Request(method=request.method, target=target, headers=headers))
    except h11.LocalProtocolError as exc:
        pools.discard(upstream)
        return TryResult(Outcome.PROTOCOL_ERROR, reason=str(exc))
    sent_at = trio.current_time()
    if body.complete:
        return await _exchange_buffered(down, rt, dest, upstream, head, body, try_deadline, deadline, policy, log, sent_at)
    return await _exchange_streaming(down, rt, dest, upstream, head, body, try_deadline, deadline, policy, log, sent_at)


def _failure(exc: BaseException, upstream: UpstreamConnection) -> TryResult:
    if isinstance(exc, _UpstreamEOF) or isinstance(exc, (TransportClosed, trio.ClosedResourceError)):
        return TryResult(Outcome.RESET, reason="connection termination")
    return TryResult(Outcome.PROTOCOL_ERROR, reason=str(exc))


_EXCHANGE_ERRORS = (h11.RemoteProtocolError, h11.LocalProtocolError, TransportClosed, trio.ClosedResourceError)


async def _exchange_buffered(down, rt, dest, upstream, head, body, try_deadline, deadline, policy, log, sent_at) -> TryResult:
    """No body, or a body already read whole (a retry): one send, then the response."""
    uconn = upstream.h11
    pools = down.worker.pools
    data = head
    for chunk in body.buffer:
        data += uconn.send(h11.Data(data=chunk))
    data += uconn.send(h11.EndOfMessage())
    response = None
    try:
        with trio.move_on_at(try_deadline):
            await upstream.transport.send_all(data)
            response = await _read_response_head(down, upstream, watch_client=True)
    except _EXCHANGE_ERRORS as exc:
        pools.discard(upstream)
        return _failure(exc, upstream)
    except BaseException:
        pools.discard(upstream)
        raise
    if response is None:
        pools.discard(upstream)
        return TryResult(Outcome.TIMEOUT if try_deadline >= deadline else Outcome.PER_TRY_TIMEOUT)
    log.service_time_ms = int((trio.current_time() - sent_at) * 1000)
    if _status_retriable(response.status_code, policy):
        return TryResult(Outcome.STATUS, status=response.status_code, upstream=upstream, response=response)
    result = TryResult(Outcome.STATUS, status=response.status_code)
    result.sent = True
    await _relay_response(down, rt, dest, upstream, response, body, log)
    return result


async def _exchange_streaming(down, rt, dest, upstream, head, body, try_deadline, deadline, policy, log, sent_at) -> TryResult:
    """A body still arriving from the client: upload and download run at once (full duplex), so an upstream
    that answers while it reads (an echo) never deadlocks against us."""
    pools = down.worker.pools
    result: TryResult | None = None
    client_gone = False
    try:
        await upstream.transport.send_all(head)
    except _EXCHANGE_ERRORS as exc:
        pools.discard(upstream)
        return _failure(exc, upstream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_upload_body, down, upstream, body, nursery.cancel_scope)
        response = None
        try:
            with trio.move_on_at(try_deadline):
                response = await _read_response_head(down, upstream, watch_client=False)
        except _EXCHANGE_ERRORS as exc:
            result = _failure(exc, upstream)
        if result is None and response is None:
            result = TryResult(Outcome.TIMEOUT if try_deadline >= deadline else Outcome.PER_TRY_TIMEOUT)
        if result is None:
            log.service_time_ms = int((trio.current_time() - sent_at) * 1000)
            if _status_retriable(response.status_code, policy) and body.complete and body.replayable:
                result = TryResult(Outcome.STATUS, status=response.status_code, upstream=upstream, response=response)
            else:
                result = TryResult(Outcome.STATUS, status=response.status_code)
                result.sent = True
                try:
                    await _relay_response(down, rt, dest, upstream, response, body, log)
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
        raise ClientGone()
    if result is None:  # the upload failed and cancelled the exchange
        pools.discard(upstream)
        return TryResult(Outcome.RESET, reason="connection termination")
    return result


class _UpstreamEOF(h11.RemoteProtocolError):
    pass


async def _read_response_head(down: Downstream, upstream: UpstreamConnection, watch_client: bool) -> h11.Response:
    """The upstream's final response head (1xx skipped). Raises h11.RemoteProtocolError on garbage,
    _UpstreamEOF when the connection closed before a head, ClientGone when the client left meanwhile."""
    uconn = upstream.h11
    transport = upstream.transport
    while True:
        event = uconn.next_event()
        if event is h11.NEED_DATA:
            data = transport.recv_nowait()
            if data is None:
                data = await (_recv_watching_client(down, transport) if watch_client else transport.recv())
            if not data and not uconn.trailing_data[0]:
                raise _UpstreamEOF("upstream closed before sending a response")
            uconn.receive_data(data)
            continue
        t = type(event)
        if t is h11.Response:
            if hdr.has_conflicting_framing(event.headers):
                raise h11.RemoteProtocolError("upstream response with both Content-Length and Transfer-Encoding")
            return event
        if t is h11.InformationalResponse:

            continue
        if t is h11.ConnectionClosed:
            raise _UpstreamEOF("upstream closed before sending a response")
        raise h11.RemoteProtocolError(f"unexpected upstream event {t.__name__}")


async def _recv_watching_client(down: Downstream, upstream_transport: Transport) -> bytes:
    """Upstream bytes, while the client socket is watched for a disconnect (which raises ClientGone)."""
    client_sock = _raw_socket(down.transport)
    if client_sock is None:
        return await upstream_transport.recv()
    gone = False
    data = b""
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:

        async def watch_client() -> None:
            nonlocal gone
            await trio.lowlevel.wait_readable(client_sock)
            try:
                peek = client_sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError:
                peek = b""
            if not peek:
                gone = True
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch_client)
        try:
            data = await upstream_transport.recv()
        except (TransportClosed, trio.ClosedResourceError) as exc:
            error = exc
        nursery.cancel_scope.cancel()
    if gone:
        raise ClientGone()
    if error is not None:
        raise error
    return data


def _raw_socket(transport: Transport) -> socket.socket | None:
    if isinstance(transport, SocketTransport):
        return transport.sock
    inner = getattr(getattr(transport, "stream", None), "transport_stream", None)
    return getattr(inner, "socket", None)


async def _upload_body(down: Downstream, upstream: UpstreamConnection, body: BodyState, exchange: trio.CancelScope) -> None:
    """Client body → upstream with backpressure, keeping a copy for replay while it is small enough.
    Failures are recorded on `body` and cancel the exchange; nothing is raised into the nursery."""
    conn = down.conn
    uconn = upstream.h11
    try:
        if conn.client_is_waiting_for_100_continue:
            # Envoy answers 100-continue itself and does not forward Expect.
            await down.transport.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await down.transport.recv()
                conn.receive_data(data)
                continue
            t = type(event)
            if t is h11.Data:
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
                    await upstream.transport.send_all(uconn.send(h11.Data(data=chunk)))
                except (TransportClosed, trio.ClosedResourceError, h11.LocalProtocolError):
                    body.upstream_failed = True
                    return  # the upstream stopped reading; its response (if any) decides
            elif t is h11.EndOfMessage:
                body.complete = True
                try:
                    await upstream.transport.send_all(uconn.send(h11.EndOfMessage()))
                except (TransportClosed, trio.ClosedResourceError, h11.LocalProtocolError):
                    body.upstream_failed = True
                return
            else:
                body.client_failed = True
                exchange.cancel()
                return
    except (h11.RemoteProtocolError, TransportClosed, trio.ClosedResourceError):
        # The client sent a broken body or went away: nothing more goes upstream.
        body.client_failed = True
        down.must_close = True
        exchange.cancel()


async def _relay_response(down: Downstream, rt, dest, upstream: UpstreamConnection, response: h11.Response, body: BodyState, log: RequestLog) -> bool:
    """The upstream's response, downstream: the head with the first body bytes in one send, the rest
    streamed. Returns keep-alive. Raises ClientGone when either side broke mid-body."""
    worker = down.worker
    conn = down.conn
    uconn = upstream.h11
    log.status = response.status_code
    log.flags = "-"
    log.details = "via_upstream"
    out_headers = hdr.downstream_response_headers(
        response.headers,
        server=worker.server_header,
        service_time_ms=log.service_time_ms if log.service_time_ms >= 0 else None,
        route_ops=rt.response_ops if rt is not None else None,
        destination_ops=dest.response_ops if dest is not None else None,
    )
    if worker.draining or down.must_close:
        out_headers.append((b"connection", b"close"))
        down.must_close = True
    clean = False
    try:
        pending = conn.send(h11.Response(status_code=response.status_code, headers=out_headers, reason=response.reason))
        while True:
            event = uconn.next_event()
            if event is h11.NEED_DATA:
                if pending:
                    await down.transport.send_all(pending)
                    pending = b""
                uconn.receive_data(await upstream.transport.recv())
                continue
            t = type(event)
            if t is h11.Data:
                log.bytes_sent += len(event.data)
                pending += conn.send(h11.Data(data=event.data))
                if len(pending) >= BODY_CHUNK_BYTES:
                    await down.transport.send_all(pending)
                    pending = b""
            elif t is h11.EndOfMessage:
                pending += conn.send(h11.EndOfMessage())
                await down.transport.send_all(pending)
                clean = True
                break
            else:
                break
    except (h11.RemoteProtocolError, h11.LocalProtocolError):
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
    cluster_rt = dest.cluster_runtime if dest is not None else None
    worker.pools.release(upstream, clean and body.complete, cluster_rt.cluster.pool.max_requests_per_connection if cluster_rt is not None else 0)
    return not down.must_close


def _sni_for(cluster, request: h11.Request) -> str | None:
    tls = cluster.tls
    if tls is None:
        return None
    if tls.sni:
        return tls.sni
    for name, value in request.headers:
        if name == b"host":
            host = value.decode("latin-1")
            return host if host.endswith("]") else host.rsplit(":", 1)[0]
    return None
