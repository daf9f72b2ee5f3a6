# The admin port (loopback by default) and the metrics port: route tables for edge.status.serve_http.
#
# Rules:
# - Everything shown is read from the supervisor's Readout (edge/readout.py: SupervisorState, the stats segment,
#   the live history); nothing here changes state except POST /reload, which asks the supervisor for a reload
#   (the reload_and_wait it was given, so that this module never imports the supervisor) and answers with its
#   outcome: 200 published/unchanged, 422 failed (the `file:line: message` errors in the body), 503 while
#   draining, 504 when the reload did not finish within RELOAD_WAIT_S.
# - Envoy's admin paths where edge has the same thing: /config_dump, /clusters (text; ?format=json),
#   /stats (text; ?format=json, ?filter=REGEX, ?usedonly), /stats/prometheus, /ready (200 LIVE, 503
#   PRE_INITIALIZING/DRAINING), /server_info. Plus / (the live page, edge/admin_page.py) and /live (its JSON).
# - Metrics port: /stats/prometheus only (Istio's 15090 listener).
# - The admin port answers only requests a browser cannot be tricked into sending (admin_guard): the Host must be
#   an IP address or `localhost` (a DNS-rebinding page reaches the port under its own host name, which is
#   refused), and a request that changes something (POST) must not come from another origin (an Origin header
#   other than this Host's, or Sec-Fetch-Site: cross-site). curl, scripts and the admin page itself pass. 403
#   otherwise.
from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import orjson
import trio

from edge.admin_page import PAGE_HTML
from edge.metrics import envoy_stats, live_view, render_envoy_stats, render_prometheus
from edge.readout import Readout
from edge.status import Request, Response, Routes, text
from edge.table import to_builtins
from workers.paths import parse_authority
from workers.regex import regex_error

RELOAD_WAIT_S = 30.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
_DIAGNOSTIC_RE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+): (?P<message>.*)$", re.DOTALL)


