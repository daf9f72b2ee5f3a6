# Where a proxied request's CPU goes in an edge worker under wrk load (issue 7, item 2's profile).
#
#   .venv/bin/python -m loadtest.bench_profile [--target edge-2w-fast] [--duration 10] [--sample-rate 250]
#        [--top 25] [--no-perf] [--idle N] [--edge-bin PATH]
#
# One backend and one edge target are started; after a wrk warm-up, four windows, each with its own wrk -t1
# -c64 GET / run of --duration seconds and one tool at a time (no tool perturbs another's window):
#   1. /proc: user and system CPU (utime/stime) and context switches of the supervisor and every worker over
#      the wrk run, divided by the requests wrk completed;
#   2. py-spy record --nonblocking --format raw on the first worker (its default mode stops the process for
#      every sample and misplaces time onto send/recv on these VMs). Own time of a sample = its innermost
#      Python frame; C code (llhttp, the socket calls and the kernel work behind them, the epoll wait) has no
#      frame of its own and counts for the Python function that called it. Aggregated by function, by file
#      and by group (edge / trio / h11 / httptools / stdlib), plus inclusive time by function;
#   3. perf record -e cpu-clock on the same worker (when perf is installed): share of samples by binary
#      (the kernel, the python interpreter, httptools' C extension, libc, ...) and by symbol, which py-spy
#      cannot see;
#   4. perf stat of system-call tracepoints over all workers, started before and stopped after the wrk
#      run (an idle worker makes almost no calls): system calls per request by name.
# Windows 1 and 4 also measure the nginx backend's worker: what the target's way of talking to its upstream
# costs the backend per request (on a 2-core machine that CPU is taken from the proxy).
# --target nginx-proxy / proxy.py profiles a reference the same way (nginx: no py-spy window), to compare
# system time, context switches and system calls per request.
# --idle N first opens N idle keep-alive connections (loadtest/bench_scale.py's open_idle) and holds them for the
# whole profile: what idle connections cost a worker under load.
# Bounds: every tool and wrk run has a timeout; the target and the backend are stopped by PID in `finally`;
# the temp dir is removed. Prints tables; --json PATH writes the figures.
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from loadtest import bench, bench_scale, procstat, targets
from loadtest.targets import StartFailed, Target

TOOL_GRACE_S = 30.0
SYSCALLS = ("sendto", "recvfrom", "epoll_wait", "epoll_ctl", "write", "read", "writev", "readv", "sendmsg",
            "recvmsg", "accept4", "connect", "close", "futex", "clock_gettime", "getpid")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_profile", description=__doc__)
    parser.add_argument("--target", default="edge-2w-fast",
                        help="an edge-<N>w[-fast...] target, or nginx-proxy / proxy.py for comparison "
                             "(nginx: no py-spy window)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per profiling window")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample-rate", type=int, default=250, help="py-spy and perf samples per second")
    parser.add_argument("--top", type=int, default=25, help="rows of the by-function table")
    parser.add_argument("--no-perf", action="store_true", help="skip the perf windows")
    parser.add_argument("--idle", type=int, default=0, help="idle keep-alive connections held open meanwhile")
    parser.add_argument("--edge-bin", type=Path, default=targets.default_edge_bin())
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if not bench.EDGE_TARGET.match(args.target) and args.target not in ("nginx-proxy", "proxy.py"):
        parser.error("--target must be an edge-<N>w[...] target, nginx-proxy or proxy.py")
    args.load = bench.parse_args(["--targets", args.target, "--duration", str(args.duration),
                                  "--edge-bin", str(args.edge_bin)])
    return args


# --- py-spy raw output ---------------------------------------------------------------------------

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")


def group_of(path: str) -> str:
    head = path.split("/", 1)[0]
    if head in ("workers", "edge"):
        return "edge (Python)"
    if head in ("trio", "outcome", "sniffio"):
        return "trio"
    if head in ("h11", "httptools", "msgspec", "orjson"):
        return head
    return "stdlib / other"


def aggregate_pyspy(raw: str) -> dict:
    """Own-time samples by function, file and group, and inclusive samples by function."""
    own_func: Counter[str] = Counter()
    own_file: Counter[str] = Counter()
    own_group: Counter[str] = Counter()
    inclusive_func: Counter[str] = Counter()
    total = 0
    roots: Counter[str] = Counter()  # outermost frame of each sample: --nonblocking can catch a stack mid-change
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        parsed = []
        for frame in frames:
            match = FRAME.match(frame)
            parsed.append((match["func"], match["file"]) if match else (frame, "?"))
        if not parsed:
            continue
        total += count
        roots[frames[0]] += count
        func, path = parsed[-1]
        own_func[f"{func} ({path})"] += count
        own_file[path.rpartition(":")[0] or path] += count
        own_group[group_of(path)] += count
        for name in {f"{f} ({p})" for f, p in parsed}:
            inclusive_func[name] += count
    rooted = roots.most_common(1)[0][1] if roots else 0  # samples with the whole stack, down to the entry point
    return {"samples": total, "rooted": rooted, "own_function": own_func, "own_file": own_file, "own_group": own_group,
            "inclusive_function": inclusive_func}


