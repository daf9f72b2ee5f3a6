# Scale of edge (issue 7, item 3): throughput from 1 to 2 workers, and what idle keep-alive connections cost.
#
#   .venv/bin/python -m loadtest.bench_scale [--rounds 3] [--duration 8] [--warmup 2] [--idle 0,1000,10000]
#        [--worker-targets edge-1w,edge-2w,edge-1w-fast,edge-2w-fast]
#        [--idle-targets edge-2w,edge-2w-fast,nginx-proxy] [--plot loadtest/scale.png] [--label TEXT]
#   .venv/bin/python -m loadtest.bench_scale --replot loadtest/results/scale-….json   (redraw the plot only)
#
# Part 1, workers: the worker targets are started once and measured in interleaved rounds exactly like
# loadtest.bench does (wrk -t1 -c64 GET /, warm-up, then CPU and RSS over the measured window).
# Part 2, connections: for every round, idle level and idle target (in that order) a FRESH target is started
# (so RSS shows that level, not the high-water mark of an earlier one), then this process opens `idle`
# keep-alive connections to it, sends one GET on each and reads the answer (so every connection has served a
# request and sits in the proxy's keep-alive state), waits SETTLE_S, reads RSS and open fds per process, runs
# the same wrk load (64 connections) beside them, reads RSS again, checks how many idle connections are still
# open, closes them with RST (SO_LINGER 0: no TIME_WAIT pile-up across rounds), and stops the target by PID.
# Bounds: at most MAX_IDLE idle connections, opened at most OPEN_WINDOW at a time, within OPEN_TIMEOUT_S;
# the open-file limit of this process is raised (soft up to the hard limit) with resource.setrlimit. edge
# keeps its default --max-connections-per-worker (10,000), enough for 10,000 + 64 over 2 workers, so the
# idle part is for 2-worker targets (1 worker would refuse connections above 10,000).
# Every process started is stopped by PID in `finally` (loadtest.targets.stop); the temp dir is removed.
# The per-connection figure (issue 13, item 4) is the workers' summed RSS growth per idle connection: with N idle
# connections against none, in the same round, read after SETTLE_S and before the wrk load, median over rounds
# (`--idle 0,10000 --worker-targets ''` measures only that). nginx-proxy's is its workers' growth likewise.
# Output: tables on stdout (a markdown copy for loadtest/README.md), JSON in loadtest/results/, the plot.
from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest import bench, procstat, report, targets
from loadtest.targets import StartFailed, Target

LOADTEST_DIR = Path(__file__).resolve().parent
DEFAULT_PLOT = LOADTEST_DIR / "scale.png"
MAX_IDLE = 15_000
OPEN_WINDOW = 256  # connections being opened at once: well under the listen backlogs (4096)
OPEN_TIMEOUT_S = 120.0
SETTLE_S = 1.0
FD_HEADROOM = 512


