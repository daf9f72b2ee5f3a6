# HTTP/2 connections to upstream endpoints, each carrying many streams: the I/O shell around python-hyper's h2
# state machine (the decisions are workers/http2/client_rules.py).
#
# Rules:
# - Connections live in UpstreamPools.multiplexed under the pool key + "h2", counted in the cluster's Circuit
#   like HTTP/1.1 connections (maxConnections); a request takes a stream slot on a connection that has one (see
#   client_rules.StreamSlots), else opens a connection within maxConnections, else waits as a pending request
#   (http1MaxPendingRequests, Envoy applies max_pending_requests to HTTP/2 too) until a slot or a connection
#   frees. A connection still connecting takes streams up to the slots it is expected to have, so a burst of
#   requests shares one connection instead of opening one each.
# - Each connection runs in the worker's background nursery: one reader task feeds h2 and dispatches events to
#   streams, one writer task sends what h2 has queued (the only sender on the socket, never cancelled by a
#   request: requests change h2's state synchronously and wake the writer). Cancelling a request never cuts a
#   frame in half.
# - Flow control: received DATA is acknowledged (WINDOW_UPDATE) only when the stream's reader took it, so a slow
#   client slows its upstream stream, not the connection; sending waits for the peer's window.
# - A stream that ends before both sides finished (the client left, a timeout, a broken body) is reset with
#   CANCEL. A GOAWAY stops new streams on the connection; streams above its last-stream-id fail as refused
#   (retried under `refused-stream`, never seen by the upstream); the connection closes once its streams end.
#   A broken connection fails every open stream as a reset ("connection termination").
# - http2KeepAlive: a PING every interval; no frame within the timeout closes the connection. A connection
#   without streams for the pool's idle timeout is closed with GOAWAY. TLS clusters offer ALPN `h2` only
#   (Istio's ALPNH2Only for HTTP/2 clusters).
from __future__ import annotations

import os
import time
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from workers.http2.client_rules import StreamSlots
from workers.netio import TransportClosed
from workers.tls.contexts import TLSConfigError
from workers.upstream import ConnectFailure, Overflow, open_transport

STREAM_WINDOW_BYTES = 256 * 1024  # our SETTINGS_INITIAL_WINDOW_SIZE: what an upstream may send ahead per stream
CONNECTION_WINDOW_BYTES = 1024 * 1024  # the connection's receive window (all streams together)
MAX_RESPONSE_HEADER_LIST_BYTES = 64 * 1024  # as MAX_RESPONSE_HEAD_BYTES for HTTP/1.1 upstreams
IDLE_CHECK_S = 1.0
GOAWAY_FLUSH_S = 1.0  # how long a closing connection may take to send its GOAWAY
H2_ERRORS = (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError, h2.exceptions.StreamClosedError)
_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)


class _ClientConnection(h2.connection.H2Connection):
    """h2's connection, except that a graceful GOAWAY (NO_ERROR) leaves it open: RFC 9113 §6.8 lets the streams up
    to its last-stream-id complete, where h2 would close the connection and drop what it had queued."""

    def _receive_goaway_frame(self, frame):
        if frame.error_code != 0:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors.ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

# What a stream's reader receives.
HEADERS, DATA, TRAILERS, END = 0, 1, 2, 3


