"""ProxyPair: the real HTTP proxy of a worker between a scripted client and scripted backends, all in memory.

    async with proxy_pair(tmp_path, codec, CONFIG) as pair:          # CONFIG: Istio YAML, compiled for real
        pair.backend("10.0.0.1").answer(Reply(503), Reply(200, b"ok"))
        client = pair.client()
        client.send(b"GET / HTTP/1.1\\r\\nHost: app.example.com\\r\\n\\r\\n", split="bytes")
        response = await client.response()                          # parsed with h11, as a client would
        assert response.status == 200 and pair.logs[-1].attempts == 2
        assert pair.backend("10.0.0.1").requests[0].header(b"x-envoy-attempt-count") == b"1"

What is real: the table (edge.compiler.load_and_compile + edge.table.encode_table, read through TableView), the
WorkerContext, the Http1Downstream and serve_http_connection, both codecs, the pools, circuits, balancers, retry,
mirror and fault code. What is fake: the byte transports (FakeTransport, with SocketTransport's surface) and the
upstream connect (`ctx.pools.connect`, replaced by one that hands out in-memory connections to Backend objects,
keeping the pool's counters as the real one does).

Rules:
- Run tests on trio's autojump clock (pytest-trio's `autojump_clock` fixture): route timeouts, per-try timeouts,
  connect timeouts, fault delays, backoff and header timeouts are trio deadlines and take no wall time. Every wait
  of the harness is bounded by WAIT_S of virtual time, so a response that never comes fails the test instead of
  hanging it.
- The registry's sweeps (idle timeout, stream idle timeout, client gone) and the pools' idle clocks read
  time.monotonic(), the logs' durations time.time(): while a pair runs, the modules that read them
  (VIRTUAL_CLOCK_MODULES) see the trio clock instead (VirtualTime), so `await trio.sleep(301)` is 301 s for
  them too. Tests run the sweeps themselves (`pair.sweep()`, `pair.check_clients_gone()`), after
  `await pair.settle()` (every task blocked: the proxy waits where the test led it).
- Every endpoint of the table is a Backend. It answers each request with the next scripted Reply (a status,
  headers, body chunks, delays, 1xx, a close, a reset, a truncated body, raw garbage, silence), or with
  `handler(request)`, or by default 200 with its own name as the body. It parses requests with h11 (an
  independent, strict reference) and records exactly the bytes it received on each connection.
- The client side of each connection is a Client: it feeds bytes whole, byte by byte, or in given pieces, can
  close its side or vanish (a reset the registry's peek notices), and reads responses back with h11.
- Mirrors run in the pair's nursery (ctx.background); everything the pair started is cancelled when it exits.
"""

from __future__ import annotations

import collections
import random
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h11
import trio
import trio.testing
import yaml

import workers.context
import workers.http.downstream
import workers.http.exchange
import workers.http.server
import workers.upstream
from edge.compiler import CompileOptions, load_and_compile
from edge.table import Options, encode_table
from workers.context import WorkerContext
from workers.http.codec import REASONS
from workers.http.downstream import Http1Downstream
from workers.http.engines import codec_classes
from workers.http.server import serve_http_connection
from workers.netio import TransportClosed
from workers.upstream import ConnectFailure, UpstreamConnection

WAIT_S = 24 * 3600.0  # virtual seconds any harness wait may take before the test fails
CODECS = ("h11", "httptools")
CLIENT_PEER = ("10.1.2.3", 40000)
VIRTUAL_CLOCK_MODULES = (workers.context, workers.http.server, workers.http.downstream, workers.http.exchange, workers.upstream)


class VirtualTime:
    """The `time` module as the proxy's modules see it during a pair: monotonic() and time() follow the trio clock
    (offset, so that no timestamp is 0: the registry reads an activity of 0 as "no request in flight")."""

    MONOTONIC_BASE = 1000.0
    EPOCH_BASE = 1_800_000_000.0

    def __getattr__(self, name):
        return getattr(time, name)

    def monotonic(self) -> float:
        return self.MONOTONIC_BASE + trio.current_time()

    def time(self) -> float:
        return self.EPOCH_BASE + trio.current_time()

