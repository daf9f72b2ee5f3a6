# What the metrics and admin ports show, computed from the stats segment's slots and SupervisorState (pure:
# values in, text or JSON-ready values out; edge/admin.py does the serving).
#
# Rules:
# - Totals = the sum over every slot. A slot keeps counting across worker restarts (edge/stats_shm.py), so
#   counters never go backwards while the supervisor lives. Gauges count only slots whose worker is alive.
# - Prometheus text format 0.0.4: `# HELP`, `# TYPE`, samples sorted; histograms cumulative with `le`
#   (Envoy's default bounds, as Istio's standard metrics) plus `_sum` and `_count`; label values escaped.
# - Istio's standard metrics carry Istio's label names (reporter="source", as a gateway reports); a label with
#   no meaning at a standalone gateway is "unknown", as Istio shows it at the source side.
#   destination_service is the cluster's host; destination_service_name/namespace come from
#   <name>.<namespace>.svc.<cluster domain> hosts, else the host and "unknown".
# - edge's own metrics are edge_*; Envoy-like stat names (cluster.<c>.upstream_rq_2xx …) are on admin /stats.
# - Live view (admin page): the supervisor keeps one LiveSample a second; live_view() turns the last samples
#   into per-route and per-cluster series of request rate, error rate (5xx and no response) and p50/p99
#   latency, estimated from bucket deltas like Prometheus' histogram_quantile (linear inside a bucket).
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edge.stats_shm import (
    BYTES_BUCKETS,
    DURATION_BUCKETS_MS,
    E_DURATION_BUCKETS,
    E_DURATION_SUM_US,
    E_REQUEST_BYTES_BUCKETS,
    E_REQUEST_BYTES_SUM,
    E_RESPONSE_BYTES_BUCKETS,
    E_RESPONSE_BYTES_SUM,
    E_TCP_CLOSED,
    E_TCP_OPENED,
    E_TCP_RECEIVED,
    E_TCP_SENT,
    W_ACCESS_LOG_DROPPED,
    W_ACTIVE_CONNECTIONS,
    W_CONNECTION_ERRORS,
    W_EJECTED_ENDPOINTS,
    W_EJECTIONS_TOTAL,
    W_OVERFLOW_RECORDS,
    W_POOL_ACTIVE,
    W_POOL_IDLE,
    W_TCP_ACTIVE,
    SlotSnapshot,
)
from workers.regex import Regex

N_DURATION = len(DURATION_BUCKETS_MS) + 1
N_BYTES = len(BYTES_BUCKETS) + 1
UNKNOWN = "unknown"
SOURCE_WORKLOAD = "edge"
LIVE_HISTORY = 300  # samples kept (one a second: five minutes)
LIVE_WINDOW = 120  # samples live_view() returns by default


# ------------------------------------------------------------------------------------------------ totals


@dataclass
class HttpTotals:
    duration: list[int] = field(default_factory=lambda: [0] * N_DURATION)
    duration_sum_us: int = 0
    request_bytes: list[int] = field(default_factory=lambda: [0] * N_BYTES)
    request_bytes_sum: int = 0
    response_bytes: list[int] = field(default_factory=lambda: [0] * N_BYTES)
    response_bytes_sum: int = 0

    @property
    def count(self) -> int:
        return sum(self.duration)

    def add_entry(self, words: Sequence[int]) -> None:
        self.duration_sum_us += words[E_DURATION_SUM_US]
        self.request_bytes_sum += words[E_REQUEST_BYTES_SUM]
        self.response_bytes_sum += words[E_RESPONSE_BYTES_SUM]
        _add(self.duration, words[E_DURATION_BUCKETS : E_DURATION_BUCKETS + N_DURATION])
        _add(self.request_bytes, words[E_REQUEST_BYTES_BUCKETS : E_REQUEST_BYTES_BUCKETS + N_BYTES])
        _add(self.response_bytes, words[E_RESPONSE_BYTES_BUCKETS : E_RESPONSE_BYTES_BUCKETS + N_BYTES])

    def add(self, other: "HttpTotals") -> None:
        self.duration_sum_us += other.duration_sum_us
        self.request_bytes_sum += other.request_bytes_sum
        self.response_bytes_sum += other.response_bytes_sum
        _add(self.duration, other.duration)
        _add(self.request_bytes, other.request_bytes)
        _add(self.response_bytes, other.response_bytes)


