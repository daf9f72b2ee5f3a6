# One try of a forwarded request against one upstream connection: send the head (and the body, streamed with
# backpressure, or in one send when it is whole), read the response head, relay the response downstream.
#
# Rules:
# - The upstream request is built from parsed events only and framed by the proxy (Content-Length, or chunked, from
#   the body the codec framed; never the client's header): bytes the codec rejected never reach a backend.
# - A body still arriving is uploaded while the response head is awaited (full duplex), so an upstream that answers
#   while it reads never deadlocks against us. A body that breaks the framing is answered 400 (DPE) while no response
#   has started (RequestBodyError), and the upstream exchange is reset.
# - The response head goes with the first body bytes in one send; the rest is streamed. An upstream that dies
#   mid-body ends the client connection (ResponseAborted): never a truncated body presented as complete.
# - An upstream connection returns to the pool only after a complete, clean exchange in both directions; every
#   other ending discards it.
# - The client leaving while its request waits on an upstream is noticed by the registry's sweep (ClientGone).
from __future__ import annotations

import math
import time

import trio

from edge.table import UPSTREAM_CLIENT, UPSTREAM_HTTP2
from workers import headers as hdr
from workers.http.codec import CLOSED, END_OF_MESSAGE, NEED_DATA, Data, IncompleteMessage, InformationalResponse, ProtocolError, Response
from workers.http.log import ClientGone, RequestLog, ResponseAborted
from workers.http.request import RequestInfo, upstream_host, upstream_target
from workers.http.replies import LOCAL_REPLIES
from workers.http.respond import local_reply
from workers.http.retry import RETRY_BUFFER_BYTES, BodyState, Outcome, TryResult, failure_reply, status_retriable
from workers.netio import TransportClosed
from workers.route_policies import format_grpc_timeout, grpc_timeout_s, is_grpc
from workers.upstream import ConnectFailure, Overflow, UpstreamConnection

EXCHANGE_ERRORS = (ProtocolError, TransportClosed, trio.ClosedResourceError)


class RequestBodyError(Exception):
    """The client's request body broke the framing rules while it was being forwarded (BodyState.protocol_error)."""


class UpstreamClosed(ProtocolError):
    """The upstream closed (or reset) the connection before a response head."""


class Exchange:
    """One forwarded request: what every try needs, decided once."""

    __slots__ = ("down", "request", "req", "rt", "dest", "cluster_rt", "body", "log", "policy", "host", "target", "original_path", "deadline", "hash_value", "extra_response_headers", "upstream_headers", "grpc", "h2")

    def __init__(self, down, request, req: RequestInfo, rt, dest, log: RequestLog, policy) -> None:
        self.down = down
        self.request = request
        self.req = req
        self.rt = rt
        self.dest = dest
        self.cluster_rt = dest.cluster_runtime
        self.body = BodyState(req.body_present, req.chunked)
        if self.body.present:
            take_parsed_body(down, self.body)
        self.log = log
        self.policy = policy
        self.host = log.upstream_authority = upstream_host(req, rt.route, dest)
        self.target, self.original_path = upstream_target(rt, req)
        log.upstream_path, log.upstream_original_path = self.target, self.original_path
        timeout_s = rt.route.timeout_s
        self.grpc = request.method == b"POST" and is_grpc(hdr.header_value(req.headers, b"content-type"))
        if self.grpc:  # grpc-timeout capped by the route timeout (workers/route_policies.py)
            timeout_s = grpc_timeout_s(timeout_s, hdr.header_value(req.headers, b"grpc-timeout"))
        self.deadline = trio.current_time() + timeout_s if timeout_s > 0 else math.inf
        protocol = self.cluster_rt.cluster.upstream_protocol
        self.h2 = protocol == UPSTREAM_HTTP2 or (protocol == UPSTREAM_CLIENT and request.http_version == b"2")
        self.hash_value: int | None = None
        self.extra_response_headers: list = []
        head = request.head
        # Every try sends these plus its x-envoy-attempt-count (the x-request-id stays the same across tries).
        self.upstream_headers = hdr.upstream_request_headers(
            req.headers,
            host=self.host,
            forwarded=req.forwarded,
            attempt=0,
            timeout_ms=rt.timeout_ms,
            original_path=self.original_path,
            chunked=self.body.chunked,
            # The bytes of a chunked body read whole, else the length the codec framed the request with.
            content_length=self.body.bytes if self.body.dechunked else (head.content_length if head.content_length >= 0 else None),
            nominated=head.nominated,
            client_cert=down.client_cert,
            route_ops=rt.request_ops,
            destination_ops=dest.request_ops,
        )


    def try_headers(self, attempt: int, try_deadline: float) -> list:
        """The headers of one try: the request's plus its attempt count, and for gRPC the grpc-timeout rewritten
        to the time the try has left (Envoy does so whenever max_grpc_timeout is set, as Istio sets it)."""
        headers = self.upstream_headers + [(b"x-envoy-attempt-count", _ATTEMPTS[attempt] if attempt < len(_ATTEMPTS) else b"%d" % attempt)]
        if self.grpc and try_deadline != math.inf:
            headers = [h for h in headers if h[0] != b"grpc-timeout"]
            headers.append((b"grpc-timeout", format_grpc_timeout(max(0.001, try_deadline - trio.current_time()))))
        return headers


