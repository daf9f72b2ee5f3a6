"""The connection boundary (workers/http/server.serve_http_connection, RecordSink.connection_failed): an unexpected
error while serving one connection is logged with its traceback once, counted, answered 500 when no response
had started, and ends that connection only.

In memory, with the transports of loadtest/bench_hotpath.py: the upstream transport raises an error no layer
expects (standing in for a bug anywhere below the proxy), which is the one thing a real socket cannot be made
to do on purpose. Everything above the transports is the real worker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from edge.compiler import CompileOptions, load_and_compile
from edge.table import encode_table
from loadtest.bench_hotpath import CONFIG, REQUEST, StaticReader, UpstreamSide
from workers.context import WorkerContext
from workers.http.downstream import Http1Downstream
from workers.http.engines import codec_classes
from workers.http.server import serve_http_connection
from workers.upstream import UpstreamConnection


class Client:
    """A downstream transport: `requests` whole requests, one per recv, then EOF; records what it was sent."""

    def __init__(self, requests: int):
        self.left = requests
        self.sent: list[bytes] = []
        self.closed = False
        self.sock = None

    async def recv(self, max_bytes: int = 65536) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.left <= 0:
            return b""
        self.left -= 1
        return REQUEST

    recv_waiting = recv

    def recv_nowait(self, max_bytes: int = 65536):
        return None

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class BrokenUpstream:
    """An upstream transport that fails in a way nothing expects."""

    closed = False

    async def send_all(self, data) -> None:
        await trio.lowlevel.checkpoint()

    async def recv(self, max_bytes: int = 65536) -> bytes:
        raise RuntimeError("a bug below the proxy")

    recv_waiting = recv

    def has_unread(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def make_context() -> WorkerContext:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(CONFIG)
        _, result = load_and_compile([str(path)], CompileOptions())
    ctx = WorkerContext(0, StaticReader(encode_table(result.table)), codec_classes("httptools"))
    ctx.view.refresh()
    return ctx


async def test_an_unexpected_error_ends_one_connection_with_500_and_is_counted(capsys):
    ctx = make_context()
    pools = ctx.pools
    broken = True

    async def connect(key, address, port, connect_timeout_s, tls=None, server_hostname=None, keepalive=None):
        pool = pools.pool(key)
        pool.active += 1
        transport = BrokenUpstream() if broken else UpstreamSide()
        return UpstreamConnection(transport, pools.client_codec(), key)

    pools.connect = connect
    records = []
    ctx.records.add_request_hook(records.append)  # what the access log and the metrics are given
    first = Client(requests=3)
    await serve_http_connection(Http1Downstream(ctx, first, ("127.0.0.1", 40000), ("127.0.0.1", 80), "http", "0.0.0.0:80"))
    assert first.closed
    assert len(first.sent) == 1 and first.sent[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close" in first.sent[0]
    assert ctx.records.connection_errors == 1
    assert [(r.status, r.details) for r in records] == [(500, "internal_error")]
    log = capsys.readouterr().err
    assert "failed; the worker goes on" in log and "RuntimeError: a bug below the proxy" in log and "Traceback" in log

    # The same error again: counted, logged in one line (no second traceback).
    again = Client(requests=1)
    await serve_http_connection(Http1Downstream(ctx, again, ("127.0.0.1", 40001), ("127.0.0.1", 80), "http", "0.0.0.0:80"))
    assert ctx.records.connection_errors == 2
    log = capsys.readouterr().err
    assert "traceback logged before" in log and "Traceback" not in log

    # The worker goes on: the next connection is served.
    broken = False
    fine = Client(requests=2)
    await serve_http_connection(Http1Downstream(ctx, fine, ("127.0.0.1", 40002), ("127.0.0.1", 80), "http", "0.0.0.0:80"))
    assert [chunk[:15] for chunk in fine.sent] == [b"HTTP/1.1 200 OK"] * 2
    assert ctx.records.connection_errors == 2