# ------------------------------------------------------------------------------------------------ config


def documents(text: str, *names: str) -> str:
    """The documents of a multi-document YAML string (the e2e suite's configs) whose metadata.name is in `names`, in
    the order named: the in-memory tests take their configs from the e2e suite instead of copying them."""
    by_name = {}
    for doc in text.split("\n---\n"):
        loaded = yaml.safe_load(doc)
        if loaded:
            by_name[loaded["metadata"]["name"]] = doc.strip("\n-") + "\n"
    missing = [name for name in names if name not in by_name]
    assert not missing, f"no document named {missing} in {sorted(by_name)}"
    return "---\n".join(by_name[name] for name in names)


def service_entry(host: str, *addresses: str, port: int = 80) -> str:
    """A STATIC ServiceEntry: `host` on `port`, endpoints at `addresses` (each "ip" or "ip:port")."""
    eps = ""
    for address in addresses:
        ip, _, p = address.partition(":")
        eps += f"  - {{address: {ip}, ports: {{http: {p or port}}}}}\n"
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host.replace('.', '-')}}}
spec:
  hosts: [{host}]
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints:
{eps}"""


_compiled: dict[tuple[str, Options], bytes] = {}


def compile_payload(directory: Path, config: str, options: Options | None = None) -> bytes:
    """The encoded table of `config` (written to `directory` and compiled by the real compiler; the same config and
    options compile once per test session)."""
    options = options or Options()
    key = (config, options)
    if key not in _compiled:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "config.yaml"
        path.write_text(config)
        _, result = load_and_compile([str(path)], CompileOptions(table_options=options))
        assert result.table is not None, "\n".join(str(d) for d in result.diagnostics)
        _compiled[key] = encode_table(result.table)
    return _compiled[key]


class StaticReader:
    """Stands in for the shared-memory reader: the payload of `generation`, which a test may publish anew."""

    def __init__(self, payload: bytes, generation: int = 1):
        self.payload = payload
        self.generation = generation

    def current_generation(self) -> int:
        return self.generation

    def read(self):
        return self.generation, self.payload

    def publish(self, payload: bytes) -> None:
        self.payload = payload
        self.generation += 1


# ------------------------------------------------------------------------------------------------ transports


class PeekSocket:
    """What the registry's client-gone check peeks at (workers/context.client_has_left): the transport's state."""

    def __init__(self, transport: "FakeTransport"):
        self.transport = transport

    def recv(self, max_bytes: int, flags: int = 0) -> bytes:
        assert flags == socket.MSG_PEEK
        t = self.transport
        if t._pieces:
            return t._pieces[0][:max_bytes]
        if t._reset:
            raise ConnectionResetError("reset by peer")
        if t._eof:
            return b""
        raise BlockingIOError()


class FakeTransport:
    """One end of an in-memory connection with the surface of workers/netio.SocketTransport: recv (b"" at EOF,
    TransportClosed on a reset), recv_waiting, recv_nowait, send_all, send_eof, close, aclose, has_unread, closed.
    `received` is every byte fed to it, `sent` every byte its owner sent (`sends`: one entry per send_all)."""

    def __init__(self, name: str = ""):
        self.name = name
        self._pieces: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._reset = False
        self._event = trio.Event()
        self.peer: FakeTransport | None = None
        self.received = bytearray()
        self.sent = bytearray()
        self.sends: list[bytes] = []
        self.closed = False
        self.send_broken = False  # the peer is gone: sends fail with TransportClosed
        self.sock = PeekSocket(self)

    def __repr__(self) -> str:
        return f"<FakeTransport {self.name} closed={self.closed}>"

    def _notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    # what arrives
    def feed(self, data: bytes) -> None:
        if data:
            self._pieces.append(bytes(data))
            self.received += data
        self._notify()

    def feed_eof(self) -> None:
        self._eof = True
        self._notify()

    def feed_reset(self) -> None:
        self._reset = True
        self.send_broken = True
        self._notify()

    async def wait_change(self) -> None:
        """Until something arrives, is sent, or the transport closes."""
        await self._event.wait()

    # the SocketTransport surface
    def _take(self, max_bytes: int) -> bytes:
        piece = self._pieces.popleft()
        if len(piece) > max_bytes:
            self._pieces.appendleft(piece[max_bytes:])
            piece = piece[:max_bytes]
        return piece

    def recv_nowait(self, max_bytes: int = 65536) -> bytes | None:
        if self.closed:
            raise trio.ClosedResourceError("transport closed")
        if self._pieces:
            return self._take(max_bytes)
        if self._reset:
            raise TransportClosed("connection reset by peer")
        return b"" if self._eof else None

    async def recv(self, max_bytes: int = 65536) -> bytes:
        await trio.lowlevel.checkpoint()
        while (data := self.recv_nowait(max_bytes)) is None:
            await self._event.wait()
        return data

    recv_waiting = recv

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("transport closed")
        if self.send_broken:
            raise TransportClosed("broken pipe")
        data = bytes(data)
        self.sent += data
        self.sends.append(data)
        if self.peer is not None:
            self.peer.feed(data)
        self._notify()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.peer is not None:
            self.peer.feed_eof()

    def has_unread(self) -> bool:
        return bool(self._pieces) or self._eof or self._reset

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.peer is not None:
            self.peer.feed_eof()
            self.peer.send_broken = True
        self._notify()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        """Close with a reset: the peer's next recv raises TransportClosed."""
        if self.closed:
            return
        self.closed = True
        if self.peer is not None:
            self.peer.feed_reset()
        self._notify()


