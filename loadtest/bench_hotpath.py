"""The worker's per-request path with no network: CPU µs per proxied request spent in edge's own Python.

    python -m loadtest.bench_hotpath [--codec h11|httptools|both] [--requests N] [--rounds R] [--config FILE]

A real worker objects (table, router, codec, header rules, pools, balancer, stats hooks) serve N keep-alive
requests on one connection whose transports are in memory: the client side hands over one request per
recv, the upstream side answers every request with the same small response at once. What is measured is
everything edge does for a request except system calls and trio's I/O waits — the part this project can
optimise in Python. Compare with the load test (`python -m loadtest.bench`) for the whole cost.
Prints the median over rounds of µs per request for each codec and their ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.compiler import CompileOptions, load_and_compile  # noqa: E402
from edge.table import encode_table  # noqa: E402

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /api/}, headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: be.local}}]
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: be.local}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: be}
spec:
  hosts: [be.local]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
"""

REQUEST = b"GET /api/items?page=2 HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 01:15:18 GMT\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 64\r\nConnection: keep-alive\r\n\r\n" + b"x" * 64
)


class ClientSide:
    """The downstream transport: one request per recv, then EOF."""

    def __init__(self, requests: int):
        self.left = requests
        self.sent = 0
        self.closed = False
        self.sock = None

    async def recv(self, max_bytes: int = 65536) -> bytes:
        if self.left <= 0:
            return b""
        self.left -= 1
        return REQUEST

    recv_waiting = recv

    def recv_nowait(self, max_bytes: int = 65536) -> bytes | None:
        return None  # a keep-alive client's next request is never there at once

    async def send_all(self, data) -> None:
        self.sent += 1

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class UpstreamSide:
    """An upstream connection's transport: the response is there as soon as a request was sent."""

    def __init__(self) -> None:
        self.closed = False
        self.pending = False

    async def send_all(self, data) -> None:
        self.pending = True

    async def recv(self, max_bytes: int = 65536) -> bytes:
        self.pending = False
        return RESPONSE

    recv_waiting = recv

    def recv_nowait(self, max_bytes: int = 65536) -> bytes | None:
        return None  # an idle pooled connection has nothing to say

    def has_unread(self) -> bool:
        return False  # the probe before reuse: nothing was said since the last response

    def close(self) -> None:
        self.closed = True


class StaticReader:
    """Stands in for the shared-memory reader: one table, generation 1."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def current_generation(self) -> int:
        return 1

    def read(self):
        return 1, self.payload


async def one_round(codec: str, requests: int, payload: bytes) -> float:
    from workers.context import WorkerContext
    from workers.http.downstream import Http1Downstream
    from workers.http.engines import codec_classes
    from workers.http.server import serve_http_connection
    from workers.upstream import UpstreamConnection

    ctx = WorkerContext(0, StaticReader(payload), codec_classes(codec))
    ctx.view.refresh()
    pools = ctx.pools

    async def connect(key, address, port, connect_timeout_s, tls=None, server_hostname=None, keepalive=None):
        pool = pools.pool(key)
        pool.connects += 1
        pool.active += 1
        return UpstreamConnection(UpstreamSide(), pools.client_codec(), key)

    pools.connect = connect
    client = ClientSide(requests)
    down = Http1Downstream(ctx, client, ("127.0.0.1", 40000), ("127.0.0.1", 80), "http", "0.0.0.0:80")
    started = time.perf_counter()
    await serve_http_connection(down)
    elapsed = time.perf_counter() - started
    assert client.sent == requests, f"{client.sent} responses for {requests} requests"
    return elapsed / requests * 1e6


def authz_policy(cidrs: int) -> str:
    """An ALLOW list of `cidrs` blocks in the root namespace (applies to every gateway); 127.0.0.1 is the last."""
    blocks = [f"10.{i % 256}.{i // 256}.0/24" for i in range(cidrs - 1)] + ["127.0.0.1"]  # not adjacent: nothing merges
    return "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-list, namespace: istio-system}\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [" + ", ".join(f'"{b}"' for b in blocks) + "]\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="both", choices=["h11", "httptools", "both"])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", default=None, help="a config file or directory instead of the built-in one")
    parser.add_argument("--authz-cidrs", type=int, default=0, metavar="N", help="add a mesh-wide ALLOW AuthorizationPolicy of N ipBlocks (the client's last)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.config
        if path is None:
            path = os.path.join(tmp, "bench.yaml")
            with open(path, "w") as f:
                f.write(CONFIG + (authz_policy(args.authz_cidrs) if args.authz_cidrs else ""))
        _, result = load_and_compile([path], CompileOptions())
    if result.table is None:
        print("\n".join(str(d) for d in result.diagnostics))
        return 1
    payload = encode_table(result.table)
    codecs = ["h11", "httptools"] if args.codec == "both" else [args.codec]
    figures: dict[str, list[float]] = {c: [] for c in codecs}
    for _ in range(args.rounds):
        for codec in codecs:  # interleaved, so drift on a shared machine hits both alike
            figures[codec].append(trio.run(one_round, codec, args.requests, payload))
    for codec in codecs:
        values = figures[codec]
        print(f"{codec:10s} {statistics.median(values):7.1f} µs/request (median of {len(values)}; min {min(values):.1f}, max {max(values):.1f})")
    if len(codecs) == 2:
        print(f"httptools / h11: ×{statistics.median(figures['httptools']) / statistics.median(figures['h11']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