@dataclass
class TcpTotals:
    opened: int = 0
    closed: int = 0
    sent: int = 0
    received: int = 0


@dataclass
class Totals:
    """The sum over all slots."""

    http: dict[tuple, HttpTotals] = field(default_factory=dict)  # (listener, route, cluster, code, flags, grpc: edge/stats_shm.py)
    tcp: dict[tuple, TcpTotals] = field(default_factory=dict)  # (listener, cluster)
    active_connections: int = 0
    tcp_active_connections: int = 0
    pool_active: int = 0
    pool_idle: int = 0
    ejected_endpoints: int = 0
    ejections_total: int = 0
    overflow_records: int = 0
    access_log_dropped: int = 0
    connection_errors: int = 0
    counters: dict[str, int] = field(default_factory=dict)  # named Envoy stats (http.<listener>.rbac.allowed, …)


def _add(into: list[int], values: Sequence[int]) -> None:
    for i, v in enumerate(values):
        into[i] += v


def sum_slots(snapshots: Iterable[SlotSnapshot], live_slots: Iterable[int] | None = None) -> Totals:
    """Counters of every slot; gauges of the slots in live_slots (all when None)."""
    live = None if live_slots is None else set(live_slots)
    totals = Totals()
    for snap in snapshots:
        for key, words in snap.http:
            entry = totals.http.get(key)
            if entry is None:
                entry = totals.http[key] = HttpTotals()
            entry.add_entry(words)
        for key, words in snap.tcp:
            entry = totals.tcp.get(key)
            if entry is None:
                entry = totals.tcp[key] = TcpTotals()
            entry.opened += words[E_TCP_OPENED]
            entry.closed += words[E_TCP_CLOSED]
            entry.sent += words[E_TCP_SENT]
            entry.received += words[E_TCP_RECEIVED]
        totals.ejections_total += snap.gauge(W_EJECTIONS_TOTAL)
        totals.overflow_records += snap.gauge(W_OVERFLOW_RECORDS)
        totals.access_log_dropped += snap.gauge(W_ACCESS_LOG_DROPPED)
        totals.connection_errors += snap.gauge(W_CONNECTION_ERRORS)
        for name, value in snap.counters:
            totals.counters[name] = totals.counters.get(name, 0) + value
        if live is None or snap.slot in live:
            totals.active_connections += snap.gauge(W_ACTIVE_CONNECTIONS)
            totals.tcp_active_connections += snap.gauge(W_TCP_ACTIVE)
            totals.pool_active += snap.gauge(W_POOL_ACTIVE)
            totals.pool_idle += snap.gauge(W_POOL_IDLE)
            totals.ejected_endpoints += snap.gauge(W_EJECTED_ENDPOINTS)
    # Overflow entries that never counted anything are not series.
    totals.http = {k: v for k, v in totals.http.items() if v.count or k[0] != "overflow"}
    totals.tcp = {k: v for k, v in totals.tcp.items() if v.opened or v.closed or k[0] != "overflow"}
    return totals


# ---------------------------------------------------------------------------------------------- labels


def cluster_host(cluster: str) -> str:
    """"outbound|80|v1|reviews.default.svc.cluster.local" → the host; "" for "-"/"" (no cluster)."""
    if not cluster or cluster == "-":
        return ""
    parts = cluster.split("|")
    return parts[3] if len(parts) == 4 else cluster


def service_labels(host: str, cluster_domain: str = "cluster.local") -> tuple[str, str, str]:
    """(destination_service, destination_service_name, destination_service_namespace)."""
    if not host:
        return UNKNOWN, UNKNOWN, UNKNOWN
    suffix = ".svc." + cluster_domain
    if host.endswith(suffix):
        labels = host[: -len(suffix)].split(".")
        if len(labels) == 2:
            return host, labels[0], labels[1]
    return host, host, UNKNOWN