# --- perf ----------------------------------------------------------------------------------------

def perf_by_dso(report_text: str) -> list[tuple[float, str]]:
    rows = []
    for line in report_text.splitlines():
        match = re.match(r"^\s+([0-9.]+)%\s+(.+?)\s*$", line)
        if match:
            rows.append((float(match[1]), match[2]))
    return rows


def perf_syscalls(stat_text: str) -> dict[str, int]:
    counts = {}
    for line in stat_text.splitlines():
        match = re.match(r"^\s*([0-9,]+)\s+(?:syscalls:sys_enter_(\w+)|raw_syscalls:(sys_enter))\b", line)
        if match:
            counts[match[2] or "all"] = int(match[1].replace(",", ""))
    return counts


# --- windows -------------------------------------------------------------------------------------

def context_switches(pids: list[int]) -> dict[int, int]:
    """voluntary + involuntary context switches of each process (all its threads)."""
    out = {}
    for pid in pids:
        total = 0
        try:
            for task in (procstat.PROC / str(pid) / "task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            continue
        out[pid] = total
    return out


def cpu_split(pids: list[int]) -> dict[int, tuple[int, int]]:
    out = {}
    for pid in pids:
        try:
            fields = (procstat.PROC / str(pid) / "stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        out[pid] = (int(fields[11]), int(fields[12]))
    return out


def run_tool(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def run_with_load(args: argparse.Namespace, target: Target, tool: list[str], seconds: int,
                  lead_s: float = 0.5, also: list[str] | None = None
                  ) -> tuple[subprocess.CompletedProcess, dict, subprocess.CompletedProcess | None]:
    """Start tool (and `also`, a second tool over the same window), give them lead_s to attach, run wrk for
    `seconds`, then wait for the tools to end."""
    argvs = [tool] + ([also] if also else [])
    procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv in argvs]
    done = []
    try:
        time.sleep(lead_s)
        load = bench.run_load(args.load, target, seconds)
        for argv, proc in zip(argvs, procs):
            out, err = proc.communicate(timeout=seconds + TOOL_GRACE_S)
            done.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    return done[0], load, done[1] if also else None


def profile(args: argparse.Namespace, target: Target, backend: Target, tmp: Path) -> dict:
    pids = target.proc.pids()
    backend_workers = backend.proc.pids()[1:]
    supervisor, workers = pids[0], pids[1:]
    worker = workers[0]
    out: dict = {"target": target.name, "supervisor_pid": supervisor, "worker_pids": workers}
    seconds = args.duration
    tool_s = seconds + 1  # the tool outlives the wrk run it measures (attach lead + the run + slack)

    # 1. /proc: user and system CPU per request
    before = cpu_split(pids + backend_workers)
    switches_before = context_switches(pids + backend_workers)
    load = bench.run_load(args.load, target, seconds)
    after = cpu_split(pids + backend_workers)
    switches_after = context_switches(pids + backend_workers)
    requests = load["requests"]
    tick_us = 1e6 / procstat.CLOCK_TICKS_PER_S
    per_process = {}
    for pid in pids + backend_workers:
        user = (after[pid][0] - before[pid][0]) * tick_us / requests
        system = (after[pid][1] - before[pid][1]) * tick_us / requests
        switches = (switches_after.get(pid, 0) - switches_before.get(pid, 0)) / requests
        per_process[pid] = {"user_us": user, "system_us": system, "context_switches": switches}
    out["backend"] = {"proc": [per_process.pop(pid) for pid in backend_workers]}
    out["proc"] = {"requests": requests, "rps": load["rps"], "latency_us": load["latency_us"],
                   "per_process": per_process,
                   "user_us": sum(p["user_us"] for p in per_process.values()),
                   "system_us": sum(p["system_us"] for p in per_process.values())}

    # 2. py-spy, own time by function / file / group (Python targets only)
    raw_path = tmp / "pyspy.raw"
    if target.kind != "nginx":
        done, load, _ = run_with_load(args, target, [
            str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--format", "raw", "--function",
            "--rate", str(args.sample_rate), "--duration", str(seconds), "--pid", str(worker),
            "--output", str(raw_path)], seconds + 1)
        if not raw_path.exists():
            raise SystemExit(f"py-spy failed: {done.stderr.strip()[-500:]}")
        out["pyspy"] = aggregate_pyspy(raw_path.read_text())
        out["pyspy"]["rps"] = load["rps"]

    if not args.no_perf and shutil.which("perf"):
        # 3. perf: samples by binary and by symbol
        data = tmp / "perf.data"
        run_with_load(args, target, ["perf", "record", "-e", "cpu-clock", "-F", str(args.sample_rate),
                                     "-p", str(worker), "-o", str(data), "--", "sleep", str(seconds)], seconds + 1)
        report = run_tool(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "--no-children"],
                          TOOL_GRACE_S)
        out["perf_dso"] = perf_by_dso(report.stdout)
        symbols = run_tool(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso,sym", "--no-children"],
                           TOOL_GRACE_S)
        out["perf_symbols"] = perf_by_dso(symbols.stdout)[:40]
        # 4. perf stat: system calls per request over all workers, around one whole wrk run
        events = ",".join(["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS])
        stat, load, backend_stat = run_with_load(
            args, target, ["perf", "stat", "-e", events, "-p", ",".join(map(str, workers)), "--", "sleep", str(tool_s + 1)],
            seconds, also=["perf", "stat", "-e", events, "-p", ",".join(map(str, backend_workers)), "--", "sleep",
                           str(tool_s + 1)])
        counts = perf_syscalls(stat.stderr)
        out["syscalls_per_request"] = {name: n / load["requests"] for name, n in counts.items() if n}
        counts = perf_syscalls(backend_stat.stderr)
        out["backend"]["syscalls_per_request"] = {name: n / load["requests"] for name, n in counts.items() if n}
    return out


# --- report --------------------------------------------------------------------------------------

def pct_table(counter: Counter, total: int, top: int, title: str) -> str:
    lines = [f"{title}", f"{'share':>7}  name", f"{'-' * 7}  {'-' * 60}"]
    for name, n in counter.most_common(top):
        lines.append(f"{100 * n / total:6.1f}%  {name}")
    return "\n".join(lines)


def print_report(result: dict, top: int) -> None:
    proc = result["proc"]
    print(f"\n{result['target']} ({result.get('idle', 0):,} idle connections held open): "
          f"{proc['rps']:,.0f} req/s in the /proc window ({proc['requests']:,} requests)")
    print(f"CPU per request, all processes of the target: user {proc['user_us']:.1f} µs + system "
          f"{proc['system_us']:.1f} µs = {proc['user_us'] + proc['system_us']:.1f} µs")
    for pid, figures in proc["per_process"].items():
        role = "root" if pid == result["supervisor_pid"] else "worker"
        print(f"  {role:6s} {pid}: user {figures['user_us']:.1f} µs, system {figures['system_us']:.1f} µs, "
              f"{figures['context_switches']:.2f} context switches per request")
    spy = result.get("pyspy")
    if spy:
        total = spy["samples"] or 1
        print(f"\npy-spy --nonblocking on worker {result['worker_pids'][0]} ({spy['rps']:,.0f} req/s meanwhile): "
              f"{spy['samples']} samples, {100 * spy['rooted'] / total:.0f}% with the whole stack (own time of "
              f"the innermost frame counts either way)")
        print(pct_table(spy["own_group"], total, 10, "\nby group"))
        print(pct_table(spy["own_file"], total, 15, "\nby file"))
        print(pct_table(spy["own_function"], total, top, "\nby function"))
        print(pct_table(spy["inclusive_function"], total, top, "\ninclusive (the function and everything it called)"))
    if "perf_dso" in result:
        print("\nperf record -e cpu-clock on the same worker, by binary")
        for share, dso in result["perf_dso"][:12]:
            print(f"{share:6.1f}%  {dso}")
        print("\nperf, top symbols")
        for share, sym in result["perf_symbols"][:top]:
            print(f"{share:6.1f}%  {sym}")
    if result.get("syscalls_per_request"):
        print("\nsystem calls per request (perf stat over all workers)")
        for name, n in sorted(result["syscalls_per_request"].items(), key=lambda kv: -kv[1]):
            print(f"{n:8.2f}  {name}")
    backend = result["backend"]
    print("\nthe nginx backend's worker meanwhile (what this target's requests cost the backend):")
    for figures in backend["proc"]:
        print(f"  user {figures['user_us']:.1f} µs, system {figures['system_us']:.1f} µs, "
              f"{figures['context_switches']:.2f} context switches per request")
    if backend.get("syscalls_per_request"):
        print("  system calls per request: " + ", ".join(
            f"{name} {n:.2f}" for name, n in sorted(backend["syscalls_per_request"].items(), key=lambda kv: -kv[1])))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    if shutil.which("wrk") is None:
        print("missing tool: apt-get install -y nginx wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, bench._raise_on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="edge-loadtest-profile-"))
    tmp.chmod(0o755)
    procs: list[targets.Proc] = []
    idle: list = []
    try:
        backend = targets.start_backend(tmp, 1)
        procs.append(backend.proc)
        target = bench.start_target(args.target, args.load, tmp, backend)
        procs.append(target.proc)
        if args.idle:
            bench_scale.raise_fd_limit(args.idle + 64)
            idle = bench_scale.open_idle(target.port, args.idle, target.host or f"127.0.0.1:{target.port}")
        bench.run_load(args.load, target, args.warmup)
        result = profile(args, target, backend, tmp)
        result["sha"] = bench.git_short_sha()
        result["edge_bin"] = str(args.edge_bin)
        result["idle"] = args.idle
        print_report(result, args.top)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        return 0
    except (StartFailed, bench.LoadFailed, bench_scale.IdleFailed, subprocess.TimeoutExpired) as exc:
        print(f"bench_profile: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        bench_scale.close_idle(idle)
        for proc in reversed(procs):
            targets.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