class IdleFailed(Exception):
    """The idle connections could not be opened; the message says why."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_scale", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per target per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--idle", default="0,1000,10000", help="idle keep-alive connection counts")
    parser.add_argument("--worker-targets", default="edge-1w,edge-2w,edge-1w-fast,edge-2w-fast",
                        help="part 1 (empty: skip)")
    parser.add_argument("--idle-targets", default="edge-2w,edge-2w-fast,nginx-proxy", help="part 2 (empty: skip)")
    parser.add_argument("--edge-bin", type=Path, default=targets.default_edge_bin())
    parser.add_argument("--plot", default=str(DEFAULT_PLOT), help="PNG path ('' = no plot)")
    parser.add_argument("--results-dir", type=Path, default=bench.RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--label", default=None, help="what was measured, for the plot title (default: git short sha)")
    parser.add_argument("--replot", type=Path, default=None,
                        help="only redraw --plot from a results JSON of an earlier run (nothing is started)")
    args = parser.parse_args(argv)
    args.plot = Path(args.plot) if args.plot else None  # Path("") would be ".", the current directory
    args.idle_levels = [int(x) for x in args.idle.split(",") if x.strip()]
    if any(n < 0 or n > MAX_IDLE for n in args.idle_levels):
        parser.error(f"--idle counts must be within 0..{MAX_IDLE}")
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be >= 1, --warmup >= 0")
    args.worker_names = [t for t in args.worker_targets.split(",") if t]
    args.idle_names = [t for t in args.idle_targets.split(",") if t]
    for name in args.worker_names + args.idle_names:
        if name not in ("nginx-proxy", "proxy.py") and not bench.EDGE_TARGET.match(name):
            parser.error(f"unknown target {name!r}")
    # the load settings of loadtest.bench (wrk -t1 -c64, plain GET), used by bench.measure
    args.load = bench.parse_args(["--targets", "nginx-proxy", "--duration", str(args.duration),
                                  "--warmup", str(args.warmup), "--edge-bin", str(args.edge_bin)])
    return args


# --- idle connections ----------------------------------------------------------------------------

def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + FD_HEADROOM
    if soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        raise IdleFailed(f"open-file hard limit {hard} < {want} needed; raise it (ulimit -Hn) as root")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _response_complete(buf: bytes) -> bool:
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    length = 0
    for line in buf[:head_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return len(buf) >= head_end + 4 + length


def open_idle(port: int, count: int, host: str) -> list[socket.socket]:
    """count keep-alive connections that each served one GET and are now idle; raises IdleFailed."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("ascii")
    sel = selectors.DefaultSelector()
    idle: list[socket.socket] = []
    pending: dict[socket.socket, bytes] = {}  # socket -> bytes received so far
    started = 0
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    try:
        while len(idle) < count:
            while started < count and len(pending) < OPEN_WINDOW:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                code = sock.connect_ex(("127.0.0.1", port))
                if code not in (0, errno.EINPROGRESS):
                    sock.close()
                    raise IdleFailed(f"connect #{started}: {errno.errorcode.get(code, code)}")
                sel.register(sock, selectors.EVENT_WRITE)
                pending[sock] = b""
                started += 1
            if time.monotonic() > deadline:
                raise IdleFailed(f"only {len(idle)} of {count} idle connections after {OPEN_TIMEOUT_S:.0f} s")
            for key, events in sel.select(timeout=1.0):
                sock = key.fileobj
                if events & selectors.EVENT_WRITE:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise IdleFailed(f"connect: {errno.errorcode.get(err, err)}")
                    sock.sendall(request)  # 40 bytes into an empty socket buffer
                    sel.modify(sock, selectors.EVENT_READ)
                    continue
                data = sock.recv(65536)
                if not data:
                    raise IdleFailed("the proxy closed a connection before answering its first request")
                buf = pending[sock] + data
                if not buf.startswith(b"HTTP/1.1 200"):
                    raise IdleFailed(f"unexpected answer: {buf[:60]!r}")
                if _response_complete(buf):
                    sel.unregister(sock)
                    del pending[sock]
                    idle.append(sock)
                else:
                    pending[sock] = buf
        return idle
    except BaseException:
        close_idle(idle + list(pending))
        raise
    finally:
        sel.close()


def still_open(conns: list[socket.socket]) -> int:
    """How many connections the peer has not closed (nothing to read and no EOF)."""
    alive = 0
    for sock in conns:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            alive += 1
        except OSError:
            continue
        else:
            alive += 1 if data else 0
    return alive


def close_idle(conns: list[socket.socket]) -> None:
    linger_reset = struct.pack("ii", 1, 0)
    for sock in conns:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_reset)
        except OSError:
            pass
        sock.close()