def _istio_labels(host: str, cluster_domain: str, protocol: str, code: str, flags: str, grpc: str = "") -> dict[str, str]:
    service, name, namespace = service_labels(host, cluster_domain)
    return {
        "reporter": "source",
        "source_workload": SOURCE_WORKLOAD,
        "source_workload_namespace": UNKNOWN,
        "source_principal": UNKNOWN,
        "source_app": SOURCE_WORKLOAD,
        "source_version": UNKNOWN,
        "source_canonical_service": SOURCE_WORKLOAD,
        "source_canonical_revision": UNKNOWN,
        "source_cluster": UNKNOWN,
        "destination_workload": UNKNOWN,
        "destination_workload_namespace": UNKNOWN,
        "destination_principal": UNKNOWN,
        "destination_app": UNKNOWN,
        "destination_version": UNKNOWN,
        "destination_service": service,
        "destination_service_name": name,
        "destination_service_namespace": namespace,
        "destination_canonical_service": UNKNOWN,
        "destination_canonical_revision": UNKNOWN,
        "destination_cluster": UNKNOWN,
        "request_protocol": protocol,
        "response_code": code,
        "grpc_response_status": grpc,  # empty for a request that is not gRPC or got no status (Istio's istio_stats)
        "response_flags": flags,
        "connection_security_policy": UNKNOWN,
    }


# ------------------------------------------------------------------------------------- Prometheus text


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items()) + "}"


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def format_le(bound: float) -> str:
    return str(int(bound)) if bound == int(bound) else repr(bound)


class PromWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {format_value(value)}")

    def histogram(self, name: str, labels: dict[str, str], bounds: Sequence[float], counts: Sequence[int], total: float) -> None:
        cumulative = 0
        for bound, count in zip(bounds, counts):
            cumulative += count
            self.sample(f"{name}_bucket", {**labels, "le": format_le(bound)}, cumulative)
        cumulative += counts[len(bounds)]
        self.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, cumulative)
        self.sample(f"{name}_sum", labels, total)
        self.sample(f"{name}_count", labels, cumulative)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@dataclass(frozen=True)
class SupervisorView:
    """What of SupervisorState the renderers need (a plain value, so tests build it directly)."""

    generation: int = 0
    reloads_total: int = 0
    reload_failures_total: int = 0
    last_reload_ok: bool = True
    last_reload_success_at: float = 0.0
    last_reload_failure_at: float = 0.0
    ready: bool = False
    draining: bool = False
    started_at: float = 0.0
    workers: int = 0
    # (slot, state, restarts, backoff_s, pid, crash_looping)
    worker_states: tuple[tuple[int, str, int, float, int, bool], ...] = ()
    cluster_domain: str = "cluster.local"
    # RequestAuthentication key sources (edge/jwks.py statistics()): (uri, fetches, failures, last success, keys held)
    jwks_sources: tuple[tuple[str, int, int, float, bool], ...] = ()


def render_prometheus(totals: Totals, view: SupervisorView) -> str:
    w = PromWriter()
    _render_istio_http(w, totals, view.cluster_domain)
    _render_istio_tcp(w, totals, view.cluster_domain)
    _render_rbac(w, totals)
    _render_route_requests(w, totals)
    _render_supervisor(w, view)
    _render_jwks(w, view)
    _render_worker_totals(w, totals)
    _render_worker_slots(w, view)
    return w.text()


