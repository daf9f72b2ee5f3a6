# TLS and L4 benchmark: edge against nginx and against a direct connection, on the same backend, in one run.
#
#   .venv/bin/python -m loadtest.bench_tls [--workers 1] [--rounds 3] [--duration 8] [--warmup 2]
#        [--connections 64] [--transfer-mb 256] [--keep-tmp] [--no-save]
#
# What is measured (every round measures every target once, interleaved, so drift hits all alike):
#   HTTPS requests/s (wrk over TLS 1.3, keep-alive, GET / → the backend's 64-byte answer):
#     nginx-tls    nginx terminating TLS (worker_processes = --workers), proxy_pass with keepalive
#     edge-https   edge terminating TLS (Gateway HTTPS SIMPLE, --workers workers)
#     edge-http    edge on plain HTTP, for the cost of TLS inside edge
#   New TLS connections/s (issue 13, item 6): the same wrk with `-H "Connection: close"`, one request per connection:
#     nginx-tls-close, edge-https-close (and edge-http-close: plain HTTP, for what TLS adds to a new connection
#     inside edge). wrk keeps its SSL object across reconnects (SSL_clear), so it offers the last session again:
#     these are mostly RESUMED handshakes (TLS 1.3: PSK with ECDHE), as a browser's would be. Hence also:
#   Handshakes/s with openssl s_time (one client, sequential, GET / per connection; s_time's GET is HTTP/1.0
#   without Host, which edge answers 400 itself as Envoy does, and nginx-tls forwards to the backend's 400), against
#   nginx-tls and edge-https: `-new` (full TLS 1.3 handshakes, ECDSA P-256 + X25519) and `-reuse` (session
#   resumption), and a resumption check: RESUMPTION_PROBES Python clients each offer the session (ticket) of the
#   previous connection; how many were resumed (with several workers a ticket only resumes on the worker that
#   issued it).
#   Throughput in MB/s (curl, one stream, a --transfer-mb blob; download = backend → client, upload the other
#   way):
#     direct-tcp        curl http:// straight to the backend
#     edge-tcp          through a Gateway TCP server (raw splice)
#     direct-tls        curl https:// straight to the backend's TLS port
#     edge-passthrough  through a Gateway TLS PASSTHROUGH server (SNI routing, then splice)
#   plus the CPU seconds edge's processes used per request / per GB in the window.
# Ratios quoted: edge-https/nginx-tls (req/s), edge-tcp/direct-tcp and edge-passthrough/direct-tls (MB/s).
# The backend is one nginx: GET / → 64 bytes, GET /blob → the blob (sendfile), PUT /upload → body read and
# dropped, on a plain and a TLS port. Certificates: one trustme ECDSA P-256 leaf for every TLS endpoint.
# Bounds: every child has a timeout; every process started is stopped by PID in `finally`; the temp dir is
# removed. Results: loadtest/results/<timestamp>-tls-<sha>.json (gitignored).
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

from loadtest import procstat, targets
from loadtest.bench import (
    JSON_MARK,
    WRK_DIR,
    LoadFailed,
    git_short_sha,
    machine,
    tool_versions,
)
from loadtest.confgen import BACKEND_BODY
from loadtest.targets import StartFailed

