# The HTTP/1.1 connection loop of the proxy: read a request head, decide (workers/http/request.py), answer locally
# (workers/http/respond.py) or forward (workers/http/forward.py), then the next request on the same connection.
#
# Rules (what happens to a connection):
#   1. Read the request head under the header timeout (408 when it runs out mid-head; a silent close when the
#      keep-alive connection was idle). The codec frames and checks it (workers/http/framing.py) and refuses
#      malformed input with its status (400, 414, 431, 501, 505; flag DPE), written without the codec.
#   2. The request's decisions are pure values (RequestInfo, a route runtime, Redirect, Answer, Forward,
#      LocalReply); this module only carries them out. A fault delay is slept here (flag DI).
#   3. After a response: the connection closes when the request said so, the reply closed it, the worker is
#      draining, or an unread body could not be drained (at most RETRY_BUFFER_BYTES within the header timeout).
# - Between requests the connection is IDLE for the registry's sweeps (idle timeout, drain, parking). It is parked
#   (workers/parking.py) at once when many connections wait idle in their tasks (ConnectionRegistry.should_park) and
#   nothing is buffered, or when the idle sweep cancels its wait with park_requested set: its task ends,
#   serve_http_connection returns True, and the parker hands it to a fresh task (workers/listeners.resume_connection)
#   when its socket is readable or closed. If the sweep's cancel lands just as bytes arrived (the wait had already
#   succeeded), those bytes go to the codec and a fresh task takes the connection at once, with no checkpoint in
#   between: the pending cancel never reaches a request. A request in flight
#   whose bytes stop moving for the stream idle timeout is cancelled and answered 408 (body still arriving) or
#   504 (SI) when no response has started.
# - serve_http_connection is the connection's boundary: an unexpected error is logged and counted
#   (edge_connection_errors_total), answered 500 when no response has started, and ends this connection only.
#   Nothing else in the HTTP path catches Exception but a mirror's own task, which has its own boundary.
from __future__ import annotations

import math
import socket
import sys
import time

import trio

from workers.context import STATE_BUSY, STATE_IDLE, WorkerContext
from workers.http.access import check_access
from workers.http.codec import NEED_DATA, IncompleteMessage, ProtocolError, Request
from workers.http.downstream import Http1Downstream
from workers.http.forward import forward
from workers.http.log import ClientGone, RequestLog, ResponseAborted
from workers.http.replies import BODY_STREAM_TIMEOUT, LOCAL_REPLIES, LocalReply, closing_reply, codec_error_reply, stream_timeout_status
from workers.http.request import Answer, Redirect, decide_action, find_route, read_request
from workers.http.respond import local_reply, send_before_close, send_closing_reply
from workers.http.retry import RETRY_BUFFER_BYTES
from workers.netio import SocketTransport
from workers.http2.connection import serve_h2
from workers.http2.limits import PREFACE_MATCH, PREFACE_NO, preface_verdict

# How a connection's request handling may end without an answer from us: the client or its transport went away,
# or a response broke after it started. The connection just closes.
_QUIET_ENDINGS = (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone, ResponseAborted)
_PARK = object()  # _read_request_head's value for "idle: park it" (workers/parking.py)
_HAND_OVER = object()  # ... for "bytes arrived as the sweep asked to park: a fresh task goes on at once"
_HTTP2 = object()  # ... for "the connection's first bytes are HTTP/2's preface" (held in down.preface)


async def serve_http(ctx: WorkerContext, sock: socket.socket, key: str) -> bool | None:
    """PROTO_HTTP listeners: plain-text HTTP/1.1 on an accepted socket; True when it was parked (still open)."""
    transport = SocketTransport(sock)
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        transport.close()
        return
    return await serve_http_connection(Http1Downstream(ctx, transport, peer, local, "http", key))