def json_response(status: int, value) -> Response:
    return Response(status, orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n", content_type=JSON_CONTENT_TYPE)


def _query(request: Request) -> dict[str, str]:
    parsed = parse_qs(request.query, keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def split_diagnostic(line: str) -> dict:
    """"conf/a.yaml:12: message" → {"file", "line", "message"} (file "" and line 0 when it has no place)."""
    match = _DIAGNOSTIC_RE.match(line)
    if match is None:
        return {"file": "", "line": 0, "message": line}
    return {"file": match["file"], "line": int(match["line"]), "message": match["message"]}


# -------------------------------------------------------------------------------------------- documents


def config_dump(readout: Readout) -> dict:
    state = readout.state
    error = state.last_reload_error
    return {
        "generation": state.generation,
        "config_paths": list(state.config_paths),
        "source_files": list(state.source_files),
        "warnings": list(state.warnings),
        "reloads": {
            "total": state.reloads_total,
            "failures": state.reload_failures_total,
            "last_ok": state.last_reload_ok,
            "last_success_at": state.last_reload_success_at,
            "last_error": None
            if error is None
            else {
                "at": error.at,
                "generation_kept": error.generation,
                "lines": list(error.lines),
                "errors": [split_diagnostic(line) for line in error.lines],
            },
        },
        "jwks": readout.jwks_statistics(),
        "table": to_builtins(state.table) if state.table is not None else None,
    }


def clusters_document(readout: Readout) -> dict:
    """Every cluster of the table with its endpoints, annotated with what the live workers report."""
    state = readout.state
    reports = readout.worker_reports()  # slot → status document of a live worker
    workers = len(reports)
    out = {}
    table_clusters = state.table.clusters if state.table is not None else {}
    for name, cluster in sorted(table_clusters.items()):
        endpoints = []
        for ep in cluster.endpoints:
            address = f"{ep.address}:{ep.port}"
            active = 0
            ejected_in = 0
            times_ejected = 0
            pool = {"active": 0, "idle": 0, "connects": 0, "reuses": 0}
            for report in reports.values():
                for seen in report.get("clusters", {}).get(name, {}).get("endpoints", ()):
                    if seen.get("address") == ep.address and seen.get("port") == ep.port:
                        active += seen.get("active", 0)
                        ejected_in += bool(seen.get("ejected"))
                        times_ejected += seen.get("times_ejected", 0)
                counts = report.get("pools", {}).get(address)
                if counts:
                    for k in pool:
                        pool[k] += counts.get(k, 0)
            endpoints.append({
                "address": ep.address,
                "port": ep.port,
                "weight": ep.weight,
                "labels": dict(ep.labels),
                "health": "ejected" if workers and ejected_in == workers else ("partially_ejected" if ejected_in else "healthy"),
                "ejected_in_workers": ejected_in,
                "times_ejected": times_ejected,
                "active_requests": active,
                "pool": pool,
            })  # fmt: skip
        out[name] = {
            "service": cluster.service,
            "port": cluster.port,
            "subset": cluster.subset,
            "lb_policy": cluster.lb_policy,
            "outlier_detection": cluster.outlier is not None,
            "endpoints": endpoints,
        }
    return {"workers_reporting": workers, "clusters": out}


def clusters_text(document: dict) -> str:
    """Envoy's /clusters text shape: <cluster>::<address>::<stat>::<value>."""
    lines = []
    for name, cluster in document["clusters"].items():
        lines.append(f"{name}::outlier_detection::{'enabled' if cluster['outlier_detection'] else 'disabled'}")
        for ep in cluster["endpoints"]:
            address = f"{ep['address']}:{ep['port']}"
            health = "healthy" if ep["health"] == "healthy" else "/failed_outlier_check"
            lines.append(f"{name}::{address}::health_flags::{health}")
            lines.append(f"{name}::{address}::weight::{ep['weight']}")
            lines.append(f"{name}::{address}::rq_active::{ep['active_requests']}")
            lines.append(f"{name}::{address}::cx_active::{ep['pool']['active']}")
            lines.append(f"{name}::{address}::cx_idle::{ep['pool']['idle']}")
            lines.append(f"{name}::{address}::cx_total::{ep['pool']['connects']}")
            lines.append(f"{name}::{address}::times_ejected::{ep['times_ejected']}")
    return "\n".join(lines) + ("\n" if lines else "")


def server_info(readout: Readout) -> dict:
    state = readout.state
    ready, reason = state.readiness()
    return {
        "state": "DRAINING" if state.draining else ("LIVE" if ready else "PRE_INITIALIZING"),
        "reason": reason,
        "uptime_s": round(time.time() - state.started_at, 3),
        "generation": state.generation,
        "workers": [
            {
                "slot": slot.slot,
                "pid": slot.worker.pid if slot.worker is not None else None,
                "state": slot.worker.state if slot.worker is not None else "down",
                "serving_generation": slot.worker.serving_generation if slot.worker is not None else 0,
                "restarts": slot.restarts,
                "backoff_s": slot.backoff_s,
                "last_exit": slot.last_exit,
            }
            for slot in state.slots
        ],
        "last_reload_ok": state.last_reload_ok,
        "last_reload_error": list(state.last_reload_error.lines) if state.last_reload_error is not None and not state.last_reload_ok else [],
    }


# ---------------------------------------------------------------------------------------------- routes


def metrics_routes(readout: Readout) -> Routes:
    async def prometheus(_request: Request) -> Response:
        body = render_prometheus(readout.stats_totals(), readout.supervisor_view())
        return Response(200, body.encode(), content_type=PROMETHEUS_CONTENT_TYPE)

    return {"/stats/prometheus": {"GET": prometheus}}


_SAFE_METHODS = frozenset({"GET", "HEAD"})


def admin_refusal(request: Request) -> str | None:
    """Why the admin port refuses this request (see the module comment), or None."""
    headers = dict(request.headers)
    host = headers.get("host", "")
    parsed = parse_authority(host.encode("latin-1", "replace"))  # the gateway's own authority rule
    name = parsed[0].decode("ascii").strip("[]") if parsed is not None else ""
    if name != "localhost":
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return f"Host {host!r} is not an IP address or localhost (the admin port does not answer other names)"
    if request.method not in _SAFE_METHODS:
        origin = headers.get("origin")
        if origin is not None and origin != f"http://{host}":
            return f"Origin {origin!r} is not this admin port"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "a cross-site request"
    return None


def admin_guard(routes: Routes) -> Routes:
    """Every route behind admin_refusal: 403 with the reason."""

    def guarded(route):
        async def checked(request: Request) -> Response:
            refusal = admin_refusal(request)
            if refusal is not None:
                return text(403, f"forbidden: {refusal}")
            return await route(request)

        return checked

    return {path: {method: guarded(route) for method, route in methods.items()} for path, methods in routes.items()}


def admin_routes(readout: Readout, reload_and_wait: Callable[[str], Awaitable[str]]) -> Routes:
    """reload_and_wait(reason) asks the supervisor for a reload and returns the outcome line of the reload that
    covers the request (edge/reloads.py)."""
    routes = metrics_routes(readout)

    async def index(_request: Request) -> Response:
        return Response(200, PAGE_HTML, content_type="text/html; charset=utf-8", headers=(("cache-control", "no-store"),))

    async def live(request: Request) -> Response:
        query = _query(request)
        try:
            window = max(1, min(int(query.get("window", "120")), 600))
        except ValueError:
            return text(400, "window: give a number of seconds")
        document = live_view(readout.live.samples, window)
        document["server"] = server_info(readout)
        return json_response(200, document)

    async def dump(_request: Request) -> Response:
        return json_response(200, config_dump(readout))

    async def clusters(request: Request) -> Response:
        document = clusters_document(readout)
        if _query(request).get("format") == "json":
            return json_response(200, document)
        return Response(200, clusters_text(document).encode())

    async def stats(request: Request) -> Response:
        query = _query(request)
        values = envoy_stats(readout.stats_totals(), readout.supervisor_view(), time.time() - readout.state.started_at)
        if query.get("format") == "json":
            return json_response(200, {"stats": [{"name": k, "value": v} for k, v in sorted(values.items())]})
        try:
            body = render_envoy_stats(values, filter_regex=query.get("filter", ""), used_only="usedonly" in query)
        except regex_error() as exc:
            return text(400, f"filter: {exc}")
        return Response(200, body.encode())

    async def ready(_request: Request) -> Response:
        info = server_info(readout)
        return text(200 if info["state"] == "LIVE" else 503, info["state"])

    async def info(_request: Request) -> Response:
        return json_response(200, server_info(readout))

    async def reload(_request: Request) -> Response:
        if readout.state.draining:
            return json_response(503, {"outcome": "draining: reloads are off", "ok": False})
        with trio.move_on_after(RELOAD_WAIT_S):
            outcome = await reload_and_wait("POST /reload")
            ok = "failed" not in outcome
            document = {"outcome": outcome, "ok": ok, "generation": readout.state.generation}
            if not ok and readout.state.last_reload_error is not None:
                lines = list(readout.state.last_reload_error.lines)
                document["errors"] = [split_diagnostic(line) for line in lines]
                document["lines"] = lines
            return json_response(200 if ok else 422, document)
        return json_response(504, {"outcome": f"the reload did not finish within {RELOAD_WAIT_S:g} s", "ok": False})

    routes.update({
        "/": {"GET": index},
        "/live": {"GET": live},
        "/config_dump": {"GET": dump},
        "/clusters": {"GET": clusters},
        "/stats": {"GET": stats},
        "/ready": {"GET": ready},
        "/server_info": {"GET": info},
        "/reload": {"POST": reload},
    })  # fmt: skip
    return admin_guard(routes)


__all__ = ["admin_guard", "admin_refusal", "admin_routes", "metrics_routes", "config_dump", "clusters_document", "clusters_text", "server_info", "split_diagnostic"]