def pipe(a: str, b: str) -> tuple[FakeTransport, FakeTransport]:
    one, other = FakeTransport(a), FakeTransport(b)
    one.peer, other.peer = other, one
    return one, other


# ------------------------------------------------------------------------------------------------ responses


@dataclass
class Response:
    """A response as a client read it (h11), with the bytes it took on the wire."""

    status: int
    reason: bytes
    headers: list
    body: bytes
    interim: list = field(default_factory=list)  # 1xx statuses before it
    complete: bool = True  # False: the connection ended inside its body
    raw: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return b",".join(values) if values else None

    def has(self, name: bytes) -> bool:
        return any(n == name for n, _ in self.headers)

    @property
    def closes(self) -> bool:
        value = self.header(b"connection")
        return value is not None and b"close" in value.lower()


def parse_response(data: bytes, method: bytes = b"GET", eof: bool = False) -> tuple[Response, int] | None:
    """The first response in `data` and the bytes it took; None while it is incomplete (and not at EOF). A
    response the connection ended inside comes back with complete=False; bytes that are no response fail."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "client.test")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    interim: list[int] = []
    head = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            if head is not None and eof:
                return Response(head.status_code, head.reason, list(head.headers), bytes(body), interim, complete=False, raw=data), len(data)
            raise AssertionError(f"not a response: {data[:300]!r}") from None
        if event is h11.NEED_DATA:
            return None
        if type(event) is h11.InformationalResponse:
            interim.append(event.status_code)
        elif type(event) is h11.Response:
            head = event
        elif type(event) is h11.Data:
            body += event.data
        elif type(event) is h11.EndOfMessage:
            used = len(data) - len(conn.trailing_data[0])
            return Response(head.status_code, head.reason, list(head.headers), bytes(body), interim, raw=data[:used]), used
        else:  # ConnectionClosed before a head
            return None


def split_bytes(data: bytes, split) -> list[bytes]:
    """"whole", "bytes" (one piece per byte), an int (pieces of that size), or a list of offsets to cut at."""
    if split == "whole":
        return [data]
    if split == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    if isinstance(split, int):
        return [data[i : i + split] for i in range(0, len(data), split)]
    cuts = [0, *split, len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


class Client:
    """The client of one downstream connection served by the real serve_http_connection."""

    def __init__(self, pair: "ProxyPair", transport: FakeTransport, down: Http1Downstream):
        self.pair = pair
        self.transport = transport  # the proxy's end: its `sent` is what this client receives
        self.down = down
        self._offset = 0
        self.finished = trio.Event()  # serve_http_connection returned

    def send(self, data: bytes, split="whole") -> None:
        for piece in split_bytes(data, split):
            self.transport.feed(piece)

    def send_eof(self) -> None:
        self.transport.feed_eof()

    def vanish(self) -> None:
        """The client resets its connection: reads fail, sends fail, the registry's peek sees it gone."""
        self.transport.feed_reset()

    @property
    def received(self) -> bytes:
        """Every byte the proxy sent to this client."""
        return bytes(self.transport.sent)

    @property
    def closed(self) -> bool:
        return self.transport.closed

    async def wait_for(self, predicate: Callable[[], bool], what: str = "condition") -> None:
        with trio.move_on_after(WAIT_S):
            while not predicate():
                await self.transport.wait_change()
            return
        raise AssertionError(f"{what}: not reached within {WAIT_S} virtual seconds")

    async def response(self, method: bytes = b"GET") -> Response:
        """The next response on this connection (waits for it; fails if the connection closes without one)."""
        with trio.move_on_after(WAIT_S):
            while True:
                data = bytes(self.transport.sent[self._offset :])
                parsed = parse_response(data, method, eof=self.transport.closed) if data else None
                if parsed is not None:
                    response, used = parsed
                    self._offset += used
                    return response
                if self.transport.closed:
                    raise AssertionError(f"the connection closed without a (further) response; bytes left: {data[:200]!r}")
                await self.transport.wait_change()
        raise AssertionError(f"no response within {WAIT_S} virtual seconds; received {self.received[:300]!r}")

    async def wait_closed(self) -> None:
        """Until the proxy closed the connection (serve_http_connection returned)."""
        with trio.move_on_after(WAIT_S):
            await self.finished.wait()
            return
        raise AssertionError("the proxy did not close the connection")

    @property
    def unread(self) -> bytes:
        """What the proxy sent beyond the responses read so far."""
        return bytes(self.transport.sent[self._offset :])


