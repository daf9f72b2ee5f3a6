# What AuthorizationPolicy leaves behind besides the verdict: Envoy's RBAC filter counts per request/connection
# (workers/authz.rbac_counts), the named counters in the stats segment (edge/stats_shm.py KIND_COUNTER) and their
# /stats and /stats/prometheus names (edge/metrics.py), and the AUDIT filter's access_log_hint in the access log
# (workers/http/log.py, %DYNAMIC_METADATA(envoy.common:access_log_hint)% in workers/log_format.py).
from __future__ import annotations

import orjson
import pytest

from edge.metrics import SupervisorView, envoy_stats, render_prometheus, sum_slots
from edge.stats_shm import StatsSegment, SlotWriter
from tests.workers.test_authz import authorizer, http, policy
from workers.authz import RbacCounts, authorize, rbac_counts
from workers.http.log import RequestLog
from workers.log_format import TemplateError, compile_template
from workers.stats import WorkerStats

DENY_ADMIN = policy('action: DENY\nrules:\n- to:\n  - operation:\n      paths: ["/admin"]', name="deny")
ALLOW_OFFICE = policy('action: ALLOW\nrules:\n- from:\n  - source:\n      ipBlocks: ["10.0.0.0/8"]', name="allow")
AUDIT_POST = policy('action: AUDIT\nrules:\n- to:\n  - operation:\n      methods: ["POST"]', name="audit")

# (name, policies, facts, counts): every filter a request passes adds to allowed (AUDIT's LOG action too), the
# refusing one adds to denied and stops the chain (Envoy's RBAC filters share their stat names).
CASES = [
    ("allow-only-allowed", [ALLOW_OFFICE], http("10.1.1.1"), RbacCounts(1, 0, 0, 0)),
    ("allow-only-denied", [ALLOW_OFFICE], http("192.0.2.1"), RbacCounts(0, 1, 0, 0)),
    ("deny-then-allow-passes-both", [DENY_ADMIN, ALLOW_OFFICE], http("10.1.1.1"), RbacCounts(2, 0, 0, 0)),
    ("deny-stops-before-allow", [DENY_ADMIN, ALLOW_OFFICE], http("10.1.1.1", path="/admin"), RbacCounts(0, 1, 0, 0)),
    ("allow-refuses-after-deny-passed", [DENY_ADMIN, ALLOW_OFFICE], http("192.0.2.1"), RbacCounts(1, 1, 0, 0)),
    ("audit-logged", [AUDIT_POST, ALLOW_OFFICE], http("10.1.1.1", method="POST"), RbacCounts(2, 0, 1, 0)),
    ("audit-not-logged", [AUDIT_POST], http("10.1.1.1"), RbacCounts(1, 0, 0, 1)),
    ("audit-then-denied", [AUDIT_POST, DENY_ADMIN], http("10.1.1.1", method="POST", path="/admin"), RbacCounts(1, 1, 1, 0)),
]


@pytest.mark.parametrize(("policies", "facts", "counts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rbac_counts_as_envoy_filters_count(policies, facts, counts):
    authz = authorizer(*policies)
    assert rbac_counts(authz.http, authorize(authz.http, facts)) == counts


def test_access_log_hint_and_its_template_operator():
    log = RequestLog(0.0)
    text = compile_template("%RESPONSE_CODE% %DYNAMIC_METADATA(envoy.common:access_log_hint)%", "text")
    js = compile_template('{"hint": "%DYNAMIC_METADATA(envoy.common:access_log_hint)%"}', "json")
    assert log.access_log_hint is None and text.render(log) == b"0 -\n" and orjson.loads(js.render(log)) == {"hint": None}
    log.rbac = RbacCounts(1, 0, 0, 0)  # no AUDIT policy: no hint, as Envoy sets none without a LOG filter
    assert log.access_log_hint is None
    log.rbac = RbacCounts(2, 0, 1, 0)
    assert text.render(log) == b"0 true\n" and orjson.loads(js.render(log)) == {"hint": True}
    log.rbac = RbacCounts(2, 0, 0, 1)
    assert text.render(log) == b"0 false\n" and orjson.loads(js.render(log)) == {"hint": False}
    with pytest.raises(TemplateError, match="not metadata edge has"):
        compile_template("%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result)%", "text")


@pytest.fixture
def segment():
    seg = StatsSegment.create(2, max_entries=8, key_area_bytes=4096, status_area_bytes=4096)
    yield seg
    seg.close()


def test_counters_reach_stats_and_prometheus_across_workers_and_restarts(segment):
    w0, w1 = SlotWriter.attach(segment.name, 0), SlotWriter.attach(segment.name, 1)
    try:
        s0, s1 = WorkerStats(w0), WorkerStats(w1)
        s0.rbac("http.0.0.0.0_80", RbacCounts(2, 0, 1, 0))
        s1.rbac("http.0.0.0.0_80", RbacCounts(1, 1, 0, 1))
        s1.rbac("tcp", RbacCounts(0, 1, 0, 0))
        w0.close()
        again = WorkerStats(SlotWriter.attach(segment.name, 0))  # a replacement worker continues the counters
        again.rbac("http.0.0.0.0_80", RbacCounts(1, 0, 0, 0))
        again.writer.close()
    finally:
        w1.close()
    totals = sum_slots(segment.read_all())
    assert totals.counters == {
        "http.0.0.0.0_80.rbac.allowed": 4, "http.0.0.0.0_80.rbac.denied": 1, "http.0.0.0.0_80.rbac.logged": 1,
        "http.0.0.0.0_80.rbac.not_logged": 1, "tcp.rbac.denied": 1,
    }  # fmt: skip
    stats = envoy_stats(totals, SupervisorView(), 0)
    assert stats["http.0.0.0.0_80.rbac.allowed"] == 4 and stats["tcp.rbac.denied"] == 1
    text = render_prometheus(totals, SupervisorView())
    assert 'envoy_http_rbac{http_conn_manager_prefix="0.0.0.0_80",authz_enforce_result="allowed"} 4' in text
    assert 'envoy_http_rbac{http_conn_manager_prefix="0.0.0.0_80",authz_enforce_result="denied"} 1' in text
    assert 'envoy_tcp_rbac{authz_enforce_result="denied"} 1' in text
    assert "rbac.logged" not in text and "not_logged" not in text  # Istio's proxy keeps only rbac.allowed / rbac.denied


def test_a_full_slot_drops_counters_and_counts_the_overflow(segment):
    writer = SlotWriter.attach(segment.name, 0)
    try:
        for i in range(10):
            writer.add_counter(f"http.l{i}.rbac.allowed", 1)
    finally:
        writer.close()
    snap = segment.read_slot(0)
    assert len(snap.counters) == 6  # max_entries - 2 (the HTTP and TCP overflow entries)
    assert snap.words[4] == 4  # overflow_records