def _render_istio_http(w: PromWriter, totals: Totals, domain: str) -> None:
    """Istio standard metrics: HTTP, grouped by their label set (routes and listeners are not Istio labels)."""
    grouped: dict[tuple[str, str, str, str, str], HttpTotals] = {}
    for (listener, route, cluster, code, flags, grpc), entry in totals.http.items():
        # Istio's request_protocol is "grpc" for a gRPC request; grpc_response_status its status, else empty.
        key = ("http" if grpc == -1 else "grpc", cluster_host(cluster), str(code), flags or "-", str(grpc) if grpc >= 0 else "")
        into = grouped.get(key)
        if into is None:
            into = grouped[key] = HttpTotals()
        into.add(entry)
    ordered = sorted(grouped.items())
    w.family("istio_requests_total", "counter", "Requests processed by the gateway (Istio standard metric).")
    for (protocol, host, code, flags, grpc), entry in ordered:
        w.sample("istio_requests_total", _istio_labels(host, domain, protocol, code, flags, grpc), entry.count)
    w.family("istio_request_duration_milliseconds", "histogram", "Request duration in milliseconds (Istio standard metric).")
    for (protocol, host, code, flags, grpc), entry in ordered:
        w.histogram("istio_request_duration_milliseconds", _istio_labels(host, domain, protocol, code, flags, grpc), DURATION_BUCKETS_MS, entry.duration, entry.duration_sum_us / 1000)
    w.family("istio_request_bytes", "histogram", "HTTP request body sizes in bytes (Istio standard metric).")
    for (protocol, host, code, flags, grpc), entry in ordered:
        w.histogram("istio_request_bytes", _istio_labels(host, domain, protocol, code, flags, grpc), BYTES_BUCKETS, entry.request_bytes, entry.request_bytes_sum)
    w.family("istio_response_bytes", "histogram", "HTTP response body sizes in bytes (Istio standard metric).")
    for (protocol, host, code, flags, grpc), entry in ordered:
        w.histogram("istio_response_bytes", _istio_labels(host, domain, protocol, code, flags, grpc), BYTES_BUCKETS, entry.response_bytes, entry.response_bytes_sum)


def _render_istio_tcp(w: PromWriter, totals: Totals, domain: str) -> None:
    """Istio standard metrics: TCP, grouped by destination host."""
    tcp_grouped: dict[str, TcpTotals] = {}
    for (listener, cluster), entry in totals.tcp.items():
        into = tcp_grouped.setdefault(cluster_host(cluster), TcpTotals())
        into.opened += entry.opened
        into.closed += entry.closed
        into.sent += entry.sent
        into.received += entry.received
    tcp_ordered = sorted(tcp_grouped.items())
    for name, attr, help_text in (
        ("istio_tcp_connections_opened_total", "opened", "TCP connections opened (Istio standard metric)."),
        ("istio_tcp_connections_closed_total", "closed", "TCP connections closed (Istio standard metric)."),
        ("istio_tcp_sent_bytes_total", "sent", "Bytes sent to downstream clients on TCP connections (Istio standard metric)."),
        ("istio_tcp_received_bytes_total", "received", "Bytes received from downstream clients on TCP connections (Istio standard metric)."),
    ):
        w.family(name, "counter", help_text)
        for host, entry in tcp_ordered:
            w.sample(name, _istio_labels(host, domain, "tcp", "0", "-"), getattr(entry, attr))


# Envoy's RBAC filter stats as Istio's proxy exports them: its bootstrap keeps only the names ending in rbac.allowed
# and rbac.denied (stats_matcher inclusion) and extracts the decision as the tag authz_enforce_result and the HTTP
# connection manager's stat prefix as http_conn_manager_prefix (tools/packaging/common/envoy_bootstrap.json
# stats_tags), so `http.<prefix>.rbac.allowed` becomes envoy_http_rbac{http_conn_manager_prefix, authz_enforce_result}.
# The network filters' stat prefix is Istio's "tcp.": `tcp.rbac.denied` → envoy_tcp_rbac{authz_enforce_result}.
RBAC_RESULTS = ("allowed", "denied")


