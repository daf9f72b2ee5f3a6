"""Router benchmark: time per request of workers/router.py (find_virtual_host + match) on tables compiled from
10 and from 10,000 VirtualServices (distinct hosts, a few routes each). Host lookup is a dict probe, so the
time per request should not grow with the number of hosts: the target is a ratio within 1.5x.

    python loadtest/bench_router.py [--requests N] [--runs R]

Prints the median and best of R runs, the sizes interleaved run by run; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge import istio  # noqa: E402
from edge.compiler import CompileOptions, compile_resources  # noqa: E402
from workers.router import Router  # noqa: E402

SIZES = (10, 10_000)
POOL = 4096  # distinct request objects cycled through (hosts spread over the whole table)
# Paths that hit the first route, a header route, a regex route, the weighted prefix route and the catch-all.
PATHS = ["/", "/items/42", "/items", "/api/v1/users", "/static/app.js", "/healthz"]
HEADERS = [
    (b"host", b""),
    (b"user-agent", b"curl/8.5.0"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"x-request-id", b"4f1c2a9e-0c1b-4d5e-9f00-123456789abc"),
    (b"cookie", b"session=abcdef0123456789; theme=dark"),
]


class Request:
    __slots__ = ("method", "path", "query", "authority", "scheme", "headers")

    def __init__(self, host: str, path: str, headers: list[tuple[bytes, bytes]]):
        self.method = "GET"
        self.path = path
        self.query = "page=2" if path.startswith("/api") else ""
        self.authority = host
        self.scheme = "http"
        self.headers = headers


def resources(count: int) -> list[istio.Resource]:
    def res(kind: str, name: str, spec: dict, order: int) -> istio.Resource:
        return istio.Resource(kind=kind, name=name, namespace="default", spec=istio.decode_spec(kind, spec), order=order)

    out = [res("Gateway", "bench", {"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}, 0)]
    out.append(
        res("ServiceEntry", "backend", {"hosts": ["backend.internal"], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC", "endpoints": [{"address": "10.0.0.1"}]}, 1)
    )
    for i in range(count):
        spec = {
            "hosts": [f"svc{i}.bench.example.com"],
            "gateways": ["bench"],
            "http": [
                {"match": [{"headers": {"x-user": {"exact": "tester"}}}], "route": [{"destination": {"host": "backend.internal"}}]},
                {"match": [{"uri": {"regex": "/items/[0-9]+"}}, {"uri": {"exact": "/items"}}], "route": [{"destination": {"host": "backend.internal"}}]},
                {"match": [{"uri": {"prefix": "/api/"}}], "route": [{"destination": {"host": "backend.internal"}}]},
                {"match": [{"uri": {"prefix": "/static/"}, "ignoreUriCase": True}], "route": [{"destination": {"host": "backend.internal"}}]},
                {"route": [{"destination": {"host": "backend.internal"}}]},
            ],
        }
        out.append(res("VirtualService", f"vs-{i}", spec, 2 + i))
    return out


def prepare(count: int):
    result = compile_resources(resources(count), CompileOptions(gateway_labels={}))
    assert result.table is not None
    router = Router(result.table.listeners[0].route_config)
    rng = random.Random(count)
    pool = []
    for _ in range(POOL):
        host = f"svc{rng.randrange(count)}.bench.example.com"
        headers = [(b"host", host.encode())] + HEADERS[1:]
        pool.append(Request(host, rng.choice(PATHS), headers))
    for req in pool:  # warm-up and sanity: every request finds its host and a route
        assert router.match(router.find_virtual_host(req.authority), req) is not None
    return router, pool


def time_once(router: Router, pool: list[Request], requests: int) -> float:
    find, match = router.find_virtual_host, router.match
    t0 = time.perf_counter_ns()
    for i in range(requests):
        req = pool[i & (POOL - 1)]
        match(find(req.authority), req)
    return (time.perf_counter_ns() - t0) / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    prepared = {count: prepare(count) for count in SIZES}
    samples: dict[int, list[float]] = {count: [] for count in SIZES}
    for _ in range(args.runs):  # sizes interleaved, so that load from other processes hits both alike
        for count in SIZES:
            samples[count].append(time_once(*prepared[count], args.requests))
    for count in SIZES:
        ns = samples[count]
        print(f"{count:>6} VirtualServices: {statistics.median(ns) / 1000:.2f} µs per request (median of {args.runs}; best {min(ns) / 1000:.2f} µs)")
    small, large = SIZES
    print(f"ratio {large} / {small}: {statistics.median(samples[large]) / statistics.median(samples[small]):.2f}x median, {min(samples[large]) / min(samples[small]):.2f}x best (target within 1.5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
