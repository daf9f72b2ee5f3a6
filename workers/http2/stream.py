# One HTTP/2 stream as the proxy core sees it: the second implementation of the per-request downstream interface
# (workers/http/downstream.py), and the task that serves it through the same request pipeline as HTTP/1
# (workers/http/server._serve_request, handed in: read_request → check_access → find_route → decide_action →
# forward).
#
# Rules:
# - Request body: the connection (workers/http2/connection.py) queues each DATA frame's bytes on its stream. A
#   chunk's flow-controlled bytes are acknowledged (WINDOW_UPDATE, when h2 decides one is due) only when the proxy
#   core asks for the next event: by then the chunk was forwarded upstream (or buffered within the retry limit),
#   so a client can have at most one stream window of bytes in the gateway per stream, and one connection window
#   for all of them. A client reset (RST_STREAM) or the connection closing ends the body with IncompleteMessage:
#   the client is gone (DC), as for an HTTP/1 client closing mid-body.
# - Response: the head is queued by start_response and leaves with the first flush or the end (HEADERS, with
#   END_STREAM when there is no body). Body bytes go out as DATA frames no larger than the client's window and
#   frame size allow; without window the stream waits for a WINDOW_UPDATE, and the stream idle timeout (the
#   registry's sweep, since `activity` stops moving) bounds that wait (CVE-2019-9511/9517). Queued bytes wait for
#   the connection's writer when it holds more than its high-water mark (backpressure per stream).
# - reset() means what it means on HTTP/1 (the request's exchange ended abnormally): the stream, not the
#   connection, is reset once the response is done or abandoned: RST_STREAM NO_ERROR after a complete response
#   whose request body was not read to its end (RFC 9113 §8.1), CANCEL/INTERNAL_ERROR when the response broke.
# - A stream is registered with the worker's registry like an HTTP/1 connection with a request in flight, so the
#   stream idle timeout applies to it (expire_streams); it is never IDLE (idle timeouts, parking and drain
#   are the connection's: workers/http2/connection.py).
from __future__ import annotations

import sys
import time
from collections import deque

import h2.errors
import h2.exceptions
import trio

from workers.context import STATE_BUSY, STATE_UPSTREAM_WAIT
from workers.http.codec import END_OF_MESSAGE, NEED_DATA, Data, IncompleteMessage
from workers.http.log import ClientGone, RequestLog, ResponseAborted
from workers.http.codec import REASONS
from workers.http.replies import BODY_STREAM_TIMEOUT, reply_headers, stream_timeout_status
from workers.http.respond import SEND_GRACE_S
from workers.http2.request import response_fields
from workers.netio import TransportClosed

BODY_CHUNK_BYTES = 64 * 1024  # response bytes queued before the proxy core is told to flush
_SET = trio.Event()  # an Event already set: what a stream holds until someone waits
_SET.set()
_QUIET_ENDINGS = (trio.BrokenResourceError, trio.ClosedResourceError, TransportClosed, ClientGone, ResponseAborted)