async def serve_http_connection(down: Http1Downstream) -> bool | None:
    """Serve requests until the connection closes (None) or is parked (True: open, owned by the parker)."""
    ctx = down.ctx
    conn = down.conn
    if conn is None:  # resumed after parking
        conn = down.conn = ctx.server_codec(ctx.max_header_bytes)
    registry = ctx.registry
    registry.http.add(down)
    parked = False
    try:
        with trio.CancelScope() as down.scope:
            while True:
                request = await _read_request_head(down)
                if request is None:
                    return
                if request is _PARK:
                    parked = _park(down)
                    return parked or None
                if request is _HTTP2:
                    registry.http.discard(down)
                    await serve_h2_connection(down, down.preface)
                    return
                if request is _HAND_OVER:
                    down.park_requested = False
                    registry.parked.hand_over(down)
                    parked = True
                    return True
                keep_alive = await _handle_request(down, request)
                if not keep_alive or down.must_close or ctx.draining:
                    return
                if conn.request_body_pending and not await down.drain_body(RETRY_BUFFER_BYTES, ctx.options.request_headers_timeout_s):
                    return  # a body we did not forward, or the end of a body-less request, is left
                if conn.will_close or not conn.start_next_cycle():
                    return
        if down.park_requested:  # the idle sweep cancelled the idle wait: park (or close while draining)
            parked = _park(down, down.since)
            return parked or None
        if down.stream_timed_out and not down.response_started:
            status = stream_timeout_status(conn.request_body_pending)
            await send_before_close(down, closing_reply(ctx.server_header, status, BODY_STREAM_TIMEOUT, b"text/plain"))
    except _QUIET_ENDINGS:
        return
    except Exception as exc:  # noqa: BLE001 - this connection's boundary: the failure ends this connection only
        ctx.records.connection_failed(exc, down.listener_key)
        if not down.response_started:
            await send_before_close(down, closing_reply(ctx.server_header, 500))
    finally:
        registry.http.discard(down)
        registry.upstream_waiting.discard(down)
        if not parked:
            await down.transport.aclose()


async def serve_h2_connection(down: Http1Downstream, received: bytes) -> None:
    """HTTP/2 on this connection (h2c with prior knowledge, or h2 by ALPN): each stream goes through the same
    request pipeline as an HTTP/1 request (_serve_request); `received` starts with the preface, when read."""
    await serve_h2(down, received, _serve_request)


def _park(down: Http1Downstream, since: float | None = None) -> bool:
    """Hand an idle connection to the worker's parker (False: draining, or it could not be watched: it closes).
    `since`: when it went idle, if before now (the idle sweep parks connections idle for a while)."""
    down.park_requested = False
    if down.ctx.draining:
        return False
    down.conn = None  # a fresh codec is made on resume: between requests it holds nothing
    down.transport.unwatch()  # the parker watches it now (workers/readiness.py)
    down.state = STATE_IDLE
    down.since = time.monotonic() if since is None else since
    down.fresh = True  # the resumed task reads first: the parker saw the socket readable
    if down.ctx.registry.parked.park(down):
        return True
    down.state = STATE_BUSY
    return False


async def _read_request_head(down: Http1Downstream) -> Request | object | None:
    """The next request head; None when the connection should just close (idle, EOF, or answered error); _PARK
    when it is idle and should be parked."""
    conn = down.conn
    header_deadline = math.inf
    while True:
        try:
            event = conn.next_event()
        except IncompleteMessage:
            return None  # the client closed in the middle of a head: nobody to answer
        except ProtocolError as exc:
            # The codec is in an error state; the answer is written directly.
            await send_closing_reply(down, RequestLog(time.time(), down), codec_error_reply(exc.status_hint))
            return None
        if type(event) is Request:
            return event
        if event is not NEED_DATA:
            return None  # ConnectionClosed, PAUSED or anything unexpected: end quietly
        buffered = conn.has_buffered_data
        if buffered and header_deadline == math.inf:
            header_deadline = trio.current_time() + down.ctx.options.request_headers_timeout_s
        data = await _recv_for_head(down, buffered, header_deadline)
        if data is _PARK:
            return _PARK
        if down.park_requested:
            conn.receive_data(data)
            return _HAND_OVER
        if data is None:
            if buffered:
                await send_closing_reply(down, RequestLog(time.time(), down), LOCAL_REPLIES["request_header_timeout"])
            return None
        if down.preface is not None and data:  # the connection's first bytes: HTTP/2 with prior knowledge?
            data = down.preface + data
            verdict = preface_verdict(data)
            if verdict != PREFACE_NO:  # the preface, or a prefix of it so far (sent byte by byte): read on
                down.preface = data
                if verdict == PREFACE_MATCH:
                    return _HTTP2
                continue
            down.preface = None
        conn.receive_data(data)


