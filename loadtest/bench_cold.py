"""Cold start and reload at scale (issue 13, item 5): configs of N VirtualServices, and for each
  - check:   wall time of `edge check` on them (a fresh process: imports, load, compile, report);
  - ready:   wall time from spawning `edge run` to its status port's /healthz/ready answering 200;
  - reload:  wall time from an edit of one VirtualService (written by rename, as editors do; the watcher sees
             it) to the supervisor logging that every worker serves the new generation;
  - RSS of the supervisor and of the largest worker (VmRSS), read 1 s after ready ("ready" columns) and again
    once the reload has settled (a reload leaves the previous table's freed memory behind).
Median of R runs per figure. Several source trees (--tree, repeatable: a checkout of another commit, e.g. a
`git worktree`) are measured interleaved, run by run, so that before/after share the machine's moment.

    python loadtest/bench_cold.py [--sizes 1000,10000] [--runs 3] [--workers 2] [--layout vs|split]
                                  [--tree DIR ...]

Layouts: "vs" = loadtest/confgen.edge_vhosts_conf_yaml in one file (the -vs<V> targets of bench.py: one
Gateway, one ServiceEntry, N VirtualServices of two routes each); "split" = loadtest/bench_compile.write_config
(100 documents a file; N VirtualServices of four rules, N ServiceEntries, N DestinationRules).
Targets: check ≤ 3 s and ready ≤ 3 s at 10,000 VirtualServices; supervisor ≤ 150 MiB, workers ≤ 60 MiB each.
Only the processes it starts are stopped, by PID. Prints the figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest import confgen  # noqa: E402
from loadtest.bench_compile import write_config  # noqa: E402

READY_TIMEOUT_S = 180.0
EDIT_FROM = "h00001.vhosts.bench.local"  # layout vs
EDIT_TO = "h00001-edited.vhosts.bench.local"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(directory: Path, layout: str, count: int) -> Path:
    """The config; returns the file the reload edit rewrites."""
    if layout == "vs":
        path = directory / "bench.yaml"
        path.write_text(confgen.edge_vhosts_conf_yaml(free_port(), count))
        return path
    write_config(str(directory), count)
    return directory / "vs-000000.yaml"


def edit(path: Path, layout: str) -> None:
    text = path.read_text()
    if layout == "vs":
        text = text.replace(EDIT_FROM, EDIT_TO, 1)
    else:
        text = text.replace("svc1.bench.example.com", "svc1-edited.bench.example.com", 1)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz/ready")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_log(log: Path, pattern: re.Pattern, proc: subprocess.Popen, timeout: float = READY_TIMEOUT_S) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if pattern.search(log.read_text(errors="replace")):
            return time.perf_counter()
        if proc.poll() is not None:
            raise RuntimeError(f"edge exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.005)
    raise RuntimeError(f"timed out waiting for {pattern.pattern!r} in {log}")


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def time_check(tree: Path, config: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edge", "check", str(config)], cwd=tree, env=env_for(tree), capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"edge check failed ({done.returncode}): {done.stdout[-1000:]}{done.stderr[-1000:]}")
    return elapsed


def time_run(tree: Path, config: Path, edited: Path, layout: str, workers: int, work: Path) -> dict[str, float]:
    ports = {name: free_port() for name in ("gateway", "status", "metrics", "admin")}
    log = work / "edge.log"
    argv = [
        sys.executable, "-m", "edge", "run", "--config", str(config), "--workers", str(workers),
        "--port-map", f"{confgen.GATEWAY_PORT}={ports['gateway']},443={free_port()}",
        "--status-port", str(ports["status"]), "--metrics-port", str(ports["metrics"]),
        "--admin-port", str(ports["admin"]), "--access-log", "off", "--credentials-dir", str(work / "credentials"),
    ]
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=tree, env=env_for(tree), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not ready(ports["status"]):
            if proc.poll() is not None:
                raise RuntimeError(f"edge exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if time.perf_counter() - t0 > READY_TIMEOUT_S:
                raise RuntimeError("edge run: not ready in time")
            time.sleep(0.005)
        t_ready = time.perf_counter() - t0
        time.sleep(1.0)  # let the watcher settle before the edit
        ready_pids = children(proc.pid)
        ready_figures = {
            "supervisor_ready_mib": rss_mib(proc.pid),
            "worker_ready_mib": max((rss_mib(p) for p in ready_pids), default=float("nan")),
        }
        t1 = time.perf_counter()
        edit(edited, layout)
        t2 = wait_log(log, re.compile(r"generation 2 is served by every worker"), proc)
        time.sleep(1.0)
        pids = children(proc.pid)
        figures = {
            "ready": t_ready,
            "reload": t2 - t1,
            "supervisor_mib": rss_mib(proc.pid),
            "worker_mib": max((rss_mib(p) for p in pids), default=float("nan")),
            **ready_figures,
        }
        return figures
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layout", choices=("vs", "split"), default="vs")
    parser.add_argument("--tree", action="append", type=Path, help="source tree to run edge from (default: this one)")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[tuple[Path, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-bench-cold-") as tmp:
        for size in sizes:
            for run in range(args.runs):
                for tree in trees:
                    work = Path(tmp) / f"{size}-{run}-{trees.index(tree)}"
                    config = work / "conf"
                    config.mkdir(parents=True)
                    edited = write(config, args.layout, size)
                    figures = {"check": time_check(tree, config)}
                    figures.update(time_run(tree, config, edited, args.layout, args.workers, work))
                    for key, value in figures.items():
                        results.setdefault((tree, size), {}).setdefault(key, []).append(value)
                    print(f"  {size:>6} VS  run {run + 1}  {tree}: " + "  ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
    print(f"\nlayout {args.layout}, {args.workers} workers, median of {args.runs} runs")
    print(f"{'tree':<28} {'VS':>6} {'check s':>8} {'ready s':>8} {'reload s':>9} {'super MiB':>10} {'worker MiB':>11} {'super@ready':>12} {'worker@ready':>13}")
    for (tree, size), figures in results.items():
        m = {k: statistics.median(v) for k, v in figures.items()}
        print(f"{str(tree)[-28:]:<28} {size:>6} {m['check']:>8.2f} {m['ready']:>8.2f} {m['reload']:>9.2f} {m['supervisor_mib']:>10.1f} {m['worker_mib']:>11.1f} {m['supervisor_ready_mib']:>12.1f} {m['worker_ready_mib']:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