# ------------------------------------------------------------------------------------------------ backends


@dataclass
class Reply:
    """How a Backend answers one request.

    kind "respond" (default): `interim` 1xx heads, then the head (status, headers; content-length added unless
    `chunked`, `length=False`, 204 or 304), then `body` (bytes, or a list of chunks sent one send each, `chunk_delay`
    apart), the `trailers` of a chunked body, then `then` (bytes beyond the message), then a close when `close`
    (announced with `connection: close` when `announce`). `truncate`: only that many body bytes, then a close.
    kind "close": close without answering (FIN); "reset": close with a reset (RST); "silent": never answer;
    "raw": send `raw` bytes, then close. `delay` is slept before anything is sent; `after` sends bytes nobody
    asked for once the response is out."""

    status: int = 200
    body: bytes | list = b""
    headers: list = field(default_factory=list)
    kind: str = "respond"
    delay: float = 0.0
    chunk_delay: float = 0.0
    chunked: bool = False
    trailers: list = field(default_factory=list)
    interim: list = field(default_factory=list)
    length: bool = True
    close: bool = False
    announce: bool = True
    then: bytes = b""
    truncate: int | None = None
    raw: bytes = b""
    reason: bytes = b""
    after: tuple = ()  # (delay, bytes): sent that long after the response, on the idle connection

    @classmethod
    def close_now(cls, delay: float = 0.0) -> "Reply":
        return cls(kind="close", delay=delay)

    @classmethod
    def reset(cls, delay: float = 0.0) -> "Reply":
        return cls(kind="reset", delay=delay)

    @classmethod
    def silent(cls) -> "Reply":
        return cls(kind="silent")

    @classmethod
    def garbage(cls, raw: bytes = b"this is not HTTP\r\n\r\n") -> "Reply":
        return cls(kind="raw", raw=raw)

    def head(self) -> bytes:
        chunks = self.body if isinstance(self.body, list) else [self.body]
        lines = [b"HTTP/1.1 %d %s" % (self.status, self.reason or REASONS.get(self.status, b"Unknown"))]
        lines += [n + b": " + v for n, v in self.headers]
        names = {n.lower() for n, _ in self.headers}
        if self.chunked:
            if b"transfer-encoding" not in names:
                lines.append(b"transfer-encoding: chunked")
        elif self.length and b"content-length" not in names and self.status not in (204, 304):
            lines.append(b"content-length: %d" % sum(len(c) for c in chunks))
        if self.close and self.announce and b"connection" not in names:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n"