class StreamFailure(Exception):
    """A stream ended without a complete response: refused (never processed: safe to retry), reset by the
    peer or by a broken connection, or a protocol error."""

    REFUSED = "refused"
    RESET = "reset"
    PROTOCOL = "protocol"

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class H2Stream:
    """One request/response exchange on an H2Upstream."""

    __slots__ = ("upstream", "id", "events", "lot", "failure", "local_done", "remote_done", "released", "trailers_only")

    def __init__(self, upstream: "H2Upstream"):
        self.upstream = upstream
        self.id = 0
        self.events: deque = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.failure: StreamFailure | None = None
        self.local_done = False
        self.remote_done = False
        self.released = False
        self.trailers_only = False  # the response head came with END_STREAM (gRPC's trailers-only form)

    # -- sending

    def start(self, headers: list, end_stream: bool) -> None:
        """Open the stream with its request head (synchronous: ids are taken and used in order)."""
        up = self.upstream
        if up.closed or self.failure is not None:
            raise self.failure or StreamFailure(StreamFailure.REFUSED, "connection closed")
        try:
            self.id = up.conn.get_next_available_stream_id()
            up.conn.send_headers(self.id, headers, end_stream=end_stream)
        except (h2.exceptions.TooManyStreamsError, h2.exceptions.NoAvailableStreamIDError):
            raise StreamFailure(StreamFailure.REFUSED, "no stream available") from None
        except H2_ERRORS as exc:
            raise StreamFailure(StreamFailure.PROTOCOL, str(exc)) from None
        up.streams[self.id] = self
        self.local_done = end_stream
        up.kick()

    async def send_data(self, data: bytes, end: bool = False) -> None:
        """Body bytes, as the peer's flow-control windows allow; `end` closes our side."""
        up = self.upstream
        view = memoryview(data)
        while view:
            if self.failure is not None:
                raise self.failure
            window = min(up.conn.local_flow_control_window(self.id), up.conn.max_outbound_frame_size)
            if window <= 0:
                await up.window_lot.park()
                continue
            try:
                up.conn.send_data(self.id, bytes(view[:window]))
            except H2_ERRORS as exc:
                raise self.failure or StreamFailure(StreamFailure.RESET, str(exc)) from None
            view = view[window:]
            up.kick()
        if end:
            self.end()

    def end(self, trailers: list | None = None) -> None:
        if self.failure is not None:
            raise self.failure
        try:
            if trailers:
                self.upstream.conn.send_headers(self.id, trailers, end_stream=True)
            else:
                self.upstream.conn.end_stream(self.id)
        except H2_ERRORS as exc:
            raise self.failure or StreamFailure(StreamFailure.RESET, str(exc)) from None
        self.local_done = True
        self.upstream.kick()

    # -- receiving

    def push(self, event: tuple) -> None:
        self.events.append(event)
        self.lot.unpark()

    def fail(self, failure: StreamFailure) -> None:
        if self.failure is None and not self.remote_done:
            self.failure = failure
        self.lot.unpark()

    @property
    def has_event(self) -> bool:
        return bool(self.events)

    async def next_event(self) -> tuple:
        """(HEADERS, headers) / (DATA, bytes, flow-controlled length) / (TRAILERS, headers) / (END,); raises
        StreamFailure. DATA must be given back with consumed() once forwarded."""
        while not self.events:
            if self.failure is not None:
                raise self.failure
            await self.lot.park()
        return self.events.popleft()

    def consumed(self, length: int) -> None:
        """Open the windows again for `length` bytes forwarded downstream."""
        up = self.upstream
        if length and not up.closed:
            try:
                up.conn.acknowledge_received_data(length, self.id)
            except H2_ERRORS:
                return
            up.kick()

    def release(self) -> None:
        """The exchange is over (whatever happened): reset the stream if it is still open, free its slot."""
        if self.released:
            return
        self.released = True
        up = self.upstream
        unread = sum(e[2] for e in self.events if e[0] == DATA)
        self.events.clear()
        if self.id:
            up.streams.pop(self.id, None)
            if not up.closed:
                if not (self.local_done and self.remote_done) and self.failure is None:
                    try:
                        up.conn.reset_stream(self.id, h2.errors.ErrorCodes.CANCEL)
                    except H2_ERRORS:
                        pass
                if unread:
                    try:
                        up.conn.acknowledge_received_data(unread, self.id)
                    except H2_ERRORS:
                        pass
                up.kick()
        up.stream_done()