LOADTEST_DIR = Path(__file__).resolve().parent
REPO_DIR = LOADTEST_DIR.parent
RESULTS_DIR = LOADTEST_DIR / "results"
SNI = "bench.example"
LOAD_GRACE_S = 30.0
TRANSFER_TIMEOUT_S = 120.0
RPS_TARGETS = ("nginx-tls", "edge-https", "edge-http", "nginx-tls-close", "edge-https-close", "edge-http-close")
HANDSHAKE_TARGETS = ("nginx-tls", "edge-https")
HANDSHAKE_MODES = ("new", "reuse")
RESUMPTION_PROBES = 20
S_TIME_GRACE_S = 30.0
TRANSFER_TARGETS = ("direct-tcp", "edge-tcp", "direct-tls", "edge-passthrough")
DIRECTIONS = ("download", "upload")
RATIOS = (
    ("https req/s", "edge-https", "nginx-tls", "rps"),
    ("new TLS connections/s (wrk close)", "edge-https-close", "nginx-tls-close", "rps"),
    ("full handshakes/s (s_time -new)", "edge-https", "nginx-tls", "new"),
    ("resumed handshakes/s (s_time -reuse)", "edge-https", "nginx-tls", "reuse"),
    ("tcp download MB/s", "edge-tcp", "direct-tcp", "download"),
    ("tcp upload MB/s", "edge-tcp", "direct-tcp", "upload"),
    ("passthrough download MB/s", "edge-passthrough", "direct-tls", "download"),
    ("passthrough upload MB/s", "edge-passthrough", "direct-tls", "upload"),
)
# Gateway port numbers as the YAML has them (mapped to free loopback ports with --port-map).
HTTP_PORT, HTTPS_PORT, TCP_PORT, PASSTHROUGH_PORT = 80, 443, 31400, 8443


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="loadtest.bench_tls", description=__doc__)
    p.add_argument("--workers", type=int, default=1, help="edge workers and nginx-tls worker_processes (default 1)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=8, help="measured seconds per req/s target")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", type=int, default=64, help="wrk -c")
    p.add_argument("--transfer-mb", type=int, default=256, help="size of the blob moved per throughput sample")
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------
# Configs (pure: values in, text out)