class Http2Stream:
    """One client stream: the downstream interface of workers/http/downstream.py over an HTTP/2 connection."""

    __slots__ = (
        "h2c", "ctx", "stream_id", "peer", "peer_ip", "local", "scheme", "scheme_bytes", "listener_key", "chain_index",
        "sni", "client_cert", "must_close", "scope", "state", "since", "client_gone", "response_started", "activity",
        "stream_timed_out", "park_requested", "pending", "pending_bytes", "head", "head_sent", "ended_out",
        "inbound", "ended_in", "unacked", "body_event", "window_event", "opened_at", "discard_body", "trailers",
    )  # fmt: skip

    def __init__(self, h2c, stream_id: int, ended_in: bool):
        down = h2c.down  # the connection's own facts (workers/http/downstream.Http1Downstream)
        self.h2c = h2c
        self.ctx = down.ctx
        self.stream_id = stream_id
        self.peer, self.peer_ip, self.local = down.peer, down.peer_ip, down.local
        self.scheme, self.scheme_bytes = down.scheme, down.scheme_bytes
        self.listener_key, self.chain_index, self.sni, self.client_cert = down.listener_key, down.chain_index, down.sni, down.client_cert
        self.must_close = False
        self.scope: trio.CancelScope | None = None
        self.state = STATE_BUSY
        self.since = 0.0
        self.client_gone = False
        self.response_started = False
        self.activity = time.monotonic()
        self.stream_timed_out = False
        self.park_requested = False  # never set: streams are never idle (context.park_idle reads it)
        self.pending: list = []  # response body bytes not sent yet
        self.pending_bytes = 0
        self.head: list | None = None
        self.head_sent = False
        self.ended_out = False  # END_STREAM sent
        self.inbound: deque = deque()  # (bytes, flow-controlled length) from DATA frames
        self.ended_in = ended_in  # the client's END_STREAM came
        self.unacked = 0  # flow-controlled bytes handed to the core and not yet acknowledged
        self.body_event = _SET  # replaced by a fresh Event by whoever waits (most streams never wait)
        self.window_event = _SET
        self.opened_at = self.activity
        self.discard_body = False  # the core is done with the body: acknowledge what comes at once
        self.trailers: list | None = None  # request trailers (not forwarded to HTTP/1 upstreams)

    def raw_socket(self):
        return None  # the client leaving is a RST_STREAM or the connection's end, not a peek

    def facts(self):
        return self.h2c.down.facts()

    # ------------------------------------------------------------------ from the connection

    def received(self, data: bytes, flow_length: int) -> None:
        if self.discard_body:
            self.h2c.acknowledge(self.stream_id, flow_length)
            return
        self.inbound.append((data, flow_length))
        self.activity = time.monotonic()
        self.body_event.set()

    def ended(self) -> None:
        self.ended_in = True
        self.body_event.set()

    def client_reset(self) -> None:
        """RST_STREAM from the client, or the connection went away: its upstream work is cancelled."""
        self.client_gone = True
        self.body_event.set()
        self.window_event.set()
        if self.scope is not None:
            self.scope.cancel()

    def window_opened(self) -> None:
        self.window_event.set()

    # ------------------------------------------------------------------ the response

    def start_response(self, status: int, reason: bytes, headers) -> None:
        self.response_started = True
        self.head = response_fields(status, headers)

    def queue_data(self, data) -> bool:
        if data:
            self.pending.append(bytes(data))
            self.pending_bytes += len(data)
        return self.pending_bytes >= BODY_CHUNK_BYTES

    def flush(self):
        return self._send(False)

    def send_end(self, trailers: list | None = None):
        """The end of the response; response `trailers` (an h2 or gRPC upstream's) end the stream as HEADERS."""
        return self._send(True, trailers)

    async def _send(self, end: bool, trailers: list | None = None) -> None:
        h2c = self.h2c
        if self.client_gone:
            raise ClientGone()
        data = b"".join(self.pending) if len(self.pending) != 1 else self.pending[0]
        self.pending.clear()
        self.pending_bytes = 0
        if not self.head_sent:
            self.head_sent = True
            h2c.send_headers(self.stream_id, self.head, end and not data and not trailers)
            if end and not data and not trailers:
                self.ended_out = True
                return
        view = memoryview(data)
        while view:
            window = h2c.window(self.stream_id)
            if window <= 0:
                self.window_event = trio.Event()
                await self.window_event.wait()  # the stream idle timeout bounds it (the module's rules)
                if self.client_gone:
                    raise ClientGone()
                continue
            chunk, view = view[:window], view[window:]
            last = end and not view and not trailers  # trailers end the stream, not the last DATA frame
            h2c.send_data(self.stream_id, chunk, last)
            self.activity = time.monotonic()
            if last:
                self.ended_out = True
                return  # nothing follows: the writer takes it with its next batch
            await h2c.wait_room()
            if self.client_gone:
                raise ClientGone()
        if end and not self.ended_out:
            if trailers:
                h2c.send_headers(self.stream_id, response_fields(None, trailers), True)
            else:
                h2c.end_stream(self.stream_id)
            self.ended_out = True

    def reset(self) -> None:
        self.must_close = True

    # ------------------------------------------------------------------ the request body

    @property
    def request_body_pending(self) -> bool:
        return not self.ended_in or bool(self.inbound)

    def _ack(self) -> None:
        if self.unacked:
            self.h2c.acknowledge(self.stream_id, self.unacked)
            self.unacked = 0

    def take_body_event(self):
        """The next body event without I/O; the previous chunk's bytes are acknowledged now (forwarded by then)."""
        self._ack()
        if self.inbound:
            data, flow_length = self.inbound.popleft()
            self.unacked = flow_length
            return Data(data)
        if self.client_gone:
            raise IncompleteMessage("the client reset the stream")
        if self.ended_in:
            return END_OF_MESSAGE
        return NEED_DATA

    async def receive_body_event(self):
        while True:
            event = self.take_body_event()
            if event is not NEED_DATA:
                return event
            self.body_event = trio.Event()
            await self.body_event.wait()

    async def drain_body(self, limit: int, timeout_s: float) -> bool:
        """The rest of the body is not needed: what came and what comes is acknowledged and dropped; the stream is
        reset (NO_ERROR) after the response when the client has not ended it (RFC 9113 §8.1)."""
        self._ack()
        self.discard_body = True
        while self.inbound:
            self.h2c.acknowledge(self.stream_id, self.inbound.popleft()[1])
        await trio.lowlevel.checkpoint()
        return True

    def watch_client(self, waiting: bool) -> None:
        self.state = STATE_UPSTREAM_WAIT if waiting else STATE_BUSY