def _render_rbac(w: PromWriter, totals: Totals) -> None:
    http: dict[tuple[str, str], int] = {}
    tcp: dict[str, int] = {}
    for name, value in totals.counters.items():
        head, _, result = name.rpartition(".rbac.")
        if result not in RBAC_RESULTS:
            continue
        if head == "tcp":
            tcp[result] = tcp.get(result, 0) + value
        elif head.startswith("http."):
            key = (head[len("http.") :], result)
            http[key] = http.get(key, 0) + value
    if http:
        w.family("envoy_http_rbac", "counter", "Requests Envoy's HTTP RBAC filters (AuthorizationPolicy) allowed or denied; every filter a request passes counts.")
        for (prefix, result), value in sorted(http.items()):
            w.sample("envoy_http_rbac", {"http_conn_manager_prefix": prefix, "authz_enforce_result": result}, value)
    if tcp:
        w.family("envoy_tcp_rbac", "counter", "Connections Envoy's network RBAC filters (AuthorizationPolicy on TCP and TLS passthrough) allowed or denied.")
        for result, value in sorted(tcp.items()):
            w.sample("envoy_tcp_rbac", {"authz_enforce_result": result}, value)


def _render_route_requests(w: PromWriter, totals: Totals) -> None:
    """edge: per route (the admin page's view, with the listener and route Istio's metrics do not have)."""
    per_route: dict[tuple[str, str, str, str], int] = {}
    for (listener, route, cluster, code, flags, _grpc), entry in totals.http.items():
        key = (listener, route, cluster, code_class(code))
        per_route[key] = per_route.get(key, 0) + entry.count
    w.family("edge_route_requests_total", "counter", "HTTP requests by listener, route, cluster and response code class.")
    for (listener, route, cluster, klass), count in sorted(per_route.items()):
        w.sample("edge_route_requests_total", {"listener": listener, "route": route, "cluster": cluster, "response_code_class": klass}, count)


def _render_jwks(w: PromWriter, view: SupervisorView) -> None:
    """edge: the supervisor's JWKS fetches per key source (a jwksUri, or an issuer's OpenID configuration), as istiod
    counts pilot_jwks_resolver_network_fetch_success_total / _fail_total; nothing without RequestAuthentication."""
    if not view.jwks_sources:
        return
    families = (
        ("edge_jwks_fetches_total", "counter", "JWKS fetches per key source (jwksUri or OpenID configuration URL).", 1),
        ("edge_jwks_fetch_failures_total", "counter", "JWKS fetches that failed (the last good keys were kept).", 2),
        ("edge_jwks_last_success_timestamp_seconds", "gauge", "When the key source last answered a usable JWKS (Unix time; 0 never).", 3),
        ("edge_jwks_keys_available", "gauge", "1 when the key source's keys are in the table, 0 while its tokens all fail.", 4),
    )
    for name, kind, help_text, column in families:
        w.family(name, kind, help_text)
        for source in view.jwks_sources:
            w.sample(name, {"uri": source[0]}, float(source[column]))


def _render_supervisor(w: PromWriter, view: SupervisorView) -> None:
    """edge: the supervisor (reloads, the table, readiness)."""
    w.family("edge_reloads_total", "counter", "Configuration reloads attempted (file change, SIGHUP, POST /reload).")
    w.sample("edge_reloads_total", {}, view.reloads_total)
    w.family("edge_reload_failures_total", "counter", "Reloads that kept the previous table (bad YAML, validation errors).")
    w.sample("edge_reload_failures_total", {}, view.reload_failures_total)
    w.family("edge_config_last_reload_success", "gauge", "1 when the last reload succeeded (or none was tried), 0 when it failed.")
    w.sample("edge_config_last_reload_success", {}, 1 if view.last_reload_ok else 0)
    w.family("edge_config_last_reload_success_timestamp_seconds", "gauge", "When a table was last published (Unix time).")
    w.sample("edge_config_last_reload_success_timestamp_seconds", {}, float(view.last_reload_success_at))
    w.family("edge_config_last_reload_failure_timestamp_seconds", "gauge", "When a reload last failed (Unix time; 0 never).")
    w.sample("edge_config_last_reload_failure_timestamp_seconds", {}, float(view.last_reload_failure_at))
    w.family("edge_table_generation", "gauge", "Generation of the routing table being served.")
    w.sample("edge_table_generation", {}, view.generation)
    w.family("edge_ready", "gauge", "1 while the status port answers ready.")
    w.sample("edge_ready", {}, 1 if view.ready else 0)
    w.family("edge_draining", "gauge", "1 once a drain (SIGTERM/SIGINT) started.")
    w.sample("edge_draining", {}, 1 if view.draining else 0)
    w.family("edge_start_time_seconds", "gauge", "When the supervisor started (Unix time).")
    w.sample("edge_start_time_seconds", {}, float(view.started_at))