@dataclass
class BackendRequest:
    method: bytes
    target: bytes
    headers: list  # [(lowercase name, value)] as h11 read them
    body: bytes
    http_version: bytes
    connection: "BackendConnection"

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return b",".join(values) if values else None


class BackendConnection:
    def __init__(self, backend: "Backend", transport: FakeTransport, index: int):
        self.backend = backend
        self.transport = transport
        self.index = index
        self.requests: list[BackendRequest] = []
        self.error: Exception | None = None  # what h11 refused in the bytes the proxy sent

    @property
    def received(self) -> bytes:
        """Exactly the bytes the proxy sent on this connection."""
        return bytes(self.transport.received)

    @property
    def closed_by_proxy(self) -> bool:
        return self.transport._eof or self.transport._reset


class Backend:
    """One upstream endpoint (every endpoint of the table has one). `answer(*replies)` queues replies;
    `handler(request) -> Reply` answers when the queue is empty; with neither, 200 with the backend's name as the
    body. `refuse` makes connects fail at once; `blackhole` makes them hang until the cluster's connect timeout."""

    def __init__(self, pair: "ProxyPair", address: str, port: int):
        self.pair = pair
        self.address = address
        self.port = port
        self.name = f"{address}:{port}"
        self.script: collections.deque[Reply] = collections.deque()
        self.handler: Callable[[BackendRequest], Reply] | None = None
        self.connections: list[BackendConnection] = []
        self.refuse = False
        self.blackhole = False
        self.connect_delay = 0.0

    def answer(self, *replies: Reply) -> "Backend":
        self.script.extend(replies)
        return self

    @property
    def requests(self) -> list[BackendRequest]:
        return [r for c in self.connections for r in c.requests]

    def next_reply(self, request: BackendRequest) -> Reply:
        if self.script:
            return self.script.popleft()
        if self.handler is not None:
            return self.handler(request)
        return Reply(200, self.name.encode(), [(b"content-type", b"text/plain")])

    async def serve(self, conn: BackendConnection) -> None:
        t = conn.transport
        h = h11.Connection(h11.SERVER)
        try:
            while True:
                request = None
                body = bytearray()
                while True:
                    try:
                        event = h.next_event()
                    except h11.RemoteProtocolError as exc:
                        conn.error = exc
                        t.close()
                        return
                    if event is h11.NEED_DATA:
                        h.receive_data(await t.recv())
                        continue
                    if type(event) is h11.Request:
                        request = event
                    elif type(event) is h11.Data:
                        body += event.data
                    elif type(event) is h11.EndOfMessage:
                        break
                    else:  # ConnectionClosed: the proxy closed its end between requests
                        t.close()
                        return
                record = BackendRequest(request.method, request.target, list(request.headers), bytes(body), request.http_version, conn)
                conn.requests.append(record)
                if not await self._perform(t, self.next_reply(record), request.method):
                    t.close()
                    return
                # h11 only parses here; a stand-in response moves its state machine to the next request.
                h.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                h.send(h11.EndOfMessage())
                if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                    t.close()  # the request asked for a close
                    return
                h.start_next_cycle()
        except (trio.ClosedResourceError, TransportClosed):
            return

    async def _perform(self, t: FakeTransport, reply: Reply, method: bytes) -> bool:
        """Send `reply`; False when the connection is to close after it."""
        if reply.delay:
            await trio.sleep(reply.delay)
        if reply.kind == "close":
            return False
        if reply.kind == "reset":
            t.abort()
            return False
        if reply.kind == "silent":
            await trio.sleep_forever()
        if reply.kind == "raw":
            await t.send_all(reply.raw)
            return False
        out = b"".join(b"HTTP/1.1 %d Continue\r\n\r\n" % s for s in reply.interim) + reply.head()
        chunks = reply.body if isinstance(reply.body, list) else [reply.body]
        if method == b"HEAD" or reply.status in (204, 304):
            chunks = []
        if reply.truncate is not None:
            await t.send_all(out + b"".join(chunks)[: reply.truncate])
            return False
        if reply.chunked:
            framed = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c]
            end = b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in reply.trailers) + b"\r\n"
        else:
            framed = [c for c in chunks if c]
            end = b""
        if reply.chunk_delay and framed:
            await t.send_all(out)
            for piece in framed:
                await trio.sleep(reply.chunk_delay)
                await t.send_all(piece)
            if end or reply.then:
                await t.send_all(end + reply.then)
        else:
            await t.send_all(out + b"".join(framed) + end + reply.then)
        if reply.after:
            await trio.sleep(reply.after[0])
            await t.send_all(reply.after[1])
        return not reply.close


