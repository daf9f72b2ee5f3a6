# The load-test runner: edge against nginx and proxy.py on the same fast nginx backend, in one run.
#
#   .venv/bin/python -m loadtest.bench [--targets direct,nginx-proxy,proxy.py,edge-1w,edge-2w]
#        [--rounds 3] [--duration 10] [--warmup 2] [--connections 64] [--script plain|mix|mix-get]
#        [--rate 2000] [--ratio-to TARGET,...] [--install-refs]
#   targets: direct, nginx-proxy, proxy.py, edge-<N>w[-fast|-h11][-nostats|-text|-json][-vs<V>]
#
# Order of a run: backend up -> every selected target up (a target that fails to start is reported and
# left out, the others go on) -> R interleaved rounds (round 1: every target once, round 2: again, ...
# so slow drift of a noisy machine hits every target alike) -> summary -> JSON results. Each
# measurement: warm-up (not counted), then a CPU snapshot of the target's process tree and of the
# backend's, the measured load, a second snapshot, and VmRSS of every process of the target.
# CPU µs/request = (CPU seconds of the target's processes in the window) * 1e6 / completed requests.
# Bounds: every child process has a timeout (load: duration + LOAD_GRACE_S), every process started is
# stopped by PID in `finally` (targets.stop), and the temp dir is removed.
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest import procstat, report, targets
from loadtest.mix import PLAIN, SCRIPTS, MixEntry, wrk_args
from loadtest.targets import StartFailed, Target

LOADTEST_DIR = Path(__file__).resolve().parent
REPO_DIR = LOADTEST_DIR.parent
WRK_DIR = LOADTEST_DIR / "wrk"
RESULTS_DIR = LOADTEST_DIR / "results"
JSON_MARK = "@@loadtest-json "
LOAD_GRACE_S = 30.0
WRK_TIMEOUT = "5s"  # a request unanswered this long counts as a wrk timeout error
ALL_TARGETS = ("direct", "nginx-proxy", "proxy.py", "edge-1w", "edge-2w")
REFERENCES = ("nginx-proxy", "proxy.py")
EDGE_TARGET = re.compile(r"^edge-(\d+)w((?:-(?:fast|h11|nostats|text|json|b|vs\d+))*)$")  # variants: targets.start_edge
VHOSTS_VARIANT = re.compile(r"-vs\d+(?:-|$)")
WRK_SCRIPTS = {"plain": WRK_DIR / "report.lua", "mix": WRK_DIR / "mix.lua", "mix-get": WRK_DIR / "mix.lua"}


