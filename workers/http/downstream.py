# The client side of one HTTP/1.1 connection, and the per-request downstream interface the proxy core talks to.
#
# Rules:
# - The proxy core (workers/http/respond.py, exchange.py, forward.py) reaches the client only through the per-request
#   interface: start_response / queue_data / flush / send_end for the response; take_body_event (no I/O) and
#   receive_body_event for the request body; drain_body, reset (the connection will not carry another request),
#   watch_client around a wait on the upstream, and the client_gone / stream_timed_out flags the sweeps set.
#   HTTP/2 streams will be its second implementation; WebSocket (workers/http/websocket.py) is HTTP/1-only and
#   uses the codec and transport itself.
# - HTTP/1 keeps one send per response head: start_response only queues the head; it leaves with the first body
#   bytes, or with the end. Body bytes are coalesced up to BODY_CHUNK_BYTES, and flushed before the core waits
#   on the upstream again (flush), so nothing sits queued while we wait. Queueing is a plain call: a coroutine
#   per body chunk would cost more than the chunk's own work.
# - Every byte that moves for the request in flight refreshes `activity` (the stream idle timeout's clock).
from __future__ import annotations

import math
import socket
import time
from collections.abc import Awaitable

import trio

from workers.context import STATE_BUSY, STATE_UPSTREAM_WAIT, WorkerContext
from workers.http.access import ConnectionFacts
from workers.http.codec import END_OF_MESSAGE, NEED_DATA, Data, ProtocolError
from workers.netio import Transport
from workers.tls.xfcc import peer_principal

BODY_CHUNK_BYTES = 64 * 1024  # response bytes coalesced before a send


class Http1Downstream:
    """One client connection: its transport, codec state and where it came from; and, one at a time, its request."""

    __slots__ = ("ctx", "transport", "conn", "peer_ip", "peer", "local", "scheme", "scheme_bytes", "listener_key", "chain_index", "sni", "must_close", "scope", "state", "since", "client_gone", "fresh", "response_started", "activity", "stream_timed_out", "client_cert", "pending", "waiting", "_facts", "park_requested", "preface")

    def __init__(self, ctx: WorkerContext, transport: Transport, peer: tuple, local: tuple, scheme: str, listener_key: str, chain_index: int = -1, sni: str = "", client_cert: bytes | None = None):
        self.ctx = ctx
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
        self.conn = ctx.server_codec(ctx.max_header_bytes)
        self.scope: trio.CancelScope | None = None
        self.state = STATE_BUSY
        self.since = 0.0
        self.client_gone = False
        self.fresh = True
        self.response_started = False  # a response head for the current request went (or is going) out
        self.activity = 0.0  # monotonic time bytes last moved for the request in flight (the stream idle timeout)
        self.stream_timed_out = False
        self.park_requested = False  # the idle sweep cancelled the idle wait to park it (workers/http/server.py)
        self.preface: bytes | None = b""  # the first bytes while they may be HTTP/2's preface; None once decided
        self._facts: ConnectionFacts | None = None
        self.client_cert = client_cert  # x-forwarded-client-cert of a verified client certificate (workers/tls/xfcc.py)
        self.pending = b""  # response bytes not sent yet
        self.waiting = ctx.registry.upstream_waiting  # the registry's set of requests waiting on an upstream

    def raw_socket(self) -> socket.socket | None:
        return raw_socket(self.transport)

    def facts(self) -> ConnectionFacts:
        """What access policies may ask of this connection (workers/http/access.py); built once per connection."""
        facts = self._facts
        if facts is None:
            port = self.local[1] if self.local and len(self.local) > 1 else 0
            local_ip = str(self.local[0]).encode() if self.local else b""
            principal = ""
            if self.client_cert is not None:  # a verified client certificate (MUTUAL / OPTIONAL_MUTUAL servers)
                principal = peer_principal(self.transport.getpeercert() or {})
            facts = self._facts = ConnectionFacts(self.peer_ip, port, self.sni, self.client_cert, local_ip, principal)
        return facts

    # ------------------------------------------------------------------ the response

    def start_response(self, status: int, reason: bytes, headers) -> None:
        """Queue the response head; `connection: close` is announced when the connection will not be reused."""
        self.response_started = True
        self.pending = self.conn.send_response(status, reason, headers, close=self.must_close)

    def queue_data(self, data) -> bool:
        """Queue response body bytes; True when enough is queued that the caller should flush now."""
        self.pending += self.conn.send_data(data)
        return len(self.pending) >= BODY_CHUNK_BYTES

    # flush and send_end hand back the transport's own send (a coroutine to await): no coroutine frame of their own
    # per response on the hot path.

    def flush(self) -> Awaitable[None]:
        """Send what is queued (callers skip the call when `pending` is empty)."""
        data, self.pending = self.pending, b""
        return self.transport.send_all(data)

    def send_end(self, trailers: list | None = None) -> Awaitable[None]:
        """Queue the end of the response and send everything queued. Response `trailers` are dropped on HTTP/1
        (Envoy's HTTP/1 codec drops them unless enable_trailers, which Istio does not set)."""
        data, self.pending = self.pending + self.conn.send_end(), b""
        return self.transport.send_all(data)

    def reset(self) -> None:
        """This request's stream ends abnormally: on HTTP/1 the connection closes after it."""
        self.must_close = True

    # ------------------------------------------------------------------ the request body

    @property
    def request_body_pending(self) -> bool:
        return self.conn.request_body_pending

    def take_body_event(self):
        """The next body event the codec has parsed already (Data, END_OF_MESSAGE or NEED_DATA); no I/O."""
        return self.conn.next_event()

    async def receive_body_event(self):
        """The next body event, reading from the client as needed; answers 100-continue first when the client
        waits for it (Envoy answers it itself and does not forward Expect)."""
        conn = self.conn
        if conn.client_is_waiting_for_100_continue:
            await self.transport.send_all(conn.send_informational(100))
        while True:
            event = conn.next_event()
            if event is not NEED_DATA:
                return event
            conn.receive_data(await self.transport.recv())
            self.activity = time.monotonic()

    async def drain_body(self, limit: int, timeout_s: float) -> bool:
        """Read and drop the rest of the request body; False if it is longer than `limit`, broken, or slower than
        `timeout_s` (a trickling body must not hold the connection)."""
        conn = self.conn
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
        with trio.move_on_after(timeout_s or math.inf):
            return await self._drain(limit, seen)
        return False

    async def _drain(self, limit: int, seen: int) -> bool:
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except ProtocolError:
                return False
            if event is NEED_DATA:
                conn.receive_data(await self.transport.recv())
                continue
            if event is END_OF_MESSAGE:
                return True
            if type(event) is not Data:
                return False
            seen += len(event.data)
            if seen > limit:
                return False

    # ------------------------------------------------------------------ waiting on an upstream

    def watch_client(self, waiting: bool) -> None:
        """While the request waits on an upstream response head, the registry's sweep peeks at the client: its
        leaving cancels the connection's scope (client_gone). Two plain calls around the wait, not a coroutine."""
        if waiting:
            self.state = STATE_UPSTREAM_WAIT
            self.waiting.add(self)
        else:
            self.state = STATE_BUSY
            self.waiting.discard(self)


def raw_socket(transport: Transport) -> socket.socket | None:
    """The socket under a transport (SocketTransport and TLSTransport both keep it as `sock`)."""
    return getattr(transport, "sock", None)