_ATTEMPTS = tuple(b"%d" % i for i in range(16))


def take_parsed_body(down, body: BodyState) -> None:
    """Take the body events the codec has already parsed, without I/O: a small body usually arrives in the
    same read as its head, and read whole it is forwarded in one send (and can be replayed by a retry).
    Stops at the replay-buffer limit; the rest is streamed, after these chunks."""
    while body.bytes < RETRY_BUFFER_BYTES:
        try:
            event = down.take_body_event()
        except IncompleteMessage:
            return  # the client closed mid-body: the uploader meets it again and the client is gone (DC)
        except ProtocolError as exc:
            body.protocol_error = exc  # answered before anything goes upstream (forward)
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


async def open_upstream(ctx, cluster_rt, endpoint, host: bytes, deadline: float = math.inf) -> UpstreamConnection | None:
    """A pooled connection to `endpoint` for requests carrying `host`, or a new one within the cluster's circuit
    (TLS originated as the cluster says); None when `deadline` passed first. Raises ConnectFailure or Overflow.
    An idle connection is taken without a cancel scope: that is every request's path under load."""
    key, server_name = cluster_rt.origination(endpoint, host)
    idle = ctx.pools.take_idle(key)
    if idle is not None:
        return idle
    cluster = cluster_rt.cluster
    with trio.move_on_at(deadline):
        return await ctx.pools.acquire(key, cluster_rt.circuit, endpoint.address, endpoint.port, cluster.pool, ctx.upstream_tls(cluster), server_name)
    return None


async def acquire(ex: Exchange, endpoint, try_deadline: float) -> UpstreamConnection | TryResult:
    """open_upstream for one try, bounded by the try's deadline; a failure is the try's result."""
    try:
        upstream = await open_upstream(ex.down.ctx, ex.cluster_rt, endpoint, ex.host, try_deadline)
    except ConnectFailure as exc:
        return TryResult(Outcome.CONNECT_FAILURE, reason=exc.reason)
    except Overflow:
        return TryResult(Outcome.OVERFLOW)
    return upstream if upstream is not None else timed_out(ex, try_deadline)


def failure(exc: BaseException) -> TryResult:
    if isinstance(exc, (UpstreamClosed, TransportClosed, trio.ClosedResourceError)):
        return TryResult(Outcome.RESET, reason="connection termination")
    return TryResult(Outcome.PROTOCOL_ERROR, reason=str(exc))


def timed_out(ex: Exchange, try_deadline: float) -> TryResult:
    return TryResult(Outcome.TIMEOUT if try_deadline >= ex.deadline else Outcome.PER_TRY_TIMEOUT)


async def exchange_buffered(ex: Exchange, upstream: UpstreamConnection, head: bytes, try_deadline: float) -> TryResult:
    """No body, or a body already read whole (a retry): one send, then the response."""
    codec = upstream.codec
    pools = ex.down.ctx.pools
    data = head
    for chunk in ex.body.buffer:
        data += codec.send_data(chunk)
    data += codec.send_end()
    sent_at = ex.down.activity = time.monotonic()
    response = None
    try:
        if try_deadline == math.inf:  # no route or per-try timeout: no cancel scope on the hot path
            await upstream.transport.send_all(data)
            response = await read_response_head(ex.down, upstream, watch_client=True)
        else:
            with trio.move_on_at(try_deadline):
                await upstream.transport.send_all(data)
                response = await read_response_head(ex.down, upstream, watch_client=True)
    except EXCHANGE_ERRORS as exc:
        pools.discard(upstream)
        return failure(exc)
    except BaseException:
        pools.discard(upstream)
        raise
    if response is None:
        pools.discard(upstream)
        return timed_out(ex, try_deadline)
    ex.log.service_time_ms = int((time.monotonic() - sent_at) * 1000)
    if status_retriable(response.status_code, ex.policy):
        return TryResult(Outcome.STATUS, status=response.status_code, upstream=upstream, response=response)
    result = TryResult(Outcome.STATUS, status=response.status_code)
    result.sent = True
    await relay_response(ex, upstream, response)
    return result


