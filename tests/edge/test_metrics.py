# edge/metrics.py: sums over slots, the Prometheus text (checked with prometheus-client's parser), Istio's
# labels, Envoy-like /stats and the live view's rates and quantiles.
from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import (
    LiveSample,
    SupervisorView,
    bucket_quantile,
    cluster_host,
    envoy_stats,
    escape_label,
    cluster_label,
    live_sample,
    live_view,
    render_envoy_stats,
    render_prometheus,
    service_labels,
    sum_slots,
)
from edge.stats_shm import DURATION_BUCKETS_MS, W_ACTIVE_CONNECTIONS, SlotWriter, StatsSegment

A = "outbound|80||reviews.default.svc.cluster.local"
B = "outbound|8000|v1|httpbin.example.com"


@pytest.fixture
def segment():
    seg = StatsSegment.create(2, max_entries=64, key_area_bytes=8192, status_area_bytes=4096)
    yield seg
    seg.close()


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def fill(segment) -> None:
    w0 = SlotWriter.attach(segment.name, 0)
    w1 = SlotWriter.attach(segment.name, 1)
    try:
        for _ in range(3):
            w0.record_http("0.0.0.0:80", "reviews", A, 200, "-", 0.004, 100, 1000)
        w1.record_http("0.0.0.0:80", "reviews", A, 200, "-", 0.020, 0, 1000)
        w1.record_http("0.0.0.0:80", "reviews-v2", A, 200, "-", 0.020, 0, 1000)  # another route, same Istio labels
        w1.record_http("0.0.0.0:80", "bin", B, 503, "UF", 0.0002, 0, 91)
        w0.record_http("0.0.0.0:80", "-", "-", 404, "NR", 0.0001, 0, 0)
        w0.tcp_opened("0.0.0.0:31400", A)
        w0.tcp_closed("0.0.0.0:31400", A, sent_bytes=500, received_bytes=40)
        w1.tcp_opened("0.0.0.0:31400", A)
        w0.set_word(W_ACTIVE_CONNECTIONS, 4)
        w1.set_word(W_ACTIVE_CONNECTIONS, 5)
    finally:
        w0.close()
        w1.close()


VIEW = SupervisorView(
    generation=3, reloads_total=4, reload_failures_total=1, last_reload_ok=False, last_reload_success_at=1700000000.0,
    ready=True, started_at=1699999000.0, workers=2,
    worker_states=((0, "serving", 0, 0.0, 11, False), (1, "serving", 3, 0.4, 12, True)),
)  # fmt: skip


def test_grpc_requests_carry_their_protocol_and_status(segment):
    # Istio's istio_stats: request_protocol "grpc" for a gRPC request, grpc_response_status its status (the key's
    # sixth field, workers/route_policies.grpc_metric_status), empty when it had none; -1 is a request not gRPC.
    w0 = SlotWriter.attach(segment.name, 0)
    try:
        w0.record_http("0.0.0.0:80", "grpc", B, 200, "-", 0.001, 5, 7, 14)
        w0.record_http("0.0.0.0:80", "grpc", B, 200, "-", 0.001, 5, 7, 0)
        w0.record_http("0.0.0.0:80", "grpc", B, 0, "DC", 0.001, 5, 0, -2)
        w0.record_http("0.0.0.0:80", "web", B, 200, "-", 0.001, 5, 7, -1)
    finally:
        w0.close()
    got = {(s.labels["request_protocol"], s.labels["response_code"], s.labels["response_flags"], s.labels["grpc_response_status"]): s.value
           for s in families(render_prometheus(sum_slots(segment.read_all()), VIEW))["istio_requests"].samples}
    assert got == {("grpc", "200", "-", "14"): 1, ("grpc", "200", "-", "0"): 1, ("grpc", "0", "DC", ""): 1, ("http", "200", "-", ""): 1}


def test_sums_are_over_every_slot_and_gauges_over_live_slots(segment):
    fill(segment)
    snaps = segment.read_all()
    totals = sum_slots(snaps)
    assert totals.http[("0.0.0.0:80", "reviews", A, 200, "-", -1)].count == 4
    assert totals.active_connections == 9
    assert sum_slots(snaps, live_slots=[1]).active_connections == 5
    assert sum_slots(snaps, live_slots=[1]).http == totals.http  # counters of a dead worker still count


