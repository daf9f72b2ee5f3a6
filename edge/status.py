# The supervisor's own small HTTP/1.1 servers (h11 on trio): the status port now; the metrics and admin ports
# (issue 6) reuse serve_http with their own route tables.
#
# Rules:
# - Decisions are values: a route is a function Request → Response (async, so an admin POST /reload can wait
#   for the reload it started); serve_http only moves bytes. Unknown path → 404, known path with a method it
#   does not take → 405 with Allow; HEAD is answered wherever GET is, without the body.
# - Status port: GET /healthz/ready → 200 "ready" while SupervisorState says ready, else 503 with the reason
#   ("starting: …", "draining"). Like Istio's pilot-agent, readiness, once reached, holds across reloads until
#   the drain starts (the supervisor owns that rule; this module only asks).
# - Bounded everything: one request's head about MAX_REQUEST_HEAD_BYTES (h11's incomplete-event limit), body
#   MAX_REQUEST_BODY_BYTES, and a whole request (head and body, or the wait for the next one on a keep-alive
#   connection) REQUEST_TIMEOUT_S — a deadline for the request, not for each read, so a client trickling a byte
#   now and then is cut off all the same. At most MAX_CONNECTIONS at once; a new connection beyond that takes
#   the place of the one that has been waiting longest for its request (ConnectionSlots), so connections that
#   only hold sockets open can never starve a load balancer's readiness probe. A malformed request gets h11's
#   status hint (400/414/431), then we half-close and discard what the client still sends for up to LINGER_S,
#   so the answer is read rather than reset. Keep-alive is honoured.
# - The port is bound through edge.sockets (the only bind()), without SO_REUSEPORT: a second edge on the same
#   status port must fail loudly, not share probes with the first.
from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

from edge.sockets import bind_listener

MAX_REQUEST_HEAD_BYTES = 16 * 1024
MAX_REQUEST_BODY_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 5.0  # a whole request, or the wait for the next one (a probe sends its request at once)
SEND_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256
RECEIVE_BYTES = 16 * 1024
LINGER_S = 1.0  # after an error response, how long we read the client's leftovers before closing
MAX_LINGER_BYTES = 1024 * 1024
SERVER_NAME = b"edge"
READY_PATH = "/healthz/ready"
STATUS_BIND = "0.0.0.0"  # the load balancer probes it from outside


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the target without its query string
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # lowercase names
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


Route = Callable[[Request], Awaitable[Response]]
# path → {method → route}
Routes = dict[str, dict[str, Route]]


def text(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode())


async def dispatch(routes: Routes, request: Request) -> Response:
    methods = routes.get(request.path)
    if methods is None:
        return text(404, f"no such path: {request.path}")
    route = methods.get(request.method)
    if route is None and request.method == "HEAD":
        route = methods.get("GET")
    if route is None:
        allowed = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
        return Response(405, b"method not allowed\n", headers=(("allow", ", ".join(allowed)),))
    return await route(request)


def status_routes(readiness: Callable[[], tuple[bool, str]]) -> Routes:
    """The status port: readiness() → (ready, reason shown on 503)."""

    async def ready(_request: Request) -> Response:
        is_ready, reason = readiness()
        return text(200, "ready") if is_ready else text(503, reason or "not ready")

    return {READY_PATH: {"GET": ready}}


def bind_status_socket(port: int, bind: str = STATUS_BIND) -> socket.socket:
    return bind_listener(bind, port, reuse_port=False)


class Slot:
    """One admitted connection."""

    __slots__ = ("scope", "evicted")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.evicted = False


class ConnectionSlots:
    """At most `limit` connections. A connection is either waiting for a request (from its accept, or from its
    previous answer) or answering one. When every slot is taken, a new connection takes the slot of the one that
    has been waiting longest (whose scope is cancelled); when all of them are answering, the new one is refused."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self.waiting: dict[Slot, None] = {}  # insertion order: the longest waiting first
        self.evictions = 0

    def admit(self) -> Slot | None:
        if self.count >= self.limit:
            if not self.waiting:
                return None
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            oldest.evicted = True
            oldest.scope.cancel()
            self.evictions += 1
        else:
            self.count += 1
        slot = Slot()
        self.waiting[slot] = None
        return slot

    def release(self, slot: Slot) -> None:
        self.waiting.pop(slot, None)
        if not slot.evicted:  # an evicted slot was handed over whole to the connection that evicted it
            self.count -= 1

    def wait_for_request(self, slot: Slot) -> None:
        self.waiting.pop(slot, None)
        self.waiting[slot] = None

    def answering(self, slot: Slot) -> None:
        self.waiting.pop(slot, None)

    def statistics(self) -> dict[str, int]:
        return {"connections": self.count, "waiting": len(self.waiting), "limit": self.limit, "evictions": self.evictions}


async def serve_http(
    sock: socket.socket,
    routes: Routes,
    *,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve routes on a bound, listening socket (this function owns it from now on). Started = the port."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    port = sock.getsockname()[1]
    slots = ConnectionSlots(max_connections)

    async def handle(stream: trio.SocketStream) -> None:
        slot = slots.admit()
        if slot is None:
            await trio.aclose_forcefully(stream)
            return
        try:
            with slot.scope:
                await _serve_connection(stream, routes, slots, slot)
        finally:
            slots.release(slot)
            await trio.aclose_forcefully(stream)

    async with listener, trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, [listener])
        task_status.started(port)


async def _serve_connection(stream: trio.SocketStream, routes: Routes, slots: ConnectionSlots | None = None, slot: Slot | None = None) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES)
    try:
        while True:
            if slots is not None:
                slots.wait_for_request(slot)
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    request = await _read_request(stream, conn)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(stream, conn, text(exc.error_status_hint, "bad request"), head_only=False, close=True)
                    await _linger(stream)
                return
            if request is None:
                return
            if slots is not None:
                slots.answering(slot)
            response = await dispatch(routes, request)
            await _send(stream, conn, response, head_only=request.method == "HEAD")
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            else:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, h11.LocalProtocolError):
        return
    finally:
        await stream.aclose()


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close and read what the client still sends, so that our error response is not lost to an RST."""
    await stream.send_eof()
    received = 0
    with trio.move_on_after(LINGER_S):
        while received < MAX_LINGER_BYTES:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return
            received += len(data)


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> Request | None:
    """The next whole request, or None when the client closed between requests."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(RECEIVE_BYTES))  # the caller bounds the whole request
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST_BODY_BYTES:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            target = head.target.decode("ascii", "replace")
            path, _, query = target.partition("?")
            headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers)
            return Request(head.method.decode("ascii", "replace"), path, query, headers, bytes(body))


async def _send(
    stream: trio.SocketStream, conn: h11.Connection, response: Response, *, head_only: bool, close: bool = False
) -> None:
    headers = [
        ("server", SERVER_NAME),
        ("content-type", response.content_type.encode()),
        ("content-length", str(len(response.body)).encode()),  # HEAD announces GET's length
        *((k, v.encode()) for k, v in response.headers),
    ]
    if close:
        headers.append(("connection", b"close"))
    with trio.fail_after(SEND_TIMEOUT_S):
        await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)) or b"")
        if response.body and not head_only:
            await stream.send_all(conn.send(h11.Data(data=response.body)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def serve_status(
    port: int,
    readiness: Callable[[], tuple[bool, str]],
    *,
    bind: str = STATUS_BIND,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind the status port and serve /healthz/ready forever. Started = the bound port (useful with port 0)."""
    sock = bind_status_socket(port, bind)
    await serve_http(sock, status_routes(readiness), task_status=task_status)
