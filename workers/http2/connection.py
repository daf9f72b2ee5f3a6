# One HTTP/2 client connection (h2c with prior knowledge, or h2 chosen by ALPN): h2's state machine behind a reader
# task, one writer task, and a task per stream (workers/http2/stream.py).
#
# Rules:
# - Settings: MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE and MAX_HEADER_LIST_SIZE from the table's options (Envoy's
#   edge best practice by default: workers/http2/limits.py), the connection window opened to its own limit with a
#   WINDOW_UPDATE right after. h2 is told no stream limit of its own: a stream over the advertised limit, or over
#   the worker's active-stream limit, is refused alone (RST_STREAM REFUSED_STREAM) instead of h2's connection error.
# - The reader feeds the flood guard (limits.InboundGuard) before h2, then h2, then acts on its events. A protocol
#   error h2 finds ends the connection with the GOAWAY h2 queued; a flood ends it with GOAWAY ENHANCE_YOUR_CALM.
#   Header blocks (requests and their trailers) are checked by request.field_error, h2's inbound validation in
#   one pass (h2's own is off): a malformed block ends the connection with GOAWAY PROTOCOL_ERROR as h2 would.
# - Every frame h2 or edge queues goes through `pump` into one outbound buffer, counted against the outbound
#   budget (limits.OutboundBudget) until the writer has written it. The writer is the only task that sends on the
#   socket; it is never cancelled while the connection lives (only when it closes), so no frame is ever cut.
#   Streams wait while the buffer is over OUTBOUND_HIGH_WATER bytes. What streams queue (HEADERS, DATA,
#   WINDOW_UPDATE acknowledging their request bodies) is moved out of h2 once per batch — by the writer before it
#   writes, or by a stream before it waits for room — not per call: one data_to_send and one frame count for the
#   frames of many streams. What the reader's input makes h2 queue (pings, settings, resets) is moved out at once,
#   so floods are counted as they come.
# - Graceful close (worker drain, the listener gone after a reload, the connection idle for the idle timeout):
#   Envoy's two GOAWAYs — last-stream-id 2^31-1 first, then after DRAIN_GOAWAY_DELAY_S the highest stream id
#   accepted — and the connection closes once the streams it accepted are done (the worker's drain deadline
#   bounds that). A client's GOAWAY also closes it once its streams are done.
# - A client reset cancels its stream's task (and the upstream exchange with it); Rapid Reset is counted per
#   connection (limits.ResetGuard). The client closing the connection cancels every stream.
from __future__ import annotations

import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import GoAwayFrame, SettingsFrame

from workers.http2 import limits as lim
from workers.http2.request import Malformed, field_error, h2_request
from workers.http2.stream import Http2Stream, end_code, serve_stream
from workers.netio import TransportClosed

WORKER_STREAMS = lim.StreamBudget()  # this worker process's active HTTP/2 streams
OUTBOUND_HIGH_WATER = 256 * 1024  # bytes queued for the writer above which streams wait for it
DRAIN_GOAWAY_DELAY_S = 1.0  # between the two GOAWAYs of a graceful close (Envoy: drain_timeout; see docs)
CLOSE_GRACE_S = 1.0  # the last frames (a GOAWAY) may take this long to leave before the socket closes
LAST_STREAM_ANY = 2**31 - 1
_SEND_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, TransportClosed)
_H2_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False, normalize_inbound_headers=False, validate_outbound_headers=False, normalize_outbound_headers=False)


