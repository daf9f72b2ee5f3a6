# One try of a forwarded request on an HTTP/2 upstream stream, and its response relayed downstream; mirrors on
# HTTP/2 clusters. The HTTP/1.1 counterpart is workers/http/exchange.py, whose Exchange (what every try needs,
# decided once) both share.
#
# Rules:
# - The request head is the proxy's HTTP/1.1 field list mapped onto HTTP/2 (client_rules.h2_request_headers);
#   :scheme is https for a TLS cluster. The body (what was read already, then the rest as it arrives) goes up
#   in a task beside the response: full duplex, so bidirectional gRPC streams flow both ways at once.
# - The try's deadline bounds the stream's acquisition and the wait for the response head. A retriable status
#   (or a retriable grpc-status in the response headers) with a replayable body is held for the retry loop,
#   which relays it when the tries are spent.
# - Response DATA is acknowledged to the upstream once queued downstream (flushed before waiting for more).
#   Trailers go to the downstream's send_end: an HTTP/2 client gets them; HTTP/1.1 drops them (Envoy's HTTP/1
#   codec does, without enable_trailers, which Istio does not set).
# - A stream that breaks after the response started ends the client's stream too (ResponseAborted, UPE); the
#   client leaving resets the upstream stream (CANCEL), through H2Stream.release in every way out.
from __future__ import annotations

import time

import trio

from workers.http.codec import END_OF_MESSAGE, REASONS, Data, IncompleteMessage, ProtocolError
from workers.http.exchange import RequestBodyError, response_starts, timed_out
from workers.http.log import ClientGone, ResponseAborted
from workers.http.retry import Outcome, TryResult, status_retriable
from workers.http2.client import DATA, END, HEADERS, TRAILERS, StreamFailure, open_stream
from workers.http2.client_rules import h2_request_headers, response_head
from workers.netio import TransportClosed
from workers.route_policies import grpc_status_of
from workers.upstream import ConnectFailure, Overflow

MIRROR_TIMEOUT_S = 10.0


class HeldResponse:
    """A response head held for a retry (TryResult.response); relays itself when the tries are spent."""

    __slots__ = ("status", "headers")

    def __init__(self, status: int, headers: list):
        self.status = status
        self.headers = headers

    async def relay(self, ex, stream) -> bool:
        try:
            return await relay_h2(ex, stream, self.status, self.headers)
        finally:
            stream.release()


def _failure(exc: StreamFailure) -> TryResult:
    if exc.kind == StreamFailure.REFUSED:
        return TryResult(Outcome.REFUSED, reason="remote refused stream reset")
    if exc.kind == StreamFailure.PROTOCOL:
        return TryResult(Outcome.PROTOCOL_ERROR, reason=exc.reason)
    return TryResult(Outcome.RESET, reason="connection termination")


async def try_h2(ex, attempt: int, endpoint, try_deadline: float) -> TryResult:
    """One try against `endpoint` on an HTTP/2 stream (see the module rules)."""
    down = ex.down
    try:
        stream = await open_stream(down.ctx, ex.cluster_rt, endpoint, ex.host, try_deadline)
    except ConnectFailure as exc:
        return TryResult(Outcome.CONNECT_FAILURE, reason=exc.reason)
    except Overflow:
        return TryResult(Outcome.OVERFLOW)
    if stream is None:
        return timed_out(ex, try_deadline)
    ex.log.upstream_local = stream.upstream.local
    scheme = b"https" if ex.cluster_rt.cluster.tls is not None else b"http"
    headers = h2_request_headers(ex.request.method, scheme, ex.host, ex.target, ex.try_headers(attempt, try_deadline))
    body = ex.body
    result: TryResult | None = None
    aborted = False
    try:
        stream.start(headers, end_stream=body.complete and not body.buffer)
        down.activity = time.monotonic()
        async with trio.open_nursery() as nursery:
            if not stream.local_done:
                nursery.start_soon(_upload, ex, stream, nursery.cancel_scope)
            # Nothing escapes the nursery's body but cancellation: exceptions would come out as groups.
            try:
                result = await _respond(ex, stream, try_deadline, time.monotonic())
            except StreamFailure as exc:
                result = _failure(exc)
            except ResponseAborted:
                aborted = True
            if aborted or not result.sent or not body.complete:
                if aborted or result.sent:
                    down.reset()  # the response ended before the request body: the client's stream is done too
                nursery.cancel_scope.cancel()
    except StreamFailure as exc:  # from start(): the connection went away or refused the stream
        result = _failure(exc)
    finally:
        if result is None or result.upstream is None:
            stream.release()
    if aborted:
        raise ResponseAborted()
    if body.client_failed:
        if result is not None and result.upstream is not None:
            result.upstream.release()
        if body.protocol_error is not None:
            raise RequestBodyError()
        raise ClientGone()
    return result if result is not None else TryResult(Outcome.RESET, reason="connection termination")