def sample_reply(request: BackendRequest) -> Reply:
    """The paths of the e2e sample backend (edge/dev/sample_backend.py), scripted: /status/N answers N, /delay/S
    answers after S seconds, /drop closes without an answer, /garbage answers bytes that are no HTTP, /drop-mid
    announces 1000 bytes and closes after 10; anything else is 200 with the backend's name. Use it as
    `backend.handler = sample_reply`."""
    path = request.target.split(b"?")[0]
    name = request.connection.backend.name.encode()
    if path.startswith(b"/status/"):
        return Reply(int(path.split(b"/")[2]), name)
    if path.startswith(b"/delay/"):
        return Reply(200, name, delay=float(path.split(b"/")[2]))
    if path == b"/drop":
        return Reply.close_now()
    if path == b"/garbage":
        return Reply.garbage()
    if path == b"/drop-mid":
        return Reply(200, b"x" * 1000, truncate=10)
    return Reply(200, name)


# ------------------------------------------------------------------------------------------------ the pair


class ProxyPair:
    def __init__(self, ctx: WorkerContext, reader: StaticReader, nursery: trio.Nursery, directory: Path):
        self.ctx = ctx
        self.reader = reader
        self.nursery = nursery
        self.directory = directory
        self.logs: list = []  # every workers/http/log.RequestLog the record sink was given
        self.backends: dict[tuple[str, int], Backend] = {}
        self.connects: list[dict] = []  # every upstream connect: key, address, port, tls, server_hostname, keepalive
        self.clients: list[Client] = []
        ctx.records.add_request_hook(self.logs.append)
        ctx.pools.connect = self._connect
        for cluster in self.snapshot.table.clusters.values():
            for endpoint in cluster.endpoints:
                self.backend(endpoint.address, endpoint.port)

    # configuration
    @property
    def snapshot(self):
        return self.ctx.current()

    def cluster(self, host: str, port: int = 80, subset: str = ""):
        """The ClusterRuntime of `host` (its balancer, circuit) in the current table."""
        name = f"outbound|{port}|{subset}|{host}"
        clusters = self.snapshot.clusters
        if name not in clusters:
            raise KeyError(f"no cluster {name} in {sorted(clusters)}")
        return clusters[name]

    def publish(self, config: str, options: Options | None = None) -> None:
        """A new table generation, as the supervisor's reload publishes it."""
        self.reader.publish(compile_payload(self.directory / f"gen{self.reader.generation + 1}", config, options))
        self.ctx.view.refresh()
        seed_balancers(self.ctx)

    def backend(self, address: str, port: int = 80) -> Backend:
        key = (address, port)
        if key not in self.backends:
            self.backends[key] = Backend(self, address, port)
        return self.backends[key]

    async def _connect(self, key, address, port, connect_timeout_s, tls=None, server_hostname=None, keepalive=None):
        """UpstreamPools.connect in memory: the same counters, a Backend on the other end."""
        pools = self.ctx.pools
        pool = pools.pool(key)
        self.connects.append({"key": key, "address": address, "port": port, "tls": tls, "server_hostname": server_hostname, "keepalive": keepalive})
        backend = self.backends.get((address, port))
        with trio.move_on_after(connect_timeout_s if connect_timeout_s > 0 else 3600):
            await trio.lowlevel.checkpoint()
            if backend is None or backend.refuse:
                raise ConnectFailure("connection failure, transport failure reason: Connection refused")
            if backend.blackhole:
                await trio.sleep_forever()
            if backend.connect_delay:
                await trio.sleep(backend.connect_delay)
            proxy_end, backend_end = pipe(f"proxy->{backend.name}", f"{backend.name}<-proxy")
            conn = BackendConnection(backend, backend_end, len(backend.connections))
            backend.connections.append(conn)
            self.nursery.start_soon(backend.serve, conn)
            pool.connects += 1
            pool.active += 1
            return UpstreamConnection(proxy_end, pools.client_codec(), key, local=f"10.255.0.1:{30000 + len(self.connects)}")
        raise ConnectFailure("connection timeout")

    # clients
    def listener_key(self, port: int = 80) -> str:
        for key, lr in self.snapshot.listeners.items():
            if lr.listener.port == port:
                return key
        raise KeyError(f"no listener on port {port}: {sorted(self.snapshot.listeners)}")

    def client(self, port: int = 80, peer: tuple = CLIENT_PEER, scheme: str = "http") -> Client:
        """A new client connection, served by serve_http_connection in the pair's nursery."""
        transport = FakeTransport(f"client{len(self.clients)}")
        down = Http1Downstream(self.ctx, transport, peer, ("10.9.9.9", port), scheme, self.listener_key(port))
        client = Client(self, transport, down)
        self.clients.append(client)
        self.ctx.registry.opened()

        async def serve() -> None:
            try:
                await serve_http_connection(down)
            finally:
                self.ctx.registry.closed()
                client.finished.set()

        self.nursery.start_soon(serve)
        return client

    async def request(self, data: bytes, method: bytes = b"GET", split="whole", port: int = 80) -> Response:
        """One request on a new connection; its response."""
        client = self.client(port)
        client.send(data, split)
        return await client.response(method)

    # time and sweeps
    async def settle(self) -> None:
        """Until every task is blocked: the proxy waits where the test led it."""
        await trio.testing.wait_all_tasks_blocked()

    def sweep(self) -> None:
        """The registry's idle and stream-idle sweep, now (virtual time)."""
        self.ctx.registry.sweep_timeouts(VirtualTime().monotonic())

    def check_clients_gone(self) -> None:
        self.ctx.registry.check_clients_gone()

    def start_sweeper(self) -> None:
        """The worker's own sweeper task (ConnectionRegistry.serve_sweeper), on the virtual clock."""
        self.nursery.start_soon(self.ctx.registry.serve_sweeper)