def _render_worker_totals(w: PromWriter, totals: Totals) -> None:
    """edge: what the workers count, summed over them."""
    w.family("edge_active_connections", "gauge", "Downstream connections open, all workers.")
    w.sample("edge_active_connections", {}, totals.active_connections)
    w.family("edge_tcp_active_connections", "gauge", "Proxied TCP connections open, all workers.")
    w.sample("edge_tcp_active_connections", {}, totals.tcp_active_connections)
    w.family("edge_upstream_pool_connections", "gauge", "Upstream HTTP connections in the workers' pools.")
    w.sample("edge_upstream_pool_connections", {"state": "active"}, totals.pool_active)
    w.sample("edge_upstream_pool_connections", {"state": "idle"}, totals.pool_idle)
    w.family("edge_outlier_ejections_total", "counter", "Endpoints ejected by outlier detection, all workers.")
    w.sample("edge_outlier_ejections_total", {}, totals.ejections_total)
    w.family("edge_outlier_ejected_endpoints", "gauge", "Endpoint ejections in force now, summed over workers.")
    w.sample("edge_outlier_ejected_endpoints", {}, totals.ejected_endpoints)
    w.family("edge_stats_overflow_records_total", "counter", "Records counted under 'overflow' because a stats slot was full.")
    w.sample("edge_stats_overflow_records_total", {}, totals.overflow_records)
    w.family("edge_access_log_dropped_lines_total", "counter", "Access-log lines lost: the destination did not keep up (4 MiB waiting per worker) or a write failed.")
    w.sample("edge_access_log_dropped_lines_total", {}, totals.access_log_dropped)
    w.family("edge_connection_errors_total", "counter", "Connections ended by an unexpected error in edge (each logged by its worker with a traceback); the worker and its other connections go on.")
    w.sample("edge_connection_errors_total", {}, totals.connection_errors)


def _render_worker_slots(w: PromWriter, view: SupervisorView) -> None:
    """edge: the worker processes, by state and by slot."""
    w.family("edge_workers", "gauge", "Worker processes by state.")
    states: dict[str, int] = {"starting": 0, "serving": 0, "draining": 0, "down": 0}
    for _slot, state, *_ in view.worker_states:
        states[state] = states.get(state, 0) + 1
    for state, count in states.items():
        w.sample("edge_workers", {"state": state}, count)
    w.family("edge_worker_restarts_total", "counter", "Worker processes replaced after they exited or hung.")
    for slot, _state, restarts, *_ in view.worker_states:
        w.sample("edge_worker_restarts_total", {"slot": str(slot)}, restarts)
    w.family("edge_worker_restart_backoff_seconds", "gauge", "Delay before the slot's last restart (doubles in a crash loop).")
    for slot, _state, _restarts, backoff, *_ in view.worker_states:
        w.sample("edge_worker_restart_backoff_seconds", {"slot": str(slot)}, float(backoff))
    w.family("edge_worker_crash_looping", "gauge", "1 while a slot's restarts back off and its worker has not yet run long enough to reset that.")
    for slot, _state, _restarts, _backoff, _pid, looping in view.worker_states:
        w.sample("edge_worker_crash_looping", {"slot": str(slot)}, 1 if looping else 0)


def code_class(code: int) -> str:
    return f"{code // 100}xx" if code >= 100 else "0"


# ------------------------------------------------------------------------------------- Envoy-like /stats