class H2Upstream:
    """One HTTP/2 connection to an endpoint (see the module rules)."""

    def __init__(self, pools, key: tuple, circuit, pool_settings, log=None):
        self.pools = pools
        self.key = key
        self.circuit = circuit
        self.slots = StreamSlots(pool_settings.max_concurrent_streams, pool_settings.max_requests_per_connection)
        self.idle_timeout_s = pool_settings.idle_timeout_s
        self.keepalive = pool_settings.h2_keepalive
        self.conn = _ClientConnection(_CONFIG)
        self.streams: dict[int, H2Stream] = {}
        self.transport = None
        self.local = "-"
        self.ready = trio.Event()
        self.failure: ConnectFailure | None = None
        self.closed = False
        self.draining = False
        self.write_lot = trio.lowlevel.ParkingLot()
        self.window_lot = trio.lowlevel.ParkingLot()
        self.ping_lot = trio.lowlevel.ParkingLot()
        self.scope: trio.CancelScope | None = None
        self.idle_since = time.monotonic()
        self.last_received = 0.0
        self.log = log

    def kick(self) -> None:
        self.write_lot.unpark()

    # -- the connection's life (a task of the worker's background nursery)

    async def run(self, address: str, port: int, connect_timeout_s: float, tls, server_name, tcp_keepalive) -> None:
        try:
            try:
                self.transport, self.local = await open_transport(address, port, connect_timeout_s, tls, server_name, tcp_keepalive)
            except ConnectFailure as exc:
                self.failure = exc
                return
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW_BYTES,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_RESPONSE_HEADER_LIST_BYTES,
            })  # fmt: skip
            self.conn.initiate_connection()
            self.conn.increment_flow_control_window(CONNECTION_WINDOW_BYTES - 65535)
            self.ready.set()
            with trio.CancelScope() as self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, nursery.cancel_scope)
                    nursery.start_soon(self._timers)
                    await self._reader()
                    nursery.cancel_scope.cancel()
        except (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - a background connection's boundary: its streams fail, the worker goes on
            if self.log is not None:
                self.log(f"HTTP/2 upstream connection failed: {exc!r}")
        finally:
            self.close("connection termination")
            self.ready.set()

    async def _reader(self) -> None:
        while True:
            data = await self.transport.recv()
            if not data:
                return
            self.last_received = time.monotonic()
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self.close("protocol error", StreamFailure.PROTOCOL, str(exc))
                return
            for event in events:
                self._dispatch(event)
            self.kick()
            if self.draining and not self.streams:
                return

    def _dispatch(self, event) -> None:
        t = type(event)
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if t is h2.events.DataReceived:
            if stream is None:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.push((DATA, event.data, event.flow_controlled_length))
        elif t is h2.events.ResponseReceived:
            if stream is not None:
                stream.trailers_only = event.stream_ended is not None
                stream.push((HEADERS, event.headers))
        elif t is h2.events.TrailersReceived:
            if stream is not None:
                stream.push((TRAILERS, event.headers))
        elif t is h2.events.StreamEnded:
            if stream is not None:
                stream.remote_done = True
                stream.push((END,))
        elif t is h2.events.StreamReset:
            if stream is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                stream.fail(StreamFailure(StreamFailure.REFUSED if refused else StreamFailure.RESET, f"stream reset: {event.error_code!r}"))
        elif t is h2.events.WindowUpdated:
            self.window_lot.unpark_all()
        elif t is h2.events.RemoteSettingsChanged:
            self.slots.peer_max = self.conn.remote_settings.max_concurrent_streams
            self.window_lot.unpark_all()
            self._wake_pending()
        elif t is h2.events.PingAckReceived:
            self.ping_lot.unpark_all()
        elif t is h2.events.ConnectionTerminated:
            self._goaway(event.last_stream_id)
            if event.error_code != h2.errors.ErrorCodes.NO_ERROR:  # h2 closed the connection: nothing more comes
                self.close("connection termination")

    def _goaway(self, last_stream_id: int | None) -> None:
        """GOAWAY: no new streams; those the peer never processed fail as refused; close once the rest end."""
        self.slots.goaway = True
        self._leave_pool()
        last = last_stream_id if last_stream_id is not None else 0
        for sid, stream in list(self.streams.items()):
            if sid > last:
                stream.fail(StreamFailure(StreamFailure.REFUSED, "stream refused by GOAWAY"))
        self.draining = True

    async def _writer(self, scope: trio.CancelScope) -> None:
        while True:
            data = self.conn.data_to_send()
            if data:
                await self.transport.send_all(data)
                continue
            if self.draining and not self.streams:
                with trio.move_on_after(GOAWAY_FLUSH_S):
                    await self.transport.send_all(self.conn.data_to_send())
                scope.cancel()
                return
            await self.write_lot.park()

    async def _timers(self) -> None:
        """Idle timeout and http2KeepAlive PINGs."""
        interval, timeout = self.keepalive if self.keepalive is not None else (0.0, 0.0)
        next_ping = time.monotonic() + interval if interval > 0 else float("inf")
        while True:
            now = time.monotonic()
            await trio.sleep(max(0.0, min(IDLE_CHECK_S, next_ping - now)))
            now = time.monotonic()
            if not self.streams and self.slots.active == 0 and now - self.idle_since >= self.idle_timeout_s:
                self.drain()
                return
            if now >= next_ping:
                sent = now
                self.conn.ping(os.urandom(8))
                self.kick()
                with trio.move_on_after(timeout):
                    await self.ping_lot.park()
                if self.last_received < sent:  # no frame at all since the PING (Envoy extends on any frame)
                    self.close("http2 keepalive timeout")
                    return
                next_ping = time.monotonic() + interval

    # -- endings

    def drain(self) -> None:
        """Stop taking streams, send GOAWAY(NO_ERROR), close once the open streams end."""
        if self.closed:
            return
        self.slots.goaway = True
        self._leave_pool()
        if not self.draining:
            self.draining = True
            try:
                self.conn.close_connection()
            except H2_ERRORS:
                pass
        self.kick()

    def stream_done(self) -> None:
        self.slots.give_back()
        if not self.streams and self.slots.active == 0:
            self.idle_since = time.monotonic()
            if self.slots.spent:
                self.drain()
        self._wake_pending()

    def _wake_pending(self) -> None:
        if self.circuit.lot:
            self.circuit.lot.unpark_all()

    def _leave_pool(self) -> None:
        conns = self.pools.multiplexed.get(self.key)
        if conns is not None and self in conns:
            conns.remove(self)
            if not conns:
                del self.pools.multiplexed[self.key]

    def close(self, reason: str, kind: str = StreamFailure.RESET, detail: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._leave_pool()
        for stream in list(self.streams.values()):
            stream.fail(StreamFailure(kind, detail or reason))
        self.window_lot.unpark_all()
        if self.scope is not None:
            self.scope.cancel()
        if self.transport is not None:
            self.transport.close()
        self.circuit.connection_closed()


async def open_stream(ctx, cluster_rt, endpoint, host: bytes, deadline: float) -> H2Stream | None:
    """A stream slot on an HTTP/2 connection to `endpoint` (see the module rules); None when `deadline` passed
    first. Raises ConnectFailure or Overflow."""
    key, server_name = cluster_rt.origination(endpoint, host)
    key = key + ("h2",)
    pools = ctx.pools
    circuit = cluster_rt.circuit
    cluster = cluster_rt.cluster
    with trio.move_on_at(deadline):
        while True:
            conns = pools.multiplexed.get(key)
            for up in conns or ():
                if not up.closed and up.slots.take():
                    return await _attach(up)
            if circuit.try_reserve_connection():
                tls = None
                if cluster.tls is not None:
                    try:
                        tls = ctx.tls.upstream(cluster.tls, for_http="h2")
                    except TLSConfigError as exc:
                        circuit.connection_closed()
                        raise ConnectFailure(f"TLS error: {exc}") from None
                up = H2Upstream(pools, key, circuit, cluster.pool, ctx.log)
                pools.multiplexed.setdefault(key, []).append(up)
                pool = cluster.pool
                ctx.spawn(up.run, endpoint.address, endpoint.port, pool.connect_timeout_s, tls, server_name, pool.tcp_keepalive)
                continue
            if not await circuit.wait_pending():
                raise Overflow()
    return None


async def _attach(up: H2Upstream) -> H2Stream:
    stream = H2Stream(up)
    if not up.ready.is_set():
        try:
            await up.ready.wait()
        except BaseException:
            stream.release()
            raise
    if up.failure is not None:
        stream.release()
        raise up.failure
    if up.closed:
        stream.release()
        raise ConnectFailure("connection failure")
    return stream
