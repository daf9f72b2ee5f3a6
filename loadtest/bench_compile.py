"""Compile benchmark: 10,000 VirtualServices (plus a Gateway and their ServiceEntries) written as YAML into a
temporary directory, then load and compile timed separately (median of 3 runs each).

    python loadtest/bench_compile.py [--virtual-services N] [--runs R]

Target (issue 2): compiling 10,000 VirtualServices takes under 2 s. Prints the figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edge.compiler import CompileOptions, compile_resources  # noqa: E402
from edge.loader import load_paths  # noqa: E402
from edge.table import encode_table  # noqa: E402

DOCS_PER_FILE = 100
GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bench
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.bench.example.com"]
    tls: {mode: SIMPLE, credentialName: bench-cert}
"""


def virtual_service(i: int) -> str:
    """A realistic VirtualService: header, exact, regex and prefix rules, weights over two subsets."""
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: vs-{i}
spec:
  hosts: [svc{i}.bench.example.com]
  gateways: [bench]
  http:
  - name: canary-user
    match:
    - headers: {{x-user: {{exact: tester}}}}
    route: [{{destination: {{host: svc{i}.backend.internal, subset: v2}}}}]
  - name: item
    match:
    - uri: {{regex: "/items/[0-9]+"}}
    - uri: {{exact: /items}}
    route: [{{destination: {{host: svc{i}.backend.internal, subset: v1}}}}]
    timeout: 2s
    retries: {{attempts: 3, retryOn: "connect-failure,503"}}
  - name: api
    match:
    - uri: {{prefix: /api/}}
    rewrite: {{uri: /}}
    route:
    - {{destination: {{host: svc{i}.backend.internal, subset: v1}}, weight: 90}}
    - {{destination: {{host: svc{i}.backend.internal, subset: v2}}, weight: 10}}
  - route: [{{destination: {{host: svc{i}.backend.internal, subset: v1}}}}]
"""


def service_entry(i: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: svc-{i}
spec:
  hosts: [svc{i}.backend.internal]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints:
  - {{address: 10.{i // 250 % 256}.{i % 250}.1, labels: {{version: v1}}}}
  - {{address: 10.{i // 250 % 256}.{i % 250}.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: svc-{i}
spec:
  host: svc{i}.backend.internal
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def write_config(directory: str, count: int) -> None:
    with open(os.path.join(directory, "gateway.yaml"), "w") as f:
        f.write(GATEWAY)
    for start in range(0, count, DOCS_PER_FILE):
        stop = min(count, start + DOCS_PER_FILE)
        with open(os.path.join(directory, f"vs-{start:06d}.yaml"), "w") as f:
            f.write("---\n".join(virtual_service(i) for i in range(start, stop)))
        with open(os.path.join(directory, f"se-{start:06d}.yaml"), "w") as f:
            f.write("---\n".join(service_entry(i) for i in range(start, stop)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--virtual-services", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-compile-") as directory:
        write_config(directory, args.virtual_services)
        load_times, compile_times, encode_times = [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            loaded = load_paths([directory])
            t1 = time.perf_counter()
            result = compile_resources(loaded.resources, CompileOptions())
            t2 = time.perf_counter()
            payload = encode_table(result.table)
            t3 = time.perf_counter()
            assert loaded.ok and result.table is not None, [str(d) for d in (loaded.errors + result.errors)[:5]]
            load_times.append(t1 - t0)
            compile_times.append(t2 - t1)
            encode_times.append(t3 - t2)
        routes = sum(len(vh.routes) for listener in result.table.listeners for rc in [listener.route_config, *(c.route_config for c in listener.filter_chains)] if rc for vh in rc.virtual_hosts)
        print(f"resources:  {len(loaded.resources)} ({args.virtual_services} VirtualServices), {len(loaded.files)} files")
        print(f"table:      {len(result.table.listeners)} listeners, {routes} routes, {len(result.table.clusters)} clusters, {len(payload) / 1e6:.1f} MB msgpack")
        print(f"load:       {statistics.median(load_times):.3f} s (median of {args.runs})")
        print(f"compile:    {statistics.median(compile_times):.3f} s (median of {args.runs}; target < 2 s for 10,000 VirtualServices)")
        print(f"encode:     {statistics.median(encode_times):.3f} s (median of {args.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