def envoy_stats(totals: Totals, view: SupervisorView, uptime_s: float) -> dict[str, int]:
    stats: dict[str, int] = {}

    def inc(name: str, value: int) -> None:
        stats[name] = stats.get(name, 0) + value

    for (listener, route, cluster, code, flags, _grpc), entry in totals.http.items():
        n = entry.count
        prefix = f"http.{listener}"
        inc(f"{prefix}.downstream_rq_total", n)
        inc(f"{prefix}.downstream_rq_{code_class(code)}", n)
        if flags == "NR":
            inc(f"{prefix}.no_route", n)
        if cluster and cluster != "-":
            c = f"cluster.{cluster}"
            inc(f"{c}.upstream_rq_total", n)
            inc(f"{c}.upstream_rq_{code_class(code)}", n)
            inc(f"{c}.upstream_rq_{code}", n)
            if flags in ("UF", "URX"):
                inc(f"{c}.upstream_cx_connect_fail", n)
            if flags == "UT":
                inc(f"{c}.upstream_rq_timeout", n)
            if flags == "UH":
                inc(f"{c}.upstream_cx_none_healthy", n)
    for (listener, cluster), entry in totals.tcp.items():
        prefix = f"tcp.{listener}"
        inc(f"{prefix}.downstream_cx_total", entry.opened)
        inc(f"{prefix}.downstream_cx_tx_bytes_total", entry.sent)
        inc(f"{prefix}.downstream_cx_rx_bytes_total", entry.received)
        if cluster and cluster != "-":
            inc(f"cluster.{cluster}.upstream_cx_total", entry.opened)
    for name, value in totals.counters.items():
        inc(name, value)
    stats["server.live"] = 0 if view.draining else 1
    stats["server.state"] = 1 if view.draining else (0 if view.ready else 2)  # Envoy: LIVE 0, DRAINING 1, PRE_INITIALIZING 2
    stats["server.uptime"] = int(uptime_s)
    stats["server.concurrency"] = view.workers
    stats["server.total_connections"] = totals.active_connections
    stats["cluster_manager.upstream_cx_active"] = totals.pool_active
    stats["cluster_manager.upstream_cx_idle"] = totals.pool_idle
    stats["cluster_manager.outlier_detection.ejections_total"] = totals.ejections_total
    stats["listener_manager.lds.update_attempt"] = view.reloads_total + 1
    stats["listener_manager.lds.update_rejected"] = view.reload_failures_total
    stats["listener_manager.lds.update_success"] = view.reloads_total - view.reload_failures_total + 1
    stats["edge.table_generation"] = view.generation
    stats["edge.worker_restarts"] = sum(restarts for _slot, _state, restarts, *_ in view.worker_states)
    return stats


def render_envoy_stats(stats: dict[str, int], *, filter_regex: str = "", used_only: bool = False) -> str:
    """Envoy's /stats text. The filter is RE2 (linear time, as Envoy's /stats?filter= is): a request to the admin
    port can never make the supervisor spin. A pattern RE2 refuses raises workers.regex.regex_error()."""
    pattern = Regex(filter_regex) if filter_regex else None
    lines = []
    for name in sorted(stats):
        value = stats[name]
        if used_only and value == 0:
            continue
        if pattern is not None and not pattern.search(name):  # RE2 search
            continue
        lines.append(f"{name}: {value}")
    return "\n".join(lines) + ("\n" if lines else "")


# -------------------------------------------------------------------------------------------- live view


@dataclass(frozen=True)
class LiveSample:
    at: float  # wall clock
    # name → (requests, errors, duration bucket counts); names: routes "listener route", clusters by name
    routes: dict[str, tuple[int, int, tuple[int, ...]]]
    clusters: dict[str, tuple[int, int, tuple[int, ...]]]
    total: dict[str, tuple[int, int, tuple[int, ...]]] = field(default_factory=dict)  # {"all": …}


def is_error(code: int) -> bool:
    return code >= 500 or code == 0


def route_label(listener: str, route: str, flags: str = "-") -> str:
    if route and route != "-":
        return f"{listener} {route}"
    return f"{listener} {'(no route)' if flags == 'NR' else '(unnamed)'}"


def cluster_label(cluster: str, route: str, code: int, flags: str = "-") -> str:
    """The admin page's name for where a request went: its cluster, or, without one, what answered it: no route
    (NR), an unknown destination (NC), the route's redirect (a 3xx: route-level redirects are always 301, 302,
    303, 307 or 308) or direct response, or a local reply before any route (a bad request)."""
    if cluster and cluster != "-":
        return cluster
    if "NR" in flags:
        return "(no route)"
    if "NC" in flags:
        return "(unknown destination)"
    if not route or route == "-":
        return "(local reply)"
    return "(redirect)" if 300 <= code < 400 else "(direct response)"