def test_prometheus_text_parses_and_carries_istio_labels(segment):
    fill(segment)
    text = render_prometheus(sum_slots(segment.read_all()), VIEW)
    fams = families(text)
    assert fams["istio_requests"].type == "counter"
    assert fams["istio_request_duration_milliseconds"].type == "histogram"
    assert fams["istio_request_bytes"].type == "histogram"
    assert fams["istio_response_bytes"].type == "histogram"
    values = samples(text)
    ok = [s for s in fams["istio_requests"].samples if s.labels["response_code"] == "200"]
    [reviews] = ok  # the two routes to the same service are one Istio series
    assert reviews.value == 5
    labels = reviews.labels
    assert labels["reporter"] == "source"
    assert labels["destination_service"] == "reviews.default.svc.cluster.local"
    assert labels["destination_service_name"] == "reviews"
    assert labels["destination_service_namespace"] == "default"
    assert labels["request_protocol"] == "http"
    assert labels["response_flags"] == "-"
    assert labels["destination_workload"] == "unknown"
    [uf] = [s for s in fams["istio_requests"].samples if s.labels["response_code"] == "503"]
    assert (uf.labels["response_flags"], uf.labels["destination_service"], uf.labels["destination_service_name"], uf.labels["destination_service_namespace"]) == ("UF", "httpbin.example.com", "httpbin.example.com", "unknown")
    [nr] = [s for s in fams["istio_requests"].samples if s.labels["response_code"] == "404"]
    assert nr.labels["destination_service"] == "unknown" and nr.labels["response_flags"] == "NR"
    assert (reviews.labels["grpc_response_status"], nr.labels["grpc_response_status"]) == ("", "")
    # Histogram: cumulative buckets with Envoy's bounds, +Inf = _count, _sum in ms.
    buckets = {s.labels["le"]: s.value for s in fams["istio_request_duration_milliseconds"].samples if s.name.endswith("_bucket") and s.labels["response_code"] == "200"}
    assert list(buckets) == [*(str(int(b)) if b == int(b) else str(b) for b in DURATION_BUCKETS_MS), "+Inf"]
    assert buckets["1"] == 0 and buckets["5"] == 3 and buckets["25"] == 5 and buckets["+Inf"] == 5
    key = tuple(sorted(labels.items()))
    assert values[("istio_request_duration_milliseconds_count", key)] == 5
    assert values[("istio_request_duration_milliseconds_sum", key)] == pytest.approx(3 * 4 + 2 * 20)
    assert values[("istio_request_bytes_sum", key)] == 300
    assert values[("istio_response_bytes_sum", key)] == 5000
    # TCP.
    [opened] = fams["istio_tcp_connections_opened"].samples
    assert opened.value == 2 and opened.labels["request_protocol"] == "tcp"
    assert fams["istio_tcp_connections_closed"].samples[0].value == 1
    assert fams["istio_tcp_sent_bytes"].samples[0].value == 500
    assert fams["istio_tcp_received_bytes"].samples[0].value == 40
    # edge's own.
    assert values[("edge_reloads_total", ())] == 4
    assert values[("edge_reload_failures_total", ())] == 1
    assert values[("edge_config_last_reload_success", ())] == 0
    assert values[("edge_table_generation", ())] == 3
    assert values[("edge_active_connections", ())] == 9
    assert values[("edge_worker_restarts_total", (("slot", "1"),))] == 3
    assert values[("edge_worker_crash_looping", (("slot", "1"),))] == 1
    assert values[("edge_worker_crash_looping", (("slot", "0"),))] == 0
    assert values[("edge_workers", (("state", "serving"),))] == 2
    assert values[("edge_access_log_dropped_lines_total", ())] == 0
    route = (("cluster", A), ("listener", "0.0.0.0:80"), ("response_code_class", "2xx"), ("route", "reviews-v2"))
    assert values[("edge_route_requests_total", route)] == 1


def test_every_family_has_help_and_type_once(segment):
    fill(segment)
    text = render_prometheus(sum_slots(segment.read_all()), VIEW)
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert helps == types and len(set(types)) == len(types)


def test_an_empty_gateway_still_renders_a_valid_document():
    text = render_prometheus(sum_slots([]), SupervisorView())
    values = samples(text)
    assert values[("edge_table_generation", ())] == 0
    assert not any(name == "istio_requests_total" for name, _ in values)


def test_label_values_are_escaped():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