class LoadFailed(Exception):
    """The load tool did not produce a result; the message says why."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description="edge vs nginx vs proxy.py on one fast nginx backend, interleaved rounds.",
    )
    parser.add_argument("--targets", default=",".join(ALL_TARGETS),
                        help="comma list from: direct, nginx-proxy, proxy.py, "
                             "edge-<N>w[-fast|-h11][-nostats|-text|-json][-vs<V>] (default: %(default)s); "
                             "-vs<V>: a config of V VirtualServices with distinct hosts, plain script only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per target per round")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of uncounted load before each measure")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (-c)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--script", choices=sorted(WRK_SCRIPTS), default="plain",
                        help="plain: GET / ; mix: hosts/paths over the VirtualServices plus 1 KB POSTs; "
                             "mix-get: the same hosts/paths without the POSTs")
    parser.add_argument("--rate", type=float, default=None,
                        help="constant-rate mode: requests/s sent open-loop by loadtest/constant_rate.py "
                             "instead of wrk; latency counted from the scheduled send time")
    parser.add_argument("--rate-connections", type=int, default=32,
                        help="connections of the constant-rate client")
    parser.add_argument("--ratio-to", default="",
                        help="comma list of measured targets to add as ratio references beside nginx-proxy and "
                             "proxy.py, e.g. edge-2w-fast-nostats for the cost of logs and metrics")
    parser.add_argument("--install-refs", action="store_true",
                        help=f"install proxy.py {targets.PROXYPY_VERSION} into loadtest/.refvenv first")
    parser.add_argument("--backend-workers", type=int, default=1)
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--proxypy-acceptors", type=int, default=2)
    parser.add_argument("--edge-bin", type=Path, default=targets.default_edge_bin(),
                        help="the edge executable (default: %(default)s)")
    parser.add_argument("--edge-bin-b", type=Path, default=None,
                        help="a second edge executable, for targets with the variant -b (edge-2w-fast-b): an A/B in one run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON results")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    for name in names:
        if name not in ALL_TARGETS and not EDGE_TARGET.match(name):
            parser.error(f"unknown target {name!r}; choose from direct, nginx-proxy, proxy.py, edge-<N>w")
    if len(set(names)) != len(names) or not names:
        parser.error("--targets must name each target once")
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.threads < 1:
        parser.error("--rounds, --duration, --connections, --threads must be >= 1 and --warmup >= 0")
    if args.script != "plain" and any(VHOSTS_VARIANT.search(n) for n in names):
        parser.error("edge-…-vs<N> targets route only their generated hosts: use them with --script plain")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    args.ratio_to = [t.strip() for t in args.ratio_to.split(",") if t.strip()]
    for name in args.ratio_to:
        if name not in names:
            parser.error(f"--ratio-to {name!r} is not one of --targets")
    args.target_names = names
    return args


# --- load tools ----------------------------------------------------------------------------------

def _parse_json_line(stdout: str, tool: str, stderr: str) -> dict:
    for line in stdout.splitlines():
        if line.startswith(JSON_MARK):
            return json.loads(line[len(JSON_MARK):])
    detail = (stderr.strip() or stdout.strip())[-800:]
    raise LoadFailed(f"{tool} printed no result: {detail or '(no output)'}")


def _run_tool(argv: list[str], timeout: float, tool: str) -> dict:
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=REPO_DIR)
    except subprocess.TimeoutExpired:
        raise LoadFailed(f"{tool} did not finish within {timeout:.0f} s") from None
    return _parse_json_line(done.stdout, tool, done.stderr)


def run_load(args: argparse.Namespace, target: Target, seconds: int) -> dict:
    url = f"http://127.0.0.1:{target.port}/"
    if args.rate is not None:
        argv = [sys.executable, "-m", "loadtest.constant_rate", "--url", url.rstrip("/"),
                "--rate", str(args.rate), "--duration", str(seconds),
                "--connections", str(args.rate_connections), "--script", args.script]
        if target.host:
            argv += ["--host", target.host]
        return _run_tool(argv, seconds + LOAD_GRACE_S, "constant_rate")
    argv = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s",
            "--timeout", WRK_TIMEOUT, "-s", str(WRK_SCRIPTS[args.script]), url]
    if target.host:
        argv[1:1] = ["-H", f"Host: {target.host}"]
    if args.script in SCRIPTS:
        argv += ["--", *wrk_args(SCRIPTS[args.script])]
    return _run_tool(argv, seconds + LOAD_GRACE_S, "wrk")


def measure(args: argparse.Namespace, target: Target, backend: Target) -> dict:
    """Warm up, then one measured window with CPU and RSS accounting."""
    if args.warmup:
        run_load(args, target, args.warmup)
    target_pids = target.proc.pids()
    backend_pids = backend.proc.pids()
    cpu_before = procstat.cpu_snapshot(target_pids)
    sys_before = procstat.cpu_snapshot(target_pids, kernel_only=True)
    backend_before = procstat.cpu_snapshot(backend_pids)
    load = run_load(args, target, args.duration)
    target_pids_after = target.proc.pids()
    cpu_after = procstat.cpu_snapshot(target_pids_after)
    sys_after = procstat.cpu_snapshot(target_pids_after, kernel_only=True)
    backend_after = procstat.cpu_snapshot(backend.proc.pids())
    requests = load["requests"]
    cpu_s = procstat.cpu_delta_s(cpu_before, cpu_after)
    sys_s = procstat.cpu_delta_s(sys_before, sys_after)
    backend_cpu_s = procstat.cpu_delta_s(backend_before, backend_after)
    # CPU seconds of each process in the window: shows how evenly the workers shared the load
    cpu_each = {pid: (ticks - cpu_before.get((pid, start), 0)) / procstat.CLOCK_TICKS_PER_S
                for (pid, start), ticks in cpu_after.items()}
    processes = [
        {"pid": pid, "role": "main" if i == 0 else "child", "cmd": procstat.describe(pid),
         "rss_kib": procstat.rss_kib(pid), "cpu_s": cpu_each.get(pid)}
        for i, pid in enumerate(target_pids_after)
    ]
    return {
        "target": target.name,
        "ok": requests > 0,
        "error": None if requests > 0 else "no request completed",
        "requests": requests,
        "duration_s": load["duration_us"] / 1e6,
        "rps": load["rps"],
        "errors": load["errors"],
        "errors_detail": load["errors_detail"],
        "latency_us": load["latency_us"],
        "cpu_s": cpu_s,
        "cpu_us_per_req": cpu_s * 1e6 / requests if requests else math.nan,
        "sys_us_per_req": sys_s * 1e6 / requests if requests else math.nan,  # the kernel's part of it
        "backend_cpu_s": backend_cpu_s,
        "backend_cpu_us_per_req": backend_cpu_s * 1e6 / requests if requests else math.nan,
        "processes": processes,
        "tree_changed": set(cpu_before) != set(cpu_after),
        "load": load,
    }


# --- targets -------------------------------------------------------------------------------------

def start_target(name: str, args: argparse.Namespace, tmp: Path, backend: Target) -> Target:
    if name == "direct":
        return backend
    if name == "nginx-proxy":
        return targets.start_nginx_proxy(tmp, backend.port, args.nginx_workers)
    if name == "proxy.py":
        return targets.start_proxypy(tmp, backend.port, args.proxypy_acceptors)
    match = EDGE_TARGET.match(name)
    assert match is not None  # parse_args checked the names
    variant = match.group(2) or ""
    edge_bin = args.edge_bin
    if "b" in variant.split("-"):
        if args.edge_bin_b is None:
            raise targets.StartFailed(f"{name}: the -b variant needs --edge-bin-b")
        edge_bin = args.edge_bin_b
        variant = "-".join(p for p in variant.split("-") if p != "b")
    return targets.start_edge(name, tmp, backend.port, int(match.group(1)), edge_bin, variant)


def check_tools(args: argparse.Namespace) -> list[str]:
    missing = []
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx")
    if args.rate is None and shutil.which("wrk") is None:
        missing.append("wrk")
    return missing


def tool_versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable: {exc}"
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else ""

    return {
        "nginx": first_line([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]) if shutil.which("wrk") else "not installed",
        "proxy.py": targets.proxypy_installed_version() or "not installed",
        "python": platform.python_version(),
    }


def git_short_sha() -> str:
    try:
        done = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                              check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "nogit"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "nocommit"


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg()}


def _raise_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines in order with the children's output
    missing = check_tools(args)
    if missing:
        print(f"missing tools: {', '.join(missing)}; install with: apt-get install -y nginx wrk",
              file=sys.stderr)
        return 2
    if args.install_refs:
        try:
            targets.install_refs()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            print(f"refs: installing proxy.py failed: {exc}; proxy.py will be skipped", file=sys.stderr)

    # Clean up on any polite stop, even when started in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_signal)
    signal.signal(signal.SIGHUP, _raise_on_signal)
    sha = git_short_sha()
    host = machine()
    started_at = time.strftime("%Y%m%dT%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="edge-loadtest-"))
    tmp.chmod(0o755)  # nginx workers run as nobody when started by root
    procs: list[targets.Proc] = []
    failures: dict[str, str] = {}
    live: list[Target] = []
    rounds: list[dict[str, dict]] = []
    mode = f"constant rate {args.rate:g}/s, {args.rate_connections} connections" if args.rate else \
        f"wrk -t{args.threads} -c{args.connections}"
    print(f"edge load test {started_at} ({sha}): {mode}, script {args.script}, {args.rounds} rounds x "
          f"{args.duration} s (+{args.warmup} s warm-up) per target; temp dir {tmp}")
    try:
        try:
            backend = targets.start_backend(tmp, args.backend_workers)
        except StartFailed as exc:
            print(f"the nginx backend failed to start: {exc}", file=sys.stderr)
            return 1
        procs.append(backend.proc)
        print(f"backend: nginx on 127.0.0.1:{backend.port}, {args.backend_workers} worker(s)")
        for name in args.target_names:
            try:
                target = start_target(name, args, tmp, backend)
            except StartFailed as exc:
                failures[name] = str(exc)
                print(f"{name}: FAILED TO START, left out: {exc}")
                continue
            if target.proc is not backend.proc:
                procs.append(target.proc)
            problems = targets.probe(target.port, _probe_entries(args, target))
            if problems:
                failures[name] = "wrong answers: " + "; ".join(problems)
                print(f"{name}: left out, it answers wrongly: {'; '.join(problems)}")
                continue
            live.append(target)
            print(f"{name}: up on 127.0.0.1:{target.port} (pids {' '.join(map(str, target.proc.pids()))})")
        if not live:
            print("no target could be started", file=sys.stderr)
            return 1
        budget = args.rounds * len(live) * (args.duration + args.warmup + 1)
        print(f"measuring {len(live)} target(s); about {budget // 60} min {budget % 60} s\n")
        names = [t.name for t in live]
        for round_no in range(1, args.rounds + 1):
            results: dict[str, dict] = {}
            for target in live:
                if target.name in failures:
                    continue
                if not target.proc.alive():
                    failures[target.name] = (f"exited with code {target.proc.popen.returncode}; "
                                             f"log tail:\n{target.proc.log_tail()}")
                    results[target.name] = {"target": target.name, "ok": False, "error": failures[target.name]}
                    print(f"{target.name}: DIED: {failures[target.name]}")
                    continue
                try:
                    results[target.name] = measure(args, target, backend)
                except LoadFailed as exc:
                    results[target.name] = {"target": target.name, "ok": False, "error": str(exc)}
            rounds.append(results)
            print(f"round {round_no}/{args.rounds}")
            print(report.round_table(results, names))
            for line in report.error_warnings(results, names):
                print(line)
            if args.rate is not None:
                print(report.client_lag_line(results, names))
            print()
        references = [r for r in REFERENCES if r in names] + [r for r in args.ratio_to if r in names]
        summary = report.summarize(rounds, names, references)
        print(report.summary_tables(summary, names, references))
        if failures:
            print("\nnot measured, or not in every round:")
            for name, why in failures.items():
                print(f"  {name}: {why.splitlines()[0]}")
        if not args.no_save:
            path = save_results(args, started_at, sha, host, live, failures, rounds, summary)
            print(f"\nresults: {path}")
        return 0
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


def _probe_entries(args: argparse.Namespace, target: Target) -> tuple:
    if args.script in SCRIPTS:
        return SCRIPTS[args.script]
    return (MixEntry(PLAIN.method, target.host, PLAIN.path, 0, 1),) if target.host else (PLAIN,)


def save_results(args: argparse.Namespace, started_at: str, sha: str, host: dict, live: list[Target],
                 failures: dict[str, str], rounds: list[dict[str, dict]], summary: dict) -> Path:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{started_at}-{sha}.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "started_at": started_at,
        "git_sha": sha,
        "settings": settings,
        "machine": host,
        "versions": tool_versions(),
        "targets": {t.name: {"kind": t.kind, "port": t.port, **t.extra} for t in live},
        "failures": failures,
        "rounds": rounds,
        "summary": summary,
    }
    path.write_text(json.dumps(document, indent=1, default=str, allow_nan=True) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