def live_sample(totals: Totals, at: float) -> LiveSample:
    routes: dict[str, list] = {}
    clusters: dict[str, list] = {}
    total: dict[str, list] = {}
    for (listener, route, cluster, code, flags, _grpc), entry in totals.http.items():
        n = entry.count
        errors = n if is_error(code) else 0
        for into, name in ((routes, route_label(listener, route, flags)), (clusters, cluster_label(cluster, route, code, flags)), (total, "all")):
            acc = into.get(name)
            if acc is None:
                acc = into[name] = [0, 0, [0] * N_DURATION]
            acc[0] += n
            acc[1] += errors
            _add(acc[2], entry.duration)
    freeze = lambda d: {k: (v[0], v[1], tuple(v[2])) for k, v in d.items()}  # noqa: E731
    return LiveSample(at, freeze(routes), freeze(clusters), freeze(total))


def bucket_quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = DURATION_BUCKETS_MS) -> float | None:
    """Prometheus histogram_quantile over non-cumulative bucket counts (last = +Inf); None without samples.
    A quantile in the +Inf bucket answers the highest finite bound."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for i, count in enumerate(counts):
        previous = cumulative
        cumulative += count
        if cumulative >= rank and count > 0:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            upper = float(bounds[i])
            return lower + (upper - lower) * (rank - previous) / count
    return float(bounds[-1])


def _series(samples: Sequence[LiveSample], attr: str) -> dict[str, dict[str, list]]:
    names: set[str] = set()
    for s in samples:
        names.update(getattr(s, attr))
    out = {}
    for name in sorted(names):
        rate, error_rate, p50, p99 = [], [], [], []
        for before, after in zip(samples, samples[1:]):
            dt = after.at - before.at
            a = getattr(after, attr).get(name, (0, 0, (0,) * N_DURATION))
            b = getattr(before, attr).get(name, (0, 0, (0,) * N_DURATION))
            requests = max(0, a[0] - b[0])
            errors = max(0, a[1] - b[1])
            delta = [max(0, x - y) for x, y in zip(a[2], b[2])]
            rate.append(round(requests / dt, 3) if dt > 0 else 0.0)
            error_rate.append(round(errors / requests, 4) if requests else 0.0)
            q50 = bucket_quantile(0.5, delta)
            q99 = bucket_quantile(0.99, delta)
            p50.append(None if q50 is None else round(q50, 3))
            p99.append(None if q99 is None else round(q99, 3))
        last = getattr(samples[-1], attr).get(name, (0, 0, ())) if samples else (0, 0, ())
        out[name] = {"rps": rate, "error_rate": error_rate, "p50_ms": p50, "p99_ms": p99, "requests_total": last[0], "errors_total": last[1]}
    return out


def live_view(samples: Sequence[LiveSample], window: int = LIVE_WINDOW) -> dict:
    """Per-route and per-cluster series over the last `window` intervals (JSON-ready)."""
    recent = list(samples)[-(window + 1) :]
    times = [round(s.at, 3) for s in recent[1:]]
    return {"times": times, "routes": _series(recent, "routes"), "clusters": _series(recent, "clusters"), "total": _series(recent, "total")}


class LiveHistory:
    def __init__(self, size: int = LIVE_HISTORY):
        self.samples: deque[LiveSample] = deque(maxlen=size)

    def add(self, sample: LiveSample) -> None:
        self.samples.append(sample)


__all__ = [
    "Totals", "HttpTotals", "TcpTotals", "sum_slots", "render_prometheus", "SupervisorView", "envoy_stats",
    "render_envoy_stats", "LiveSample", "live_sample", "cluster_label", "live_view", "LiveHistory", "bucket_quantile",
    "service_labels", "cluster_host", "code_class",
]  # fmt: skip
