# Per-request cost of the operations hooks, measured in-process: what a worker pays at the end of each HTTP
# request for metrics (workers/stats.py → the stats segment) and for an access-log line (workers/access_log.py),
# text or JSON, including the buffered write.
#
#   .venv/bin/python -m loadtest.bench_ops [--iterations 20000] [--repeat 15]
#
# Each figure is the best of --repeat runs of --iterations calls (the least disturbed by other load on a shared
# machine), in µs per request. Compare with the CPU µs/req that `python -m loadtest.bench` reports for a whole
# proxied request (`edge-2w` against `edge-2w-nostats`, `-json`, `-text` variants) to get the share.
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import h11

from edge.stats_shm import StatsSegment, SlotWriter
from workers.access_log import AccessLog
from workers.http.log import RequestLog
from workers.stats import WorkerStats


def sample_log() -> RequestLog:
    """A proxied GET as the proxy leaves it when the request ends (the descriptive fields stay lazy)."""
    request = h11.Request(
        method="GET",
        target="/api/v1/items?page=2",
        headers=[("host", "api.bench.local"), ("user-agent", "wrk"), ("accept", "*/*"), ("x-request-id", "8f0c2a3e-0000-4000-8000-123456789abc")],
    )
    down = SimpleNamespace(peer=("127.0.0.1", 51234), local=("127.0.0.1", 8080), listener_key="0.0.0.0:80", sni="")
    log = RequestLog(time.time(), down, request)
    log.status, log.flags, log.details = 200, "-", "via_upstream"
    log.upstream_host, log.upstream_cluster, log.route_name = "127.0.0.1:9000", "outbound|80||api.bench.local", "api-v1"
    log.bytes_sent, log.duration_ms, log.service_time_ms = 64, 1, 0
    return log


def best_us(fn, iterations: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter() - started) / iterations * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="per-request cost of the metrics and access-log hooks")
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    log = sample_log()
    segment = StatsSegment.create(1)
    writer = SlotWriter.attach(segment.name, 0)
    stats = WorkerStats(writer)
    rows = [("metrics: record_request", best_us(lambda: stats.record_request(log), args.iterations, args.repeat))]
    with tempfile.TemporaryDirectory(prefix="edge-bench-ops-") as tmp:
        for fmt in ("text", "json"):
            access = AccessLog(str(Path(tmp) / f"access-{fmt}.log"), fmt)

            def one() -> None:
                access.write(log)
                if access._buffered >= 64 * 1024:  # what the flusher does when the buffer is full
                    access.flush_now()

            rows.append((f"access log {fmt}: format + buffer + write", best_us(one, args.iterations, args.repeat)))
            access.close()
    writer.close()
    segment.close()
    metrics = rows[0][1]
    for name, us in rows:
        print(f"{name:45s} {us:6.2f} µs/request")
    print(f"{'metrics + JSON access log':45s} {metrics + rows[2][1]:6.2f} µs/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
