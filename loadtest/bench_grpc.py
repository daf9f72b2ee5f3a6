"""gRPC unary calls per second through edge vs direct to the same grpcio server, on loopback.

    python -m loadtest.bench_grpc [--calls N] [--concurrency C] [--seconds S] [--workers W]

One grpcio server (a generic unary echo handler, no protoc) behind a GRPC ServiceEntry port; `edge run` with a
GRPC Gateway server (h2c from the client, HTTP/2 to the server). C client threads share one channel and make
unary calls of a 32-byte message until N calls or S seconds, whichever comes first, first direct to the server,
then through edge. Prints calls/s of both, the ratio, and edge's CPU seconds per 1,000 calls. Asserts nothing;
bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.e2e.harness import EdgeProcess, child_pids  # noqa: E402

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.grpc]
  resolution: STATIC
  ports: [{number: 50051, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, ports: {grpc: PORT}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers: [{port: {number: 80, name: grpc, protocol: GRPC}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: echo.grpc}}]}]
"""


def start_server() -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(8))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Call": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def run(target: str, calls: int, concurrency: int, seconds: float) -> tuple[int, float]:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    method = channel.unary_unary("/bench.Echo/Call")
    payload = b"x" * 32
    done = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            with lock:
                if done >= calls:
                    return
                done += 1
            method(payload, timeout=10)

    for _ in range(50):  # warm up the connections
        method(payload, timeout=10)
    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    channel.close()
    return done, elapsed


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    server, port = start_server()
    try:
        direct_calls, direct_s = run(f"127.0.0.1:{port}", args.calls, args.concurrency, args.seconds)
        with tempfile.TemporaryDirectory() as tmp, EdgeProcess(Path(tmp), {"g.yaml": CONFIG.replace("PORT", str(port))}, workers=args.workers) as edge:
            pids = [edge.pid, *child_pids(edge.pid)]
            before = cpu_seconds(pids)
            edge_calls, edge_s = run(f"127.0.0.1:{edge.port(80)}", args.calls, args.concurrency, args.seconds)
            cpu = cpu_seconds(pids) - before
    finally:
        server.stop(0)
    direct_rate, edge_rate = direct_calls / direct_s, edge_calls / edge_s
    print(f"direct: {direct_calls} calls in {direct_s:.2f} s = {direct_rate:,.0f} calls/s")
    print(f"edge:   {edge_calls} calls in {edge_s:.2f} s = {edge_rate:,.0f} calls/s ({args.workers} worker(s), concurrency {args.concurrency})")
    print(f"ratio edge/direct: {edge_rate / direct_rate:.2f}; edge CPU: {cpu * 1000 / max(1, edge_calls):.2f} s per 1,000 calls")


if __name__ == "__main__":
    main()