async def exchange_streaming(ex: Exchange, upstream: UpstreamConnection, head: bytes, try_deadline: float) -> TryResult:
    """A body still arriving from the client: upload and download run at once (full duplex)."""
    down = ex.down
    body = ex.body
    pools = down.ctx.pools
    codec = upstream.codec
    try:
        # Body chunks the codec had parsed already go with the head; the uploader continues from there.
        await upstream.transport.send_all(head + b"".join(codec.send_data(chunk) for chunk in body.buffer))
    except EXCHANGE_ERRORS as exc:
        pools.discard(upstream)
        return failure(exc)
    sent_at = down.activity = time.monotonic()
    gone = False
    result: TryResult | None = None  # stays None when the upload failed and cancelled the exchange
    owned = True  # `upstream` is still ours to give back: every way out of here releases or discards it once
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload_body, down, upstream, body, nursery.cancel_scope)
            result, response = await _await_response(ex, upstream, try_deadline, sent_at)
            owned = False  # relayed (relay_response gives it back), held by the result for a retry, or discarded
            if result.sent:
                try:
                    await relay_response(ex, upstream, response)
                except ClientGone:
                    gone = True
                if not body.complete:
                    # The response ended before the request body: stop reading it; the client connection cannot
                    # be reused (Envoy resets the stream in this case).
                    down.reset()
                    nursery.cancel_scope.cancel()
            elif result.kind != Outcome.STATUS:  # a failure: this connection is done, and so is the upload
                pools.discard(upstream)
                nursery.cancel_scope.cancel()
    finally:
        if owned:  # the upload failed, or the exchange was cancelled from outside (stream timeout, client gone)
            pools.discard(upstream)
    if body.client_failed or gone:
        if result is not None and result.upstream is not None:
            pools.discard(result.upstream)
        if body.protocol_error is not None and not gone:
            raise RequestBodyError()
        raise ClientGone()
    if result is None:
        return TryResult(Outcome.RESET, reason="connection termination")
    return result


async def _await_response(ex: Exchange, upstream: UpstreamConnection, try_deadline: float, sent_at: float) -> tuple[TryResult, Response | None]:
    """The response head of a streaming exchange: a result with `sent` set when it is to be relayed now (not a
    retriable status with a replayable body), with `upstream` and `response` held when it may be retried."""
    response = None
    try:
        with trio.move_on_at(try_deadline):
            response = await read_response_head(ex.down, upstream, watch_client=False)
    except EXCHANGE_ERRORS as exc:
        return failure(exc), None
    if response is None:
        return timed_out(ex, try_deadline), None
    ex.log.service_time_ms = int((time.monotonic() - sent_at) * 1000)
    body = ex.body
    if status_retriable(response.status_code, ex.policy) and body.complete and body.replayable:
        return TryResult(Outcome.STATUS, status=response.status_code, upstream=upstream, response=response), None
    result = TryResult(Outcome.STATUS, status=response.status_code)
    result.sent = True
    return result, response


async def read_response_head(down, upstream: UpstreamConnection, watch_client: bool, accept_switch: bool = False) -> Response:
    """The upstream's final response head (1xx skipped). Raises ProtocolError on garbage, UpstreamClosed when
    the connection closed before a head."""
    codec = upstream.codec
    transport = upstream.transport
    while True:
        event = codec.next_event()
        if event is NEED_DATA:
            # Right after the request went out the answer is not there yet: wait first, then read (one recv call
            # instead of a failed one and a second one). Watching the client is the registry's sweep.
            if watch_client:
                down.watch_client(True)
                try:
                    data = await transport.recv_waiting()
                finally:
                    down.watch_client(False)
            else:
                data = await transport.recv_waiting()
            if not data and not codec.has_buffered_data:
                raise UpstreamClosed("upstream closed before sending a response", 503)
            codec.receive_data(data)
            continue
        t = type(event)
        if t is Response:  # its framing was checked by the codec (Content-Length with Transfer-Encoding is a 502)
            return event
        if t is InformationalResponse:
            if accept_switch and event.status_code == 101:
                return event
            continue
        if event is CLOSED:
            raise UpstreamClosed("upstream closed before sending a response", 503)
        raise ProtocolError(f"unexpected upstream event {event!r}", 502)