def nginx_head(tmp: Path, name: str, workers: int) -> str:
    temp = tmp / f"{name}-temp"
    paths = "".join(f"    {d}_temp_path {temp}/{d.split('_')[0]};\n" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (
        f"daemon off;\nmaster_process on;\nworker_processes {workers};\npid {tmp}/{name}.pid;\n"
        f"error_log {tmp}/{name}-error.log warn;\nworker_rlimit_nofile 65536;\nevents {{ worker_connections 16384; }}\n"
        f"http {{\n    access_log off;\n    keepalive_requests 10000000;\n    keepalive_timeout 300s;\n"
        f"    default_type application/octet-stream;\n    sendfile on;\n{paths}"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
    )


def backend_conf(tmp: Path, http_port: int, tls_port: int, cert: Path, key: Path) -> str:
    body = BACKEND_BODY.replace("\n", "\\n")
    locations = (
        f'        location / {{ return 200 "{body}"; }}\n'
        f"        location = /blob {{ root {tmp}/www; }}\n"
        '        location = /upload { client_max_body_size 0; return 200 "stored\\n"; }\n'
    )
    return nginx_head(tmp, "backend", 1) + (
        f"    server {{\n        listen 127.0.0.1:{http_port} backlog=4096;\n{locations}    }}\n"
        f"    server {{\n        listen 127.0.0.1:{tls_port} ssl backlog=4096;\n"
        f"        ssl_certificate {cert};\n        ssl_certificate_key {key};\n{locations}    }}\n}}\n"
    )


def nginx_tls_conf(tmp: Path, port: int, backend_port: int, cert: Path, key: Path, workers: int) -> str:
    return nginx_head(tmp, "nginx-tls", workers) + (
        f"    upstream backend {{\n        server 127.0.0.1:{backend_port};\n        keepalive 64;\n"
        "        keepalive_requests 10000000;\n    }\n"
        "    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n    proxy_set_header Host $http_host;\n"
        f"    server {{\n        listen 127.0.0.1:{port} ssl backlog=4096;\n        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n        location / {{ proxy_pass http://backend; }}\n    }}\n}}\n"
    )


def edge_conf(backend_http: int, backend_tls: int, cert: Path, key: Path) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bench}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
    hosts: ["*"]
  - port: {{number: {HTTPS_PORT}, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}
  - port: {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: {PASSTHROUGH_PORT}, name: tls, protocol: TLS}}
    hosts: [{SNI}]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench}}
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
  - route: [{{destination: {{host: backend.bench.internal, port: {{number: 80}}}}}}]
  tcp:
  - match: [{{port: {TCP_PORT}}}]
    route: [{{destination: {{host: backend.bench.internal, port: {{number: 80}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench-tls}}
spec:
  hosts: [{SNI}]
  gateways: [bench]
  tls:
  - match: [{{sniHosts: [{SNI}]}}]
    route: [{{destination: {{host: backend-tls.bench.internal, port: {{number: 443}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend.bench.internal]
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend_http}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend-tls}}
spec:
  hosts: [backend-tls.bench.internal]
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {backend_tls}}}}}]
"""


# ---------------------------------------------------------------------------------------------------------
# Processes


def tls_ready(port: int) -> bool:
    result = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                             "--resolve", f"{SNI}:{port}:127.0.0.1", f"https://{SNI}:{port}/"],
                            capture_output=True, text=True, timeout=10, check=False)
    return result.stdout == "200"


def start_nginx(name: str, conf: str, tmp: Path, ready) -> targets.Proc:
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    (tmp / f"{name}-temp").mkdir(exist_ok=True)
    proc = targets.spawn(name, [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp), "-c", str(path), "-e",
                                str(tmp / f"{name}-error.log")], tmp)
    try:
        targets.wait_ready(proc, ready, f"nginx ({name})")
    except StartFailed as exc:
        errors = tmp / f"{name}-error.log"
        targets.stop(proc)
        raise StartFailed(f"{exc}\n{errors.read_text()[-2000:] if errors.exists() else ''}") from None
    return proc


def start_edge(tmp: Path, conf: str, workers: int) -> tuple[targets.Proc, dict[int, int]]:
    conf_dir = tmp / "edge-conf"
    conf_dir.mkdir()
    (conf_dir / "bench.yaml").write_text(conf)
    gateway = {p: targets.free_port() for p in (HTTP_PORT, HTTPS_PORT, TCP_PORT, PASSTHROUGH_PORT)}
    status, metrics, admin = (targets.free_port() for _ in range(3))
    argv = [sys.executable, "-m", "edge", "run", "--config", str(conf_dir), "--workers", str(workers),
            "--port-map", ",".join(f"{g}={b}" for g, b in gateway.items()), "--status-port", str(status),
            "--metrics-port", str(metrics), "--admin-port", str(admin), "--access-log", "off"]
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
    proc = targets.spawn("edge", argv, tmp, env)
    ready = lambda: targets.http_status(status, targets.MixEntry("GET", "127.0.0.1", "/healthz/ready", 0, 1)) == 200
    try:
        targets.wait_ready(proc, ready, "edge")
    except StartFailed:
        targets.stop(proc)
        raise
    return proc, gateway


# ---------------------------------------------------------------------------------------------------------
# Load


def wrk(url: str, connections: int, seconds: int, close: bool = False) -> dict:
    argv = ["wrk", "-t1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s", "-s", str(WRK_DIR / "report.lua"), url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + LOAD_GRACE_S, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(JSON_MARK):
            return json.loads(line[len(JSON_MARK):])
    raise LoadFailed(f"wrk printed no result: {(done.stderr or done.stdout)[-500:]}")


def curl_transfer(url: str, direction: str, blob: Path, port: int | None) -> tuple[float, int]:
    """(seconds, bytes) of one transfer."""
    argv = ["curl", "-sS", "--fail", "-o", "/dev/null", "--max-time", str(int(TRANSFER_TIMEOUT_S)), "-k"]
    if port is not None:
        argv += ["--resolve", f"{SNI}:{port}:127.0.0.1"]
    if direction == "download":
        argv += ["-w", "%{time_total} %{size_download}", url + "/blob"]
    else:
        argv += ["-T", str(blob), "-w", "%{time_total} %{size_upload}", url + "/upload"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TRANSFER_TIMEOUT_S + 10, check=False)
    if done.returncode != 0:
        raise LoadFailed(f"curl {direction} {url}: {done.stderr.strip()[-300:]}")
    seconds, size = done.stdout.split()
    return float(seconds), int(float(size))


def s_time(port: int, mode: str, seconds: int) -> dict:
    """openssl s_time against 127.0.0.1:port: connections/s (wall clock) with full handshakes (`new`) or resumed
    ones (`reuse`), and how many of them were resumed (s_time prints `r` per resumed connection)."""
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-www", "/", "-time", str(seconds), f"-{mode}"]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + S_TIME_GRACE_S, check=False)
    wall = time.monotonic() - started
    match = re.search(r"(\d+) connections in [\d.]+s", done.stdout)
    if match is None:
        raise LoadFailed(f"s_time printed no result: {(done.stderr or done.stdout)[-300:]}")
    count = int(match.group(1))
    # s_time prints one character per connection: r resumed, * (or t, 3: older versions) a full handshake.
    progress = max(re.findall(r"[*rt3]+", done.stdout[: match.start()]), key=len, default="")
    return {"rps": count / wall, "connections": count, "resumed": progress.count("r")}


def resumption_probe(port: int, count: int = RESUMPTION_PROBES) -> int:
    """Python clients, each offering the session of the previous connection (TLS 1.3 tickets): how many resumed."""
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    session = None
    resumed = 0
    for _ in range(count + 1):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client.wrap_socket(raw, server_hostname=SNI, session=session) as sock:
                resumed += sock.session_reused
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {SNI}\r\nConnection: close\r\n\r\n".encode())
                while sock.recv(65536):  # the answer, and the tickets sent after the handshake
                    pass
                session = sock.session
    return resumed


def cpu_of(proc: targets.Proc | None):
    return procstat.cpu_snapshot(proc.pids()) if proc is not None else {}


# ---------------------------------------------------------------------------------------------------------
# Run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    missing = [tool for tool in ("nginx", "wrk", "curl") if not (shutil.which(tool) or (tool == "nginx" and Path("/usr/sbin/nginx").exists()))]
    if missing:
        print(f"missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(SystemExit(128 + signum)))
    started_at = time.strftime("%Y%m%dT%H%M%S")
    sha = git_short_sha()
    tmp = Path(tempfile.mkdtemp(prefix="edge-bench-tls-"))
    tmp.chmod(0o755)  # nginx workers run as nobody when started by root
    procs: list[targets.Proc] = []
    rounds: list[dict] = []
    try:
        ca = trustme.CA()
        leaf = ca.issue_cert(SNI, "127.0.0.1")
        cert, key = tmp / "bench.crt", tmp / "bench.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        for path in (cert, key):
            path.chmod(0o644)
        (tmp / "www").mkdir()
        blob = tmp / "www" / "blob"
        with open(blob, "wb") as f:
            f.truncate(args.transfer_mb * 1024 * 1024)
        http_port, tls_port = targets.free_port(), targets.free_port()
        backend = start_nginx("backend", backend_conf(tmp, http_port, tls_port, cert, key), tmp,
                              lambda: targets.http_status(http_port, targets.MixEntry("GET", "127.0.0.1", "/", 0, 1)) == 200)
        procs.append(backend)
        nginx_port = targets.free_port()
        nginx_tls = start_nginx("nginx-tls", nginx_tls_conf(tmp, nginx_port, http_port, cert, key, args.workers), tmp,
                                lambda: tls_ready(nginx_port))
        procs.append(nginx_tls)
        edge, gw = start_edge(tmp, edge_conf(http_port, tls_port, cert, key), args.workers)
        procs.append(edge)
        if not tls_ready(gw[HTTPS_PORT]) or not tls_ready(gw[PASSTHROUGH_PORT]):
            raise StartFailed(f"edge does not answer over TLS; log tail:\n{edge.log_tail()}")
        rps_urls = {
            "nginx-tls": (f"https://127.0.0.1:{nginx_port}/", nginx_tls),
            "edge-https": (f"https://127.0.0.1:{gw[HTTPS_PORT]}/", edge),
            "edge-http": (f"http://127.0.0.1:{gw[HTTP_PORT]}/", edge),
            "nginx-tls-close": (f"https://127.0.0.1:{nginx_port}/", nginx_tls),
            "edge-https-close": (f"https://127.0.0.1:{gw[HTTPS_PORT]}/", edge),
            "edge-http-close": (f"http://127.0.0.1:{gw[HTTP_PORT]}/", edge),
        }
        handshake_ports = {"nginx-tls": (nginx_port, nginx_tls), "edge-https": (gw[HTTPS_PORT], edge)}
        transfer_urls = {
            "direct-tcp": (f"http://127.0.0.1:{http_port}", None, None),
            "edge-tcp": (f"http://127.0.0.1:{gw[TCP_PORT]}", None, edge),
            "direct-tls": (f"https://{SNI}:{tls_port}", tls_port, None),
            "edge-passthrough": (f"https://{SNI}:{gw[PASSTHROUGH_PORT]}", gw[PASSTHROUGH_PORT], edge),
        }
        print(f"bench_tls {started_at} ({sha}): {args.workers} worker(s) for edge and nginx-tls; wrk -c{args.connections}, "
              f"{args.rounds} rounds x {args.duration} s (+{args.warmup} s warm-up); transfers of {args.transfer_mb} MB; tmp {tmp}")
        for round_no in range(1, args.rounds + 1):
            results: dict = {"rps": {}, "download": {}, "upload": {}, "new": {}, "reuse": {}}
            for name, (url, proc) in rps_urls.items():
                close = name.endswith("-close")
                if args.warmup:
                    wrk(url, args.connections, args.warmup, close)
                before = cpu_of(proc)
                load = wrk(url, args.connections, args.duration, close)
                cpu_s = procstat.cpu_delta_s(before, cpu_of(proc))
                results["rps"][name] = {"rps": load["rps"], "errors": load["errors"], "latency_us": load["latency_us"],
                                        "cpu_us_per_req": cpu_s * 1e6 / load["requests"] if load["requests"] else None}
            for mode in HANDSHAKE_MODES:
                for name, (port, proc) in handshake_ports.items():
                    before = cpu_of(proc)
                    run = s_time(port, mode, args.duration)
                    cpu_s = procstat.cpu_delta_s(before, cpu_of(proc))
                    results[mode][name] = {**run, "cpu_us_per_req": cpu_s * 1e6 / run["connections"] if run["connections"] else None}
            results["resumption_probe"] = {name: resumption_probe(port) for name, (port, _proc) in handshake_ports.items()}
            for direction in DIRECTIONS:
                for name, (url, port, proc) in transfer_urls.items():
                    curl_transfer(url, direction, blob, port)  # warm-up: page cache, connection setup paths
                    before = cpu_of(proc)
                    seconds, size = curl_transfer(url, direction, blob, port)
                    cpu_s = procstat.cpu_delta_s(before, cpu_of(proc)) if proc is not None else None
                    results[direction][name] = {"mb_s": size / seconds / 1e6, "seconds": seconds, "bytes": size,
                                                "edge_cpu_s_per_gb": cpu_s / (size / 1e9) if cpu_s is not None else None}
            rounds.append(results)
            print(f"round {round_no}/{args.rounds}: " + "  ".join(
                [f"{n} {r['rps']:.0f} req/s" for n, r in results["rps"].items()]
                + [f"s_time -{m} {n} {r['rps']:.0f}/s ({r['resumed']} resumed)" for m in HANDSHAKE_MODES for n, r in results[m].items()]
                + [f"probe {n} {k}/{RESUMPTION_PROBES} resumed" for n, k in results["resumption_probe"].items()]
                + [f"{d} {n} {r['mb_s']:.0f} MB/s" for d in DIRECTIONS for n, r in results[d].items()]))
        summary = summarize(rounds)
        print()
        print(render(summary, args))
        if not args.no_save:
            args.results_dir.mkdir(parents=True, exist_ok=True)
            path = args.results_dir / f"{started_at}-tls-{sha}.json"
            document = {"started_at": started_at, "git_sha": sha, "settings": {k: str(v) for k, v in vars(args).items()},
                        "machine": machine(), "versions": tool_versions(), "rounds": rounds, "summary": summary}
            path.write_text(json.dumps(document, indent=1) + "\n")
            print(f"\nresults: {path}")
        return 0
    except (StartFailed, LoadFailed) as exc:
        print(f"bench_tls failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started")
        return 130
    finally:
        for proc in reversed(procs):
            try:
                targets.stop(proc)
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"stopping {proc.name} (pid {proc.pid}) failed: {exc}", file=sys.stderr)
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds, and each ratio computed within a round, then its median (drift cancels)."""
    medians: dict = {}
    for kind, key in (("rps", "rps"), ("new", "rps"), ("reuse", "rps"), ("download", "mb_s"), ("upload", "mb_s")):
        names = rounds[0][kind].keys()
        medians[kind] = {n: statistics.median(r[kind][n][key] for r in rounds) for n in names}
        cpu_key = "cpu_us_per_req" if kind in ("rps", "new", "reuse") else "edge_cpu_s_per_gb"
        medians[kind + "_cpu"] = {n: statistics.median(v) for n in names
                                  if (v := [r[kind][n][cpu_key] for r in rounds if r[kind][n][cpu_key] is not None])}
    ratios = {}
    for label, a, b, kind in RATIOS:
        key = "rps" if kind in ("rps", "new", "reuse") else "mb_s"
        ratios[label] = statistics.median(r[kind][a][key] / r[kind][b][key] for r in rounds)
    # Keep-alive HTTPS against plain HTTP inside edge: CPU per request, per round (target: within 10 %).
    ratios["https/http CPU per request (edge)"] = statistics.median(
        r["rps"]["edge-https"]["cpu_us_per_req"] / r["rps"]["edge-http"]["cpu_us_per_req"] for r in rounds)
    # What TLS adds to a new connection inside edge (handshake, session, close_notify), in CPU µs: a new HTTPS
    # connection with one request against a new plain-HTTP one, per round.
    tls_new_connection_cpu_us = statistics.median(
        r["rps"]["edge-https-close"]["cpu_us_per_req"] - r["rps"]["edge-http-close"]["cpu_us_per_req"] for r in rounds)
    resumption = {n: [r["resumption_probe"][n] for r in rounds] for n in rounds[0]["resumption_probe"]}
    return {"medians": medians, "ratios": ratios, "tls_new_connection_cpu_us": tls_new_connection_cpu_us,
            "resumption_probe": resumption}


def render(summary: dict, args: argparse.Namespace) -> str:
    m = summary["medians"]
    lines = [f"medians over {args.rounds} rounds ({args.workers} worker(s) for edge and nginx-tls)"]
    for name, value in m["rps"].items():
        cpu = m["rps_cpu"].get(name)
        lines.append(f"  {name:<18} {value:>10.0f} req/s" + (f"   {cpu:>7.0f} CPU µs/req" if cpu else ""))
    for mode in HANDSHAKE_MODES:
        for name, value in m[mode].items():
            cpu = m[mode + "_cpu"].get(name)
            lines.append(f"  s_time -{mode:<6} {name:<12} {value:>7.0f} connections/s" + (f"   {cpu:>7.0f} CPU µs/connection" if cpu else ""))
    for name, counts in summary["resumption_probe"].items():
        lines.append(f"  resumption probe {name:<12} {'/'.join(map(str, counts))} of {RESUMPTION_PROBES} resumed (per round)")
    for direction in DIRECTIONS:
        for name, value in m[direction].items():
            cpu = m[direction + "_cpu"].get(name)
            lines.append(f"  {direction:<8} {name:<17} {value:>7.0f} MB/s" + (f"   edge {cpu:.2f} CPU s/GB" if cpu else ""))
    lines.append("ratios (median of per-round ratios)")
    for label, value in summary["ratios"].items():
        lines.append(f"  {label:<28} {value:>6.2f}")
    lines.append(f"TLS CPU per new connection inside edge (edge-https-close − edge-http-close, median of rounds): "
                 f"{summary['tls_new_connection_cpu_us']:.0f} µs")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
