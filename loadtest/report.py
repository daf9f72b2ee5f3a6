# Figures and tables of a benchmark (pure: dicts in, numbers and strings out).
#
# A run record (one target, one round) is the dict bench.measure() builds: rps, latency_us, errors,
# cpu_us_per_req, sys_us_per_req, backend_cpu_us_per_req, processes [{pid, role, rss_kib, cpu_s}], ok, error.
# Summary rules:
# - a figure of a target = the median over the rounds where that target's run was ok;
# - a ratio "target / reference" is computed per round from runs of the same round (same machine
#   state), and the median of those per-round ratios is reported;
# - RSS per process is matched across rounds by position (root first, then children by pid): the
#   processes live for the whole benchmark, so a position is the same process in every round.
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

# (figure key, column title); figures() defines the keys
METRICS: tuple[tuple[str, str], ...] = (
    ("rps", "req/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("errors", "errors"),
    ("cpu_us_per_req", "CPU µs/req"),
    ("sys_us_per_req", "of it sys"),
    ("backend_cpu_us_per_req", "backend µs/req"),
    ("rss_total_mb", "RSS MB total"),
)
RATIO_METRICS: tuple[tuple[str, str], ...] = (
    ("rps", "req/s"),
    ("p50_ms", "p50"),
    ("p99_ms", "p99"),
    ("cpu_us_per_req", "CPU/req"),
    ("rss_total_mb", "RSS"),
)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: Iterable[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def figures(run: dict) -> dict[str, float]:
    """The flat figures of one run record."""
    if not run.get("ok"):
        return {}
    latency = run["latency_us"]
    return {
        "rps": run["rps"],
        "p50_ms": latency["p50"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "errors": run["errors"],
        "cpu_us_per_req": run["cpu_us_per_req"],
        "sys_us_per_req": run.get("sys_us_per_req", math.nan),  # absent from results older than the column
        "backend_cpu_us_per_req": run["backend_cpu_us_per_req"],
        "rss_total_mb": sum(p["rss_kib"] or 0 for p in run["processes"]) / 1024,
    }


def rss_per_process_mb(run: dict) -> list[float]:
    return [(p["rss_kib"] or 0) / 1024 for p in run.get("processes", [])]


def round_ratios(round_runs: dict[str, dict], reference: str) -> dict[str, dict[str, float]]:
    """{target: {metric: target figure / reference figure}} within one round."""
    ref = figures(round_runs.get(reference, {}))
    if not ref:
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, run in round_runs.items():
        fig = figures(run)
        if not fig:
            continue
        out[name] = {
            key: (fig[key] / ref[key]) if ref[key] else math.nan for key, _ in RATIO_METRICS
        }
    return out


def summarize(rounds: list[dict[str, dict]], targets: list[str], references: list[str]) -> dict:
    """Medians over rounds of every figure, of RSS per process and of per-round ratios."""
    summary: dict = {}
    for name in targets:
        runs = [r[name] for r in rounds if name in r and r[name].get("ok")]
        if not runs:
            continue
        per_run = [figures(run) for run in runs]
        entry: dict = {
            "rounds_ok": len(runs),
            "figures": {key: median(f[key] for f in per_run) for key, _ in METRICS},
            # the spread between rounds: how far to trust a median on a shared machine
            "ranges": {key: [min(f[key] for f in per_run), max(f[key] for f in per_run)]
                       for key in ("rps", "cpu_us_per_req")},
        }
        rss_lists = [rss_per_process_mb(run) for run in runs]
        width = max(len(x) for x in rss_lists)
        entry["rss_per_process_mb"] = [
            median(x[i] for x in rss_lists if i < len(x)) for i in range(width)
        ]
        entry["ratios"] = {}
        for ref in references:
            per_round = [round_ratios(r, ref).get(name) for r in rounds]
            per_round = [x for x in per_round if x]
            if per_round:
                entry["ratios"][ref] = {
                    key: median(x[key] for x in per_round) for key, _ in RATIO_METRICS
                }
                entry["ratios"][ref]["rounds"] = len(per_round)
        summary[name] = entry
    return summary


# --- text tables ---------------------------------------------------------------------------------

def fmt(key: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key == "rps":
        return f"{value:,.0f}"
    if key == "errors":
        return f"{value:,.0f}"
    if key.endswith("_ms"):
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if key.endswith("_mb"):
        return f"{value:.1f}"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def fmt_ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"×{value:.2f}" if value < 10 else f"×{value:.1f}"


def fmt_rss_list(values: list[float]) -> str:
    return "+".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values) or "-"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned others."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def round_table(round_runs: dict[str, dict], targets: list[str]) -> str:
    header = ["target"] + [title for _, title in METRICS] + ["RSS MB per process"]
    rows = []
    for name in targets:
        run = round_runs.get(name)
        if run is None:
            continue
        if not run.get("ok"):
            rows.append([name, f"FAILED: {run.get('error', '?')}".splitlines()[0]])
            continue
        fig = figures(run)
        rows.append([name] + [fmt(k, fig[k]) for k, _ in METRICS] + [fmt_rss_list(rss_per_process_mb(run))])
    return _table_with_failures(header, rows)


ERROR_WARN_FRACTION = 0.01


def error_warnings(round_runs: dict[str, dict], targets: list[str]) -> list[str]:
    """One line per run whose errors exceed ERROR_WARN_FRACTION of its requests: its figures are suspect."""
    lines = []
    for name in targets:
        run = round_runs.get(name, {})
        if not run.get("ok") or run["errors"] <= ERROR_WARN_FRACTION * run["requests"]:
            continue
        detail = ", ".join(f"{k} {v}" for k, v in run["errors_detail"].items() if v)
        lines.append(f"warning: {name}: {run['errors']:,} errors in {run['requests']:,} requests ({detail}); "
                     f"its figures are not meaningful")
    return lines


def client_lag_line(round_runs: dict[str, dict], targets: list[str]) -> str:
    """Constant-rate mode: the client's own send lag (p50/p99 µs), to judge the latency figures."""
    parts = []
    for name in targets:
        lag = round_runs.get(name, {}).get("load", {}).get("send_lag_us")
        if lag:
            parts.append(f"{name} {lag['p50']}/{lag['p99']}")
    return "client send lag p50/p99 µs (scheduled -> sent): " + ", ".join(parts) if parts else ""


def _table_with_failures(header: list[str], rows: list[list[str]]) -> str:
    full = [r for r in rows if len(r) == len(header)]
    text = table(header, full)
    for r in rows:
        if len(r) != len(header):
            text += "\n" + "  ".join(r)
    return text


def summary_tables(summary: dict, targets: list[str], references: list[str]) -> str:
    header = ["target", "rounds"] + [title for _, title in METRICS] + ["RSS MB per process", "req/s min-max",
                                                                        "CPU µs/req min-max"]
    rows = []
    for name in targets:
        entry = summary.get(name)
        if entry is None:
            continue
        fig = entry["figures"]
        ranges = entry.get("ranges", {})
        rows.append(
            [name, str(entry["rounds_ok"])]
            + [fmt(k, fig[k]) for k, _ in METRICS]
            + [fmt_rss_list(entry["rss_per_process_mb"])]
            + ["-".join(fmt(k, v) for v in ranges[k]) if k in ranges else "-" for k in ("rps", "cpu_us_per_req")]
        )
    parts = ["medians over rounds", table(header, rows)]
    for ref in references:
        if not any(ref in summary.get(n, {}).get("ratios", {}) for n in targets):
            continue
        ratio_header = ["target"] + [title for _, title in RATIO_METRICS] + ["rounds"]
        ratio_rows = []
        for name in targets:
            ratios = summary.get(name, {}).get("ratios", {}).get(ref)
            if ratios is None or name == ref:
                continue
            ratio_rows.append(
                [name] + [fmt_ratio(ratios[k]) for k, _ in RATIO_METRICS] + [str(ratios["rounds"])]
            )
        parts.append(f"\nratio to {ref} in the same round (median of per-round ratios)")
        parts.append(table(ratio_header, ratio_rows))
    return "\n".join(parts)