async def _recv_for_head(down: Http1Downstream, buffered: bool, header_deadline: float) -> bytes | object | None:
    """Bytes for the request head, or None on timeout. Between requests the connection is IDLE: the registry's
    sweep closes it at the idle timeout or when the worker drains (by cancelling the connection's scope), or it is
    parked (_PARK) when the worker holds many connection tasks."""
    transport = down.transport
    if buffered:
        with trio.move_on_at(header_deadline):
            return await transport.recv()
        return None
    if down.fresh:
        # A new connection's first request is usually there already; a keep-alive connection's next one almost
        # never is, so for those the failing read is skipped and the wait comes first.
        down.fresh = False
        data = transport.recv_nowait()
        if data is not None:
            return data
    ctx = down.ctx
    if ctx.draining:
        return b""
    if ctx.registry.should_park() and down.raw_socket() is not None and not transport.has_buffered():
        return _PARK
    down.state = STATE_IDLE
    down.since = time.monotonic()
    registry = ctx.registry
    registry.idle_tasks += 1
    try:
        return await transport.recv_waiting()
    finally:
        down.state = STATE_BUSY
        registry.idle_tasks -= 1


async def _handle_request(down: Http1Downstream, request: Request) -> bool:
    log = RequestLog(time.time(), down, request)
    down.response_started = False
    down.activity = time.monotonic()
    try:
        return await _serve_request(down, request, log)
    finally:
        down.activity = 0.0  # no request in flight: the stream idle timeout does not apply
        if down.client_gone:
            log.flags = "DC"
            log.details = "downstream_remote_disconnect"
        elif down.stream_timed_out:
            if not down.response_started:
                log.status = stream_timeout_status(down.conn.request_body_pending)
            log.flags = "SI"
            log.details = "stream_idle_timeout"
        elif not down.response_started and _unexpected(sys.exc_info()[1]):
            log.status = 500  # the connection's boundary answers it (serve_http_connection)
            log.details = "internal_error"
        log.duration_ms = int((time.time() - log.start) * 1000)
        down.ctx.records.request(log)


def _unexpected(exc: BaseException | None) -> bool:
    """An error serve_http_connection's boundary will catch (not a client or transport going away)."""
    return isinstance(exc, Exception) and not isinstance(exc, _QUIET_ENDINGS)


async def _serve_request(down: Http1Downstream, request: Request, log: RequestLog) -> bool:
    """One request: decide, then carry the decision out. Returns keep-alive."""
    ctx = down.ctx
    snapshot = ctx.view.current()  # the per-request generation check (workers/tableview.py)
    if snapshot is None:
        return await _reply(down, log, LOCAL_REPLIES["no_table"], keep_alive=False)
    req, refused = read_request(request, down.peer_ip, down.scheme_bytes, snapshot.options, ctx.rng)
    log.forwarded = req.forwarded
    if refused is not None:
        return await _reply(down, log, refused, keep_alive=False)
    denied = check_access(snapshot, req, down.facts(), log)
    if denied is not None:
        return await _reply(down, log, denied)
    rt = find_route(snapshot, down.listener_key, down.chain_index, req)
    if type(rt) is Redirect:
        return await _reply(down, log, rt.reply, extra=[(b"location", rt.location)])
    if type(rt) is LocalReply:
        return await _reply(down, log, rt)
    log.route_name = rt.route.name or "-"
    action = decide_action(rt, request.method, req, ctx.rng)
    if action.delay_s:
        log.flags = "DI"
        await trio.sleep(action.delay_s)
    if type(action) is Answer:
        # Replies of the route itself get its response header operations; a CORS preflight does not.
        ops = None if action.reply is LOCAL_REPLIES["cors_preflight"] else rt.response_ops
        await local_reply(down, log, action.reply, status=action.status, body=action.body, extra=action.headers, response_ops=ops, content_type=action.content_type)
        return not down.must_close
    return await forward(down, request, req, snapshot, rt, log, action.cors_headers)


async def _reply(down: Http1Downstream, log: RequestLog, reply: LocalReply, *, extra: list | None = None, keep_alive: bool = True) -> bool:
    await local_reply(down, log, reply, extra=extra)
    return keep_alive and not down.must_close