def open_fds(pid: int) -> int | None:
    try:
        return len(list((procstat.PROC / str(pid) / "fd").iterdir()))
    except (FileNotFoundError, PermissionError):
        return None


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in (procstat.PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


# --- measurements --------------------------------------------------------------------------------

def process_memory(target: Target) -> list[dict]:
    """Root first: rss, peak rss (VmHWM) and open fds per process of the target."""
    return [{"pid": pid, "rss_kib": procstat.rss_kib(pid), "hwm_kib": vm_hwm_kib(pid), "fds": open_fds(pid)}
            for pid in target.proc.pids()]


def measure_idle(args: argparse.Namespace, name: str, idle_count: int, tmp: Path, backend: Target) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-{idle_count}-", dir=tmp))  # configs and logs of this start
    run_dir.chmod(0o755)
    target = bench.start_target(name, args.load, run_dir, backend)
    conns: list[socket.socket] = []
    try:
        host = target.host or f"127.0.0.1:{target.port}"
        opened = time.monotonic()
        conns = open_idle(target.port, idle_count, host) if idle_count else []
        open_s = time.monotonic() - opened
        time.sleep(SETTLE_S)
        before = process_memory(target)
        run = bench.measure(args.load, target, backend)
        run.update(target=name, idle=idle_count, open_s=open_s, memory_idle=before,
                   memory_loaded=process_memory(target), idle_still_open=still_open(conns))
        return run
    finally:
        close_idle(conns)
        targets.stop(target.proc)


def workers_phase(args: argparse.Namespace, tmp: Path, backend: Target, procs: list) -> list[dict[str, dict]]:
    live: list[Target] = []
    for name in args.worker_names:
        try:
            target = bench.start_target(name, args.load, tmp, backend)
        except StartFailed as exc:
            print(f"{name}: FAILED TO START, left out: {exc}")
            continue
        procs.append(target.proc)
        live.append(target)
    rounds = []
    for round_no in range(1, args.rounds + 1):
        results = {}
        for target in live:
            try:
                results[target.name] = bench.measure(args.load, target, backend)
            except bench.LoadFailed as exc:
                results[target.name] = {"target": target.name, "ok": False, "error": str(exc)}
        rounds.append(results)
        print(f"workers, round {round_no}/{args.rounds}")
        print(report.round_table(results, [t.name for t in live]) + "\n")
    for target in live:
        targets.stop(target.proc)
        procs.remove(target.proc)
    return rounds


def idle_phase(args: argparse.Namespace, tmp: Path, backend: Target) -> list[dict]:
    runs = []
    for round_no in range(1, args.rounds + 1):
        for idle_count in args.idle_levels:
            for name in args.idle_names:
                try:
                    run = measure_idle(args, name, idle_count, tmp, backend)
                except (StartFailed, IdleFailed, bench.LoadFailed) as exc:
                    run = {"target": name, "idle": idle_count, "ok": False, "error": str(exc)}
                    print(f"{name} with {idle_count} idle: FAILED: {str(exc).splitlines()[0]}")
                else:
                    print(f"round {round_no}: {name:14s} idle {idle_count:6d}: {run['rps']:9,.0f} req/s  "
                          f"p50 {run['latency_us']['p50'] / 1000:6.2f} ms  p99 {run['latency_us']['p99'] / 1000:6.2f} ms  "
                          f"RSS MiB {_rss_text(run['memory_loaded'])}  fds {_fds_text(run['memory_loaded'])}  "
                          f"still open {run['idle_still_open']}/{idle_count}  (opened in {run['open_s']:.1f} s)")
                run["round"] = round_no
                runs.append(run)
    return runs


def _rss_text(memory: list[dict]) -> str:
    return "+".join(f"{(p['rss_kib'] or 0) / 1024:.1f}" for p in memory)


def _fds_text(memory: list[dict]) -> str:
    return "+".join(str(p["fds"]) for p in memory)


# --- summary -------------------------------------------------------------------------------------

def summarize_workers(rounds: list[dict[str, dict]], names: list[str]) -> list[dict]:
    summary = report.summarize(rounds, names, [])
    rows = []
    for name in names:
        if name not in summary:
            continue
        match = bench.EDGE_TARGET.match(name)
        rows.append({"target": name, "workers": int(match.group(1)) if match else None,
                     "codec": "httptools" if "-fast" in name else "h11", **summary[name]["figures"],
                     "rss_per_process_mb": summary[name]["rss_per_process_mb"],
                     "rounds_ok": summary[name]["rounds_ok"]})
    return rows


def _workers_of(memory: list[dict]) -> list[dict]:
    """edge: the supervisor is the root, workers are its children; nginx: the master, then its workers."""
    return memory[1:] if len(memory) > 1 else memory


def _workers_rss_kib(memory: list[dict]) -> int:
    return sum((p["rss_kib"] or 0) for p in _workers_of(memory))


def per_connection_kib(runs: list[dict], name: str, level: int) -> float | None:
    """RSS growth per idle connection: (the workers' summed RSS with `level` idle connections − with none, in the
    same round, both read before the wrk load) / level; the median over rounds. None without a 0-level run."""
    if level <= 0:
        return None
    base = {r["round"]: _workers_rss_kib(r["memory_idle"]) for r in runs
            if r["target"] == name and r["idle"] == 0 and r.get("ok")}
    growth = [(_workers_rss_kib(r["memory_idle"]) - base[r["round"]]) / level for r in runs
              if r["target"] == name and r["idle"] == level and r.get("ok") and r["round"] in base]
    return report.median(growth) if growth else None


def summarize_idle(runs: list[dict], names: list[str], levels: list[int]) -> list[dict]:
    rows = []
    for name in names:
        for level in levels:
            ok = [r for r in runs if r["target"] == name and r["idle"] == level and r.get("ok")]
            if not ok:
                continue
            per_conn = per_connection_kib(runs, name, level)
            workers_loaded = [sum((p["rss_kib"] or 0) for p in _workers_of(r["memory_loaded"])) / 1024
                              / max(1, len(_workers_of(r["memory_loaded"]))) for r in ok]
            workers_idle = [sum((p["rss_kib"] or 0) for p in _workers_of(r["memory_idle"])) / 1024
                            / max(1, len(_workers_of(r["memory_idle"]))) for r in ok]
            rows.append({
                "target": name, "idle": level, "rounds_ok": len(ok),
                "rps": report.median(r["rps"] for r in ok),
                "p50_ms": report.median(r["latency_us"]["p50"] / 1000 for r in ok),
                "p99_ms": report.median(r["latency_us"]["p99"] / 1000 for r in ok),
                "cpu_us_per_req": report.median(r["cpu_us_per_req"] for r in ok),
                "worker_rss_idle_mb": report.median(workers_idle),
                "worker_rss_loaded_mb": report.median(workers_loaded),
                "root_rss_mb": report.median((r["memory_loaded"][0]["rss_kib"] or 0) / 1024 for r in ok),
                "still_open": min(r["idle_still_open"] for r in ok),
                "open_s": report.median(r["open_s"] for r in ok),
                "errors": report.median(r["errors"] for r in ok),
                "kib_per_idle_connection": per_conn,
            })
    return rows


def markdown_tables(worker_rows: list[dict], idle_rows: list[dict]) -> str:
    out = []
    if worker_rows:
        out += ["| target | codec | workers | req/s | p50 ms | p99 ms | CPU µs/req | RSS MiB per process |",
                "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in worker_rows:
            out.append(f"| {r['target']} | {r['codec']} | {r['workers']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                       f"{r['p99_ms']:.2f} | {r['cpu_us_per_req']:.0f} | "
                       f"{report.fmt_rss_list(r['rss_per_process_mb'])} |")
        by_codec: dict[str, dict[int, float]] = {}
        for r in worker_rows:
            by_codec.setdefault(r["codec"], {})[r["workers"]] = r["rps"]
        for codec, per in by_codec.items():
            if 1 in per and 2 in per:
                out.append(f"\n{codec}: 2 workers / 1 worker = ×{per[2] / per[1]:.2f}")
        out.append("")
    if idle_rows:
        out += [("| target | idle connections | req/s (64 active) | p50 ms | p99 ms | CPU µs/req | "
                 "RSS MiB per worker, idle only | RSS MiB per worker, under load | RSS MiB root | "
                 "KiB per idle connection | idle still open | opened in s |"),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in idle_rows:
            per_conn = r.get("kib_per_idle_connection")
            out.append(f"| {r['target']} | {r['idle']:,} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                       f"{r['cpu_us_per_req']:.0f} | {r['worker_rss_idle_mb']:.1f} | {r['worker_rss_loaded_mb']:.1f} | "
                       f"{r['root_rss_mb']:.1f} | {'–' if per_conn is None else f'{per_conn:.2f}'} | "
                       f"{r['still_open']:,} | {r['open_s']:.1f} |")
    return "\n".join(out)


def plot(path: Path, worker_rows: list[dict], idle_rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for codec in ("h11", "httptools"):
        rows = sorted((r for r in worker_rows if r["codec"] == codec and r["workers"]), key=lambda r: r["workers"])
        if rows:
            ax.plot([r["workers"] for r in rows], [r["rps"] for r in rows], marker="o", label=f"edge, {codec}")
            for r in rows:
                ax.annotate(f"{r['rps']:,.0f}", (r["workers"], r["rps"]), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8)
    ax.set_xlabel("workers")
    ax.set_xticks([1, 2])
    ax.set_ylabel("requests/s (wrk -c64, GET /)")
    ax.set_ylim(0, max([r["rps"] for r in worker_rows], default=1) * 1.15)
    ax.set_title("throughput by workers")
    ax.legend()
    names = list(dict.fromkeys(r["target"] for r in idle_rows))
    for name in names:
        rows = sorted((r for r in idle_rows if r["target"] == name), key=lambda r: r["idle"])
        xs = [r["idle"] + 64 for r in rows]
        axes[1].plot(xs, [r["worker_rss_loaded_mb"] for r in rows], marker="o", label=name)
        line, = axes[2].plot(xs, [r["p99_ms"] for r in rows], marker="o", label=f"{name} p99")
        axes[2].plot(xs, [r["p50_ms"] for r in rows], marker="s", linestyle="--", color=line.get_color(),
                     label=f"{name} p50")
    for ax, ylabel, ttl in ((axes[1], "RSS per worker, MiB", "memory by open connections"),
                            (axes[2], "latency, ms (wrk -c64 beside the idle ones)", "latency by open connections")):
        ax.set_xscale("log")
        ax.set_xlabel("open connections (64 active + idle keep-alive)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the curves
        ax.set_title(ttl)
        ax.legend(fontsize=7, ncol=3 if ax is axes[2] else 1, loc="upper center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _title(label: str, started_at: str, rounds: int, duration: int) -> str:
    return (f"edge {label}, {started_at}: wrk -t1 -c64 GET / on {os.cpu_count()} cores, "
            f"median of {rounds} rounds x {duration} s")


def replot(args: argparse.Namespace) -> int:
    if args.plot is None:
        raise SystemExit("--replot needs a --plot path")
    document = json.loads(args.replot.read_text())
    settings = document["settings"]
    label = args.label or settings.get("label") or document["git_sha"]
    plot(args.plot, document["workers"]["summary"], document["idle"]["summary"],
         _title(label, document["started_at"], settings["rounds"], settings["duration"]))
    print(f"plot: {args.plot}")
    print(markdown_tables(document["workers"]["summary"], document["idle"]["summary"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    if args.replot is not None:
        return replot(args)
    if shutil.which("wrk") is None or (shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists()):
        print("missing tools: apt-get install -y nginx wrk", file=sys.stderr)
        return 2
    if args.idle_names and args.idle_levels:
        raise_fd_limit(max(args.idle_levels) + 64)  # children inherit it too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, bench._raise_on_signal)
    signal.signal(signal.SIGHUP, bench._raise_on_signal)
    sha = bench.git_short_sha()
    started_at = time.strftime("%Y%m%dT%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="edge-loadtest-scale-"))
    tmp.chmod(0o755)
    procs: list[targets.Proc] = []
    loadavg_start = os.getloadavg()
    print(f"edge scale test {started_at} ({sha}), load average {loadavg_start[0]:.2f}; temp dir {tmp}")
    try:
        backend = targets.start_backend(tmp, 1)
        procs.append(backend.proc)
        worker_rounds = workers_phase(args, tmp, backend, procs) if args.worker_names else []
        idle_runs = idle_phase(args, tmp, backend) if args.idle_names and args.idle_levels else []
        worker_rows = summarize_workers(worker_rounds, args.worker_names)
        idle_rows = summarize_idle(idle_runs, args.idle_names, args.idle_levels)
        print("\nmedians over rounds\n")
        print(markdown_tables(worker_rows, idle_rows))
        loadavg_end = os.getloadavg()
        print(f"\nload average at start {loadavg_start[0]:.2f}, at end {loadavg_end[0]:.2f}")
        if args.plot is not None:
            plot(args.plot, worker_rows, idle_rows, _title(args.label or sha, started_at, args.rounds, args.duration))
            print(f"plot: {args.plot}")
        if not args.no_save:
            args.results_dir.mkdir(parents=True, exist_ok=True)
            path = args.results_dir / f"scale-{started_at}-{sha}.json"
            settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "load"}
            path.write_text(json.dumps({
                "started_at": started_at, "git_sha": sha, "settings": settings, "machine": bench.machine(),
                "loadavg_end": loadavg_end, "versions": bench.tool_versions(),
                "workers": {"rounds": worker_rounds, "summary": worker_rows},
                "idle": {"runs": idle_runs, "summary": idle_rows},
            }, indent=1, default=str) + "\n")
            print(f"results: {path}")
        return 0
    except StartFailed as exc:
        print(f"the backend failed to start: {exc}", file=sys.stderr)
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
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