async def _respond(ex, stream, try_deadline: float, sent_at: float) -> TryResult:
    """The response head within the try's deadline; then held for a retry, or relayed."""
    down = ex.down
    head = None
    with trio.move_on_at(try_deadline):
        down.watch_client(True)
        try:
            while True:
                event = await stream.next_event()
                if event[0] == HEADERS:
                    head = event[1]
                    break
        finally:
            down.watch_client(False)
    if head is None:
        return timed_out(ex, try_deadline)
    ex.log.service_time_ms = int((time.monotonic() - sent_at) * 1000)
    status, headers = response_head(head)
    if status < 200:
        raise StreamFailure(StreamFailure.PROTOCOL, "upstream response without a valid :status")
    result = TryResult(Outcome.STATUS, status=status)
    result.grpc_status = grpc_status_of(headers)
    body = ex.body
    if status_retriable(status, ex.policy, result.grpc_status) and body.complete and body.replayable:
        result.upstream = stream
        result.response = HeldResponse(status, headers)
        return result
    result.sent = True
    try:
        await relay_h2(ex, stream, status, headers)
    except ClientGone:
        ex.body.client_failed = True
    return result


async def relay_h2(ex, stream, status: int, headers: list) -> bool:
    """The upstream stream's response → the client, DATA acknowledged as it is queued; returns keep-alive."""
    down = ex.down
    log = ex.log
    grpc = grpc_status_of(headers)
    out_headers = response_starts(ex, status, headers)
    trailers = None
    try:
        down.start_response(status, REASONS.get(status, b""), out_headers)
        while True:
            if not stream.has_event and down.pending:
                await down.flush()
            event = await stream.next_event()
            kind = event[0]
            if kind == DATA:
                log.bytes_sent += len(event[1])
                if down.queue_data(event[1]):
                    await down.flush()
                stream.consumed(event[2])
                down.activity = time.monotonic()
            elif kind == TRAILERS:
                trailers = response_head(event[1])[1]
                grpc = grpc_status_of(trailers)
            elif kind == END:
                break
        if grpc >= 0:
            log.grpc_status = grpc
        await down.send_end(trailers)
    except (StreamFailure, ProtocolError):
        log.flags = "UPE"
        log.details = "upstream_reset_after_response_started"
        down.reset()
        raise ResponseAborted() from None
    except (TransportClosed, trio.ClosedResourceError):
        down.reset()
        raise ClientGone() from None
    return not down.must_close


async def _upload(ex, stream, exchange: trio.CancelScope) -> None:
    """Client body → upstream stream, as flow control allows, keeping a copy for a replay while it is small."""
    down = ex.down
    body = ex.body
    try:
        for chunk in list(body.buffer):
            await stream.send_data(chunk)
        if body.complete:
            stream.end()
            return
        while True:
            event = await down.receive_body_event()
            if type(event) is Data:
                body.keep(event.data)
                await stream.send_data(bytes(event.data))
                down.activity = time.monotonic()
            elif event is END_OF_MESSAGE:
                body.complete = True
                stream.end()
                return
            else:
                _client_failed(down, body, exchange)
                return
    except StreamFailure:
        body.upstream_failed = True  # the upstream stopped taking the body; its response (if any) decides
    except ProtocolError as exc:
        body.protocol_error = exc
        _client_failed(down, body, exchange)
    except (IncompleteMessage, TransportClosed, trio.ClosedResourceError):
        _client_failed(down, body, exchange)


def _client_failed(down, body, exchange: trio.CancelScope) -> None:
    body.client_failed = True
    down.reset()
    exchange.cancel()


async def send_mirror_h2(ctx, cluster_rt, method: bytes, target: bytes, host: bytes, headers: list, body: bytes) -> None:
    """One mirrored request on an HTTP/2 stream, its response read and dropped (workers/http/mirror.py)."""
    index = cluster_rt.balancer.choose(trio.current_time())
    if index is None:
        return
    stream = await open_stream(ctx, cluster_rt, cluster_rt.balancer.states[index].endpoint, host, trio.current_time() + MIRROR_TIMEOUT_S)
    if stream is None:
        return
    try:
        scheme = b"https" if cluster_rt.cluster.tls is not None else b"http"
        stream.start(h2_request_headers(method, scheme, host, target, headers), end_stream=not body)
        if body:
            await stream.send_data(body, end=True)
        while True:
            event = await stream.next_event()
            if event[0] == DATA:
                stream.consumed(event[2])
            elif event[0] == END:
                return
    except StreamFailure:
        return
    finally:
        stream.release()