def seed_balancers(ctx: WorkerContext, seed: int = 1) -> None:
    """Balancers draw from their own random source (LEAST_REQUEST's two choices, RANDOM): seeded, so a test's
    endpoint choices are the same on every run."""
    for rt in ctx.current().clusters.values():
        rt.balancer.random = random.Random(seed)


@asynccontextmanager
async def proxy_pair(directory: Path, codec: str, config: str, *, options: Options | None = None, seed: int = 1):
    """A ProxyPair serving `config` (Istio YAML) with `codec` ("h11" or "httptools"); see the module's doc."""
    reader = StaticReader(compile_payload(Path(directory) / "gen1", config, options))
    saved = [(module, module.time) for module in VIRTUAL_CLOCK_MODULES]
    ctx = WorkerContext(0, reader, codec_classes(codec), rng=random.Random(seed))
    ctx.view.refresh()
    assert ctx.current() is not None
    seed_balancers(ctx, seed)
    try:
        for module, _ in saved:
            module.time = VirtualTime()
        async with trio.open_nursery() as nursery:
            ctx.background = nursery
            pair = ProxyPair(ctx, reader, nursery, Path(directory))
            try:
                yield pair
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for module, real in saved:
            module.time = real


def get(host: str, path: str = "/", *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    """A request head: `headers` as "name: value" strings."""
    lines = [f"{method} {path} HTTP/{version}", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(host: str, path: str, body: bytes, *headers: str, chunked: bool = False) -> bytes:
    if chunked:
        framing = "Transfer-Encoding: chunked"
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        framing = f"Content-Length: {len(body)}"
        payload = body
    return get(host, path, *headers, framing, method="POST") + payload