class Http2Connection:
    """One HTTP/2 client connection; `down` (an Http1Downstream) holds its transport and facts."""

    def __init__(self, down, serve_request):
        self.down = down
        self.serve_request = serve_request  # the HTTP/1 request pipeline (workers/http/server.py), per stream
        self.ctx = down.ctx
        self.transport = down.transport
        options = self.ctx.options
        self.max_streams = options.http2_max_concurrent_streams
        self.conn = h2.connection.H2Connection(config=_H2_CONFIG)
        self.guard = lim.InboundGuard(options.max_request_headers_bytes)
        self.budget = lim.OutboundBudget()
        self.resets = lim.ResetGuard()
        self.streams: dict[int, Http2Stream] = {}
        self.out = bytearray()
        self.out_counts = [0, 0]  # frames, control frames in `out`
        self.wake = trio.Event()
        self.unpumped = False  # h2 holds frames queued by streams that pump() has not moved out yet
        self.room = trio.Event()
        self.done = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.highest_stream = 0
        self.drain_stage = 0  # 1: first GOAWAY sent; 2: the final one
        self.last_stream_id = LAST_STREAM_ANY
        self.peer_goaway = False
        self.idle_since = time.monotonic()
        self.violation: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, options) -> None:
        conn = self.conn
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: lim.HARD_STREAM_LIMIT,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: options.http2_initial_stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: options.max_request_headers_bytes,
        })  # fmt: skip
        conn.initiate_connection()
        conn.data_to_send()  # h2's SETTINGS carries its own stream limit: the client gets edge's instead
        settings = SettingsFrame(0)
        settings.settings = {
            SettingsFrame.MAX_CONCURRENT_STREAMS: self.max_streams,
            SettingsFrame.INITIAL_WINDOW_SIZE: options.http2_initial_stream_window,
            SettingsFrame.MAX_HEADER_LIST_SIZE: options.max_request_headers_bytes,
        }
        self.queue_frame(settings.serialize())
        extra = options.http2_initial_connection_window - conn.inbound_flow_control_window
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self.pump()

    async def serve(self, received: bytes) -> None:
        """Serve until the connection ends; `received` are the bytes after the preface already read."""
        registry = self.ctx.registry
        self.start(self.ctx.options)
        registry.h2.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._read_loop, received)
                await self.done.wait()
                if self.violation is not None or self.drain_stage or self.peer_goaway:
                    with trio.move_on_after(CLOSE_GRACE_S):
                        await self._flushed()
                nursery.cancel_scope.cancel()
        finally:
            registry.h2.discard(self)
            for stream in list(self.streams.values()):
                stream.client_reset()

    async def _flushed(self) -> None:
        if self.unpumped:
            self.pump()  # a stream's last frames may still be in h2 (the writer had no turn since)
        while self.out or self.budget.frames:
            self.room = trio.Event()
            await self.room.wait()

    # ------------------------------------------------------------------ reading

    async def _read_loop(self, received: bytes) -> None:
        data = received
        try:
            while True:
                if data and not self._receive(data):
                    break
                data = await self.transport.recv()
                if not data:
                    break  # the client closed: its streams are cancelled
        except _SEND_ERRORS:
            pass
        self.done.set()

    def _receive(self, data: bytes) -> bool:
        """Bytes from the client through the guard and h2; False when the connection is to close."""
        violation = self.guard.feed(data)
        if violation is not None:
            self.calm(violation)
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.pump()  # the GOAWAY h2 queued
            self.violation = "protocol error"
            return False
        for event in events:
            self._on_event(event)
            if self.violation is not None:
                break
        self.pump()
        return self.violation is None and not self.done.is_set()

    def _on_event(self, event) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.received(event.data, event.flow_controlled_length)
            else:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif kind is h2.events.RequestReceived:
            self._on_request(event)
        elif kind is h2.events.StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended()
        elif kind is h2.events.WindowUpdated:
            self._window_opened(event.stream_id)
        elif kind is h2.events.RemoteSettingsChanged:
            self._window_opened(0)
        elif kind is h2.events.StreamReset:
            self._on_reset(event.stream_id)
        elif kind is h2.events.TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if field_error(event.headers, True) is not None:
                self._malformed()
            elif stream is not None:
                stream.trailers = event.headers
        elif kind is h2.events.ConnectionTerminated:
            self.peer_goaway = True
            self._maybe_done()

    def _malformed(self) -> None:
        """A malformed header block: GOAWAY PROTOCOL_ERROR, as h2's own validation answers it."""
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self.pump()
        self.violation = "protocol error"

    def _on_request(self, event) -> None:
        stream_id = event.stream_id
        self.highest_stream = max(self.highest_stream, stream_id)
        if field_error(event.headers) is not None:
            self._malformed()
            return
        if stream_id > self.last_stream_id or len(self.streams) >= self.max_streams:
            self.reset_stream(stream_id, lim.REFUSED_STREAM)
            return
        if not WORKER_STREAMS.take(self.ctx.options.http2_max_active_streams_per_worker):
            self.reset_stream(stream_id, lim.REFUSED_STREAM)
            return
        try:
            request = h2_request(event.headers, event.stream_ended is not None)
        except Malformed:
            WORKER_STREAMS.release()
            self.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        stream = self.streams[stream_id] = Http2Stream(self, stream_id, event.stream_ended is not None)
        self.nursery.start_soon(serve_stream, stream, request, self.serve_request)

    def _on_reset(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)  # closed now: it no longer counts against the stream limit
        if stream is None:
            return
        stream.client_reset()
        WORKER_STREAMS.release()  # and not against the worker's: its task ends at its next checkpoint
        violation = self.resets.stream_closed(stream.opened_at, time.monotonic(), True)
        stream.opened_at = -1.0  # counted and released: stream_done does not do either again
        if violation is not None:
            self.calm(violation)

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.window_opened()
            return
        for stream in self.streams.values():
            stream.window_opened()

    # ------------------------------------------------------------------ streams

    def stream_done(self, stream: Http2Stream) -> None:
        """A stream's task ended: reset what is left of it, count it, and close when draining and none is left."""
        self.streams.pop(stream.stream_id, None)
        code = end_code(stream)
        if code is not None and not self.done.is_set():
            self.reset_stream(stream.stream_id, code)
        if stream.opened_at >= 0:
            WORKER_STREAMS.release()
            violation = self.resets.stream_closed(stream.opened_at, time.monotonic(), False)
            if violation is not None:
                self.calm(violation)
        if not self.streams:
            self.idle_since = time.monotonic()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.streams and (self.drain_stage == 2 or self.peer_goaway):
            self.done.set()

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        if flow_length and not self.done.is_set():
            self.conn.acknowledge_received_data(flow_length, stream_id)
            self._pump_later()

    def window(self, stream_id: int) -> int:
        try:
            return min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
        except h2.exceptions.ProtocolError:
            raise TransportClosed("the stream is closed") from None

    def send_headers(self, stream_id: int, fields: list, end: bool) -> None:
        self._call(self.conn.send_headers, stream_id, fields, end_stream=end)

    def send_data(self, stream_id: int, data, end: bool) -> None:
        self._call(self.conn.send_data, stream_id, data, end_stream=end)

    def end_stream(self, stream_id: int) -> None:
        self._call(self.conn.end_stream, stream_id)

    def _call(self, method, *args, **kwargs) -> None:
        if self.done.is_set():
            raise TransportClosed("the connection is closing")
        try:
            method(*args, **kwargs)
        except h2.exceptions.ProtocolError:
            raise TransportClosed("the stream is closed") from None  # reset by the client meanwhile
        self._pump_later()

    def _pump_later(self) -> None:
        self.unpumped = True
        self.wake.set()

    def reset_stream(self, stream_id: int, code: int) -> None:
        try:
            self.conn.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            return  # closed already
        self.pump()

    async def wait_room(self) -> None:
        if self.unpumped:
            self.pump()
        if len(self.out) > OUTBOUND_HIGH_WATER:
            self.room = trio.Event()
            await self.room.wait()
        else:
            await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ writing

    def pump(self) -> None:
        """Move what h2 queued to the outbound buffer, counted against the budget."""
        self.unpumped = False
        data = self.conn.data_to_send()
        if data:
            self.queue_frame(data)

    def queue_frame(self, data: bytes) -> None:
        if self.violation is not None:
            return
        frames, control, data_frames = lim.count_frames(data)
        self.guard.data_frames_sent += data_frames
        self.out += data
        self.out_counts[0] += frames
        self.out_counts[1] += control
        self.wake.set()
        violation = self.budget.add(frames, control)
        if violation is not None:
            self.calm(violation)

    def calm(self, violation: str) -> None:
        """A flood (or a bad start): GOAWAY ENHANCE_YOUR_CALM (PROTOCOL_ERROR), what was queued and not written
        dropped, then the close."""
        if self.violation is not None:
            return
        self.ctx.log(f"HTTP/2 connection from {self.down.peer[0]} on {self.down.listener_key} closed: {violation}")
        self.budget.release(*self.out_counts)
        self.out = bytearray(_goaway(self.highest_stream, lim.goaway_code(violation)))
        self.out_counts = [1, 0]
        self.budget.add(1, 0)
        self.violation = violation
        self.wake.set()
        self.done.set()

    async def _write_loop(self) -> None:
        transport = self.transport
        while True:
            if self.unpumped:
                self.pump()
            if not self.out:
                self.room.set()
                self.wake = trio.Event()
                await self.wake.wait()
                continue
            batch, counts = self.out, self.out_counts
            self.out, self.out_counts = bytearray(), [0, 0]
            try:
                await transport.send_all(batch)
            except _SEND_ERRORS:
                self.done.set()
                return
            self.budget.release(*counts)
            if len(self.out) <= OUTBOUND_HIGH_WATER:
                self.room.set()

    # ------------------------------------------------------------------ graceful close

    def sweep(self, now: float, idle_timeout_s: float) -> None:
        """The registry's idle sweep (workers/context.close_idle): drain, a listener gone, or idle too long."""
        if self.drain_stage or self.done.is_set():
            return
        snapshot = self.ctx.current()
        gone = snapshot is not None and self.down.listener_key not in snapshot.listeners
        if self.ctx.draining or gone or (not self.streams and now - self.idle_since >= idle_timeout_s):
            self.begin_drain()

    def begin_drain(self) -> None:
        if self.drain_stage or self.nursery is None:
            return
        self.drain_stage = 1
        self.queue_frame(_goaway(LAST_STREAM_ANY, 0))
        self.nursery.start_soon(self._final_goaway)

    async def _final_goaway(self) -> None:
        await trio.sleep(DRAIN_GOAWAY_DELAY_S)
        self.drain_stage = 2
        self.last_stream_id = self.highest_stream
        self.queue_frame(_goaway(self.last_stream_id, 0))
        self._maybe_done()


def _goaway(last_stream_id: int, code: int) -> bytes:
    frame = GoAwayFrame(0)
    frame.last_stream_id = last_stream_id
    frame.error_code = code
    return frame.serialize()


async def serve_h2(down, received: bytes, serve_request) -> None:
    """An HTTP/2 connection on `down`'s transport; `received`: its first bytes, when read already."""
    await Http2Connection(down, serve_request).serve(received)