async def serve_stream(stream: Http2Stream, request, serve_request) -> None:
    """One stream, start to end: the request pipeline (workers/http/server._serve_request), its log, and how the
    stream ends."""
    ctx = stream.ctx
    registry = ctx.registry
    log = RequestLog(time.time(), stream, request)
    registry.http.add(stream)
    try:
        with trio.CancelScope() as stream.scope:
            await serve_request(stream, request, log)
        if stream.stream_timed_out and not stream.response_started:
            await _timeout_reply(stream)
    except _QUIET_ENDINGS:
        pass
    except Exception as exc:  # noqa: BLE001 - this stream's boundary: the failure ends this stream only
        ctx.records.connection_failed(exc, stream.listener_key)
        log.status = 500
        log.details = "internal_error"
    finally:
        registry.http.discard(stream)
        registry.upstream_waiting.discard(stream)
        _finish_log(stream, log)
        stream.h2c.stream_done(stream)


async def _timeout_reply(stream: Http2Stream) -> None:
    """Envoy's stream idle timeout answer when no response has started: 408 while the body was arriving, else 504
    (as workers/http/server.py answers it on HTTP/1), bounded like any reply on a stream that is ending."""
    status = stream_timeout_status(stream.request_body_pending)
    stream.start_response(status, REASONS.get(status, b""), reply_headers(BODY_STREAM_TIMEOUT, b"text/plain", stream.ctx.server_header, None, None))
    stream.queue_data(BODY_STREAM_TIMEOUT)
    with trio.move_on_after(SEND_GRACE_S):
        await stream.send_end()


def _finish_log(stream: Http2Stream, log: RequestLog) -> None:
    if stream.client_gone:
        log.flags = "DC"
        log.details = "downstream_remote_disconnect"
    elif stream.stream_timed_out:
        if not stream.response_started:
            log.status = stream_timeout_status(stream.request_body_pending)
        log.flags = "SI"
        log.details = "stream_idle_timeout"
    elif not stream.response_started and isinstance(sys.exc_info()[1], Exception):
        log.status = 500
        log.details = "internal_error"
    log.duration_ms = int((time.time() - log.start) * 1000)
    stream.ctx.records.request(log)


def end_code(stream: Http2Stream) -> int | None:
    """The RST_STREAM a finished stream still needs: None when both sides ended cleanly (or it was reset)."""
    if stream.client_gone:
        return None
    if not stream.ended_out:
        return h2.errors.ErrorCodes.INTERNAL_ERROR if stream.response_started or stream.stream_timed_out else h2.errors.ErrorCodes.CANCEL
    if not stream.ended_in:
        return h2.errors.ErrorCodes.NO_ERROR
    return None


__all__ = ["Http2Stream", "end_code", "h2", "serve_stream"]