async def upload_body(down, upstream: UpstreamConnection, body: BodyState, exchange: trio.CancelScope) -> None:
    """Client body → upstream with backpressure, keeping a copy for replay while it is small enough. Failures are
    recorded on `body` and cancel the exchange; nothing is raised into the nursery. Every chunk moved counts as
    activity for the stream idle timeout."""
    codec = upstream.codec
    try:
        while True:
            event = await down.receive_body_event()
            if type(event) is Data:
                body.keep(event.data)
                try:
                    await upstream.transport.send_all(codec.send_data(event.data))
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
        _client_failed(down, body, exchange)
    except ProtocolError as exc:
        # A broken body (bad chunk size or extension, missing CRLF, bad trailers): nothing more goes upstream, and
        # the client is answered 400 when no response has started (RequestBodyError).
        body.protocol_error = exc
        _client_failed(down, body, exchange)
    except (TransportClosed, trio.ClosedResourceError):
        _client_failed(down, body, exchange)  # the client went away: nothing more goes upstream


def _client_failed(down, body: BodyState, exchange: trio.CancelScope) -> None:
    body.client_failed = True
    down.reset()
    exchange.cancel()


def response_starts(ex: Exchange, status: int, headers: list) -> list:
    """An upstream's response is about to go downstream (either upstream protocol): the log learns it came from the
    upstream, and the headers the client gets are decided (returned). No I/O: nothing is sent yet."""
    down = ex.down
    log = ex.log
    ctx = down.ctx
    log.status = status
    if log.flags != "DI":  # a fault delay stays on record, as in Envoy's %RESPONSE_FLAGS%
        log.flags = "-"
    log.details = "via_upstream"
    out_headers = hdr.downstream_response_headers(
        headers,
        server=ctx.server_header,
        service_time_ms=log.service_time_ms if log.service_time_ms >= 0 else None,
        route_ops=ex.rt.response_ops,
        destination_ops=ex.dest.response_ops,
        extra=ex.extra_response_headers,
    )
    log.response_headers = out_headers
    if ctx.draining or not ex.body.complete:
        # A request body still arriving when the response starts: the connection cannot be reused (the rest of the
        # body is not read once the response is done), so the response says so.
        down.reset()
    return out_headers


async def relay_response(ex: Exchange, upstream: UpstreamConnection, response: Response) -> bool:
    """The upstream's response, downstream: the head with the first body bytes in one send, the rest streamed.
    Returns keep-alive. Raises ResponseAborted when the upstream broke mid-body, ClientGone when the client did."""
    down = ex.down
    log = ex.log
    ctx = down.ctx
    codec = upstream.codec
    out_headers = response_starts(ex, response.status_code, response.headers)
    clean = False
    try:
        down.start_response(response.status_code, response.reason, out_headers)
        while True:
            event = codec.next_event()
            if event is NEED_DATA:
                if down.pending:
                    await down.flush()
                codec.receive_data(await upstream.transport.recv())
                down.activity = time.monotonic()
                continue
            if type(event) is Data:
                log.bytes_sent += len(event.data)
                if down.queue_data(event.data):
                    await down.flush()
            elif event is END_OF_MESSAGE:
                await down.send_end()
                clean = True
                break
            else:
                raise ProtocolError("upstream closed in the middle of the body", 502)
    except ProtocolError:
        # The upstream broke mid-body (truncated or garbage): the client must not see it as complete.
        log.flags = "UPE"
        log.details = "upstream_reset_after_response_started"
        down.reset()
        ctx.pools.discard(upstream)
        raise ResponseAborted() from None
    except (TransportClosed, trio.ClosedResourceError):
        down.reset()
        ctx.pools.discard(upstream)
        raise ClientGone() from None
    except BaseException:
        ctx.pools.discard(upstream)
        raise
    ctx.pools.release(upstream, clean and ex.body.complete, ex.cluster_rt.cluster.pool.max_requests_per_connection)
    return not down.must_close


async def answer_body_error(ex: Exchange) -> bool:
    """Envoy's HTTP/1 codec error: 400 (DPE) when no response has started, then the connection closes and the
    upstream exchange is reset (its connection was discarded by the exchange)."""
    down = ex.down
    down.reset()
    error = ex.body.protocol_error
    if not down.response_started:
        await local_reply(down, ex.log, LOCAL_REPLIES["body_codec_error"], status=error.status_hint if error is not None else 400)
    else:
        ex.log.flags = "DPE"
        ex.log.details = "http1.codec_error"
    return False


async def answer_failure(ex: Exchange, result: TryResult, retried: bool) -> bool:
    """Out of tries: a held response passes through; a failure gets Envoy's local reply."""
    if result.upstream is not None and result.response is not None:
        if type(result.upstream) is not UpstreamConnection:  # an HTTP/2 stream: its head relays itself
            return await result.response.relay(ex, result.upstream)
        return await relay_response(ex, result.upstream, result.response)
    reply, extra = failure_reply(result.kind, retried)
    await local_reply(ex.down, ex.log, reply, extra=extra, close=not ex.body.can_replay or not ex.body.complete)
    return not ex.down.must_close
