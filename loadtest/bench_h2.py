# HTTP/2 from clients, measured: h2load (h2c with prior knowledge, -c 16 -m 10) through edge and through nginx with
# HTTP/2 on its listening side, both in front of the same nginx HTTP/1.1 backend (loadtest/targets.py), in one run,
# rounds interleaved. Quoted: requests/s, CPU per request (the proxy's process tree, user + system) and the ratios.
#
#   .venv/bin/python -m loadtest.bench_h2 [--workers 1] [--requests 20000] [--rounds 3]
#
# nginx 1.22 (Debian 12) turns HTTP/2 on with `listen ... http2` (1.25's `http2 on` is the same switch).
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from loadtest import confgen, procstat, targets

H2LOAD_CLIENTS = 16
H2LOAD_STREAMS = 10


def start_nginx_h2(tmp: Path, backend_port: int, workers: int) -> targets.Target:
    port = targets.free_port()
    text = confgen.proxy_nginx_conf(tmp, port, backend_port, workers).replace("nginx-proxy", "nginx-h2")
    text = re.sub(rf"listen 127\.0\.0\.1:{port}( default_server backlog=4096)?;", rf"listen 127.0.0.1:{port} http2\1;", text)
    conf = tmp / "nginx-h2.conf"
    conf.write_text(text)
    (tmp / "nginx-h2-temp").mkdir(exist_ok=True)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = targets.spawn("nginx-h2", [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-h2-error.log")], tmp)
    time.sleep(0.5)
    return targets.Target("nginx-h2", "nginx", port, proc, {"port": port, "workers": workers})


def h2load(port: int, requests: int) -> float:
    """Requests/s of one h2load run against http://127.0.0.1:PORT/ (prior knowledge); fails loudly on errors."""
    out = subprocess.run(
        ["h2load", "-c", str(H2LOAD_CLIENTS), "-m", str(H2LOAD_STREAMS), "-n", str(requests), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out.stdout)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out.stdout)
    if out.returncode != 0 or done is None or rate is None or done.group(1) != done.group(2):
        raise RuntimeError(f"h2load failed:\n{out.stdout}\n{out.stderr}")
    return float(rate.group(1))


def warm_up(target: targets.Target, timeout_s: float = 15.0) -> None:
    """A first h2load run once the target answers (nginx is started without a readiness probe here)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            h2load(target.port, 2000)
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def measure(target: targets.Target, requests: int) -> tuple[float, float]:
    """(requests/s, CPU µs per request) of one round."""
    pids = target.proc.pids()
    before = procstat.cpu_snapshot(pids)
    try:
        rate = h2load(target.port, requests)
    except RuntimeError as exc:
        raise RuntimeError(f"{target.name} (alive: {target.proc.alive()}): {exc}\n{target.proc.log_tail()}") from None
    cpu = procstat.cpu_delta_s(before, procstat.cpu_snapshot(pids))
    return rate, cpu / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install -y nghttp2-client")
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp_text:
        tmp = Path(tmp_text)
        backend = targets.start_backend(tmp, 1)
        started = []
        try:
            nginx = start_nginx_h2(tmp, backend.port, args.workers)
            started.append(nginx)
            edge = targets.start_edge(f"edge-{args.workers}w", tmp, backend.port, args.workers, targets.default_edge_bin())
            started.append(edge)
            for target in (nginx, edge):
                warm_up(target)
            results: dict[str, list[tuple[float, float]]] = {"nginx-h2": [], "edge": []}
            for _ in range(args.rounds):
                results["nginx-h2"].append(measure(nginx, args.requests))
                results["edge"].append(measure(edge, args.requests))
        finally:
            for target in [*started, backend]:
                targets.stop(target.proc)
    medians = {name: (statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows)) for name, rows in results.items()}
    print(f"h2load -c {H2LOAD_CLIENTS} -m {H2LOAD_STREAMS}, {args.requests} requests x {args.rounds} rounds, {args.workers} worker(s); medians")
    for name, (rate, cpu) in medians.items():
        print(f"  {name:9s} {rate:10.0f} req/s {cpu:8.1f} µs CPU/request")
    (n_rate, n_cpu), (e_rate, e_cpu) = medians["nginx-h2"], medians["edge"]
    print(f"  edge/nginx: {e_rate / n_rate:.2f}x requests/s, {e_cpu / n_cpu:.1f}x CPU per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