@pytest.mark.parametrize(
    ("cluster", "host", "labels"),
    [
        ("outbound|80||reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local", ("reviews.default.svc.cluster.local", "reviews", "default")),
        ("outbound|443|v2|api.example.com", "api.example.com", ("api.example.com", "api.example.com", "unknown")),
        ("outbound|80||a.b.c.svc.cluster.local", "a.b.c.svc.cluster.local", ("a.b.c.svc.cluster.local", "a.b.c.svc.cluster.local", "unknown")),
        ("-", "", ("unknown", "unknown", "unknown")),
    ],
)
def test_service_labels(cluster, host, labels):
    assert cluster_host(cluster) == host
    assert service_labels(host) == labels


def test_envoy_stats_names_and_filters(segment):
    fill(segment)
    stats = envoy_stats(sum_slots(segment.read_all()), VIEW, uptime_s=12.7)
    assert stats[f"cluster.{A}.upstream_rq_total"] == 5
    assert stats[f"cluster.{A}.upstream_rq_2xx"] == 5
    assert stats[f"cluster.{B}.upstream_rq_503"] == 1
    assert stats[f"cluster.{B}.upstream_cx_connect_fail"] == 1
    assert stats["http.0.0.0.0:80.downstream_rq_total"] == 7
    assert stats["http.0.0.0.0:80.no_route"] == 1
    assert stats["server.uptime"] == 12
    assert stats["server.state"] == 0
    text = render_envoy_stats(stats, filter_regex=r"upstream_rq_5\d\d$")
    assert text == f"cluster.{B}.upstream_rq_503: 1\n"
    assert "server.live: 1" in render_envoy_stats(stats, used_only=True)
    assert "outlier_detection.ejections_total" not in render_envoy_stats(stats, used_only=True)


@pytest.mark.parametrize(
    ("q", "counts", "expected"),
    [
        (0.5, [0, 10] + [0] * 18, 0.75),  # all in (0.5, 1]: the middle of the bucket
        (0.99, [0, 0, 100] + [0] * 17, 4.96),  # (1, 5]
        (0.5, [10] + [0] * 19, 0.25),
        (0.5, [0] * 19 + [4], 3600000.0),  # +Inf answers the highest finite bound
        (0.5, [0] * 20, None),
    ],
)
def test_bucket_quantile_is_prometheus_histogram_quantile(q, counts, expected):
    result = bucket_quantile(q, counts)
    assert result == (None if expected is None else pytest.approx(expected))


def test_live_view_turns_samples_into_rates_error_rates_and_latency(segment):
    first = live_sample(sum_slots(segment.read_all()), at=100.0)
    fill(segment)
    second = live_sample(sum_slots(segment.read_all()), at=102.0)
    view = live_view([first, second])
    assert view["times"] == [102.0]
    reviews = view["routes"]["0.0.0.0:80 reviews"]
    assert reviews["rps"] == [2.0]  # 4 requests in 2 s
    assert reviews["error_rate"] == [0.0]
    assert 1 < reviews["p50_ms"][0] <= 5
    assert view["routes"]["0.0.0.0:80 (no route)"]["rps"] == [0.5]  # the 404 NR
    assert view["clusters"][B]["error_rate"] == [1.0]
    assert view["clusters"]["(no route)"]["requests_total"] == 1  # the 404 NR: answered without a cluster
    assert view["total"]["all"]["rps"] == [3.5]
    assert view["total"]["all"]["error_rate"] == [pytest.approx(1 / 7, abs=1e-4)]


def test_live_view_of_a_quiet_interval_has_no_latency():
    empty = LiveSample(0.0, {"r": (5, 0, (5,) + (0,) * 19)}, {}, {})
    later = LiveSample(1.0, {"r": (5, 0, (5,) + (0,) * 19)}, {}, {})
    view = live_view([empty, later])
    assert view["routes"]["r"] == {"rps": [0.0], "error_rate": [0.0], "p50_ms": [None], "p99_ms": [None], "requests_total": 5, "errors_total": 0}
    assert math.isfinite(view["times"][0])


@pytest.mark.parametrize(
    "cluster, route, code, flags, expected",
    [
        ("outbound|80||a.local", "r", 200, "-", "outbound|80||a.local"),
        ("-", "moved", 301, "-", "(redirect)"),
        ("", "moved", 308, "-", "(redirect)"),
        ("-", "teapot", 418, "-", "(direct response)"),
        ("-", "ok", 200, "-", "(direct response)"),
        ("-", "-", 404, "NR", "(no route)"),
        ("-", "r", 503, "NC", "(unknown destination)"),
        ("-", "-", 400, "-", "(local reply)"),
    ],
)
def test_admin_page_names_requests_without_a_cluster_by_what_answered_them(cluster, route, code, flags, expected):
    assert cluster_label(cluster, route, code, flags) == expected
