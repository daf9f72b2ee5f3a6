# `edge route` explaining AuthorizationPolicy (edge/explain_authz.py): the filters in Istio's order, each rule by
# Envoy's policy id, matched or the conditions that failed, the verdict with Envoy's details; the connection
# attributes it assumed (--peer-ip, --remote-ip, --port, --sni, --client-principal) and the JWT principal (--jwt).
from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

from edge.explain import RouteExplainer, parse_route_request
from tests.edge.routing import compiled

ROOT = pathlib.Path(__file__).resolve().parents[2]

GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - directResponse: {status: 200}
  tcp:
  - route: [{destination: {host: echo.local, port: {number: 9000}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: istio-system}
spec:
  hosts: [echo.local]
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1}]
"""

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: office, namespace: istio-system}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {remoteIpBlocks: ["203.0.113.0/24"]}
  - from:
    - source: {principals: ["cluster.local/ns/ops/sa/admin"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin/{**}"]}
    when:
    - key: destination.port
      values: ["80"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-posts, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to:
    - operation: {methods: ["POST"]}
"""

ALLOW = "ns[istio-system]-policy[office]-rule[0]"
ALLOW_PRINCIPAL = "ns[istio-system]-policy[office]-rule[1]"
DENY = "ns[istio-system]-policy[no-admin]-rule[0]"
AUDIT = "ns[istio-system]-policy[audit-posts]-rule[0]"


def explain(port=80, method="GET", path="/", headers=(), **options):
    tbl = compiled(GATEWAY, POLICIES)
    out = io.StringIO()
    args = SimpleNamespace(port=port, scheme=None, sni=None, jwt=None, gateway_labels=None, cluster_domain="cluster.local", peer_ip=None, remote_ip=None, client_principal=None)
    for name, value in options.items():
        setattr(args, name, value)
    routed = RouteExplainer(tbl, [], args, out).explain(parse_route_request(method, "app.example.com", path, list(headers)))
    return routed, out.getvalue().splitlines()


# (name, request, options, routed, lines that must be present)
CASES = [
    (
        "no-allow-rule-matches",
        dict(),
        dict(),
        False,
        [
            "  AuthorizationPolicy: source.ip 127.0.0.1 (default; --peer-ip), remote.ip 127.0.0.1 (= source.ip; --remote-ip), destination.port 80, connection.sni -, source.principal -, no request principal (no verified JWT)",
            f"      {DENY}: not matched: to[0].operation.paths false",
            f"      {ALLOW}: not matched: from[0].source.remoteIpBlocks false",
            "    → denied: ALLOW policies apply and none of their rules matched: 403 RBAC: access denied (rbac_access_denied_matched_policy[none])",
        ],
    ),
    (
        "allowed-by-remote-ip",
        dict(),
        dict(remote_ip="203.0.113.7", peer_ip="10.1.1.1"),
        True,
        ["  AuthorizationPolicy: source.ip 10.1.1.1, remote.ip 203.0.113.7, destination.port 80, connection.sni -, source.principal -, no request principal (no verified JWT)", f"      {ALLOW}: matched", f"    → allowed by {ALLOW}", "  route config http.80"],
    ),
    (
        "allowed-by-client-certificate",
        dict(),
        dict(client_principal="spiffe://cluster.local/ns/ops/sa/admin"),
        True,
        [f"      {ALLOW_PRINCIPAL}: matched", f"    → allowed by {ALLOW_PRINCIPAL}"],
    ),
    (
        "deny-wins-and-stops",
        dict(path="/admin/users"),
        dict(remote_ip="203.0.113.7"),
        False,
        [f"      {DENY}: matched", f"    → denied by DENY rule {DENY}: 403 RBAC: access denied (rbac_access_denied_matched_policy[{DENY}])"],
    ),
    (
        "audit-is-reported",
        dict(method="POST"),
        dict(remote_ip="203.0.113.7"),
        True,
        [f"      {AUDIT}: matched", f"    audited by {AUDIT} (AUDIT only logs: %DYNAMIC_METADATA(envoy.common:access_log_hint)% true, http.<listener>.rbac.logged)"],
    ),
    (
        "xff-without-remote-ip-is-pointed-out",
        dict(headers=["x-forwarded-for=203.0.113.7"]),
        dict(),
        False,
        ["    note: edge route does not apply X-Forwarded-For (edge run's --num-trusted-proxies decides which hop is remote.ip): give --remote-ip"],
    ),
    (
        "tcp-rules-without-http-attributes",
        dict(),
        dict(port=31400, peer_ip="10.1.1.1"),
        False,
        [
            "  AuthorizationPolicy (TCP rules: HTTP attributes never match here): source.ip 10.1.1.1, destination.port 31400, connection.sni -, source.principal -",
            # The DENY rule loses its HTTP path on TCP (Istio) and keeps destination.port 80: not this port.
            f"      {DENY}: not matched: when[0][destination.port] false",
            "    → denied: ALLOW policies apply and none of their rules matched: connection closed (rbac_access_denied_matched_policy[none] in the termination details)",
        ],
    ),
]


@pytest.mark.parametrize(("request_", "options", "routed", "lines"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_route_explains_the_policies(request_, options, routed, lines):
    got_routed, got = explain(**request_, **options)
    assert got_routed is routed
    assert [line for line in lines if line not in got] == [], "\n".join(got)


def test_denied_request_is_not_routed():
    _, lines = explain()
    assert not any(line.strip().startswith("route config") for line in lines)


def test_edge_route_cli_shows_the_deciding_rule(tmp_path):
    (tmp_path / "gw.yaml").write_text(GATEWAY + "---\n" + POLICIES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "edge", "route", str(tmp_path), "--port", "80", "--host", "app.example.com", *a], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    p = run("--path", "/admin/x", "--remote-ip", "203.0.113.7")
    assert p.returncode == 1, p.stderr
    assert f"    → denied by DENY rule {DENY}: 403 RBAC: access denied (rbac_access_denied_matched_policy[{DENY}])" in p.stdout.splitlines()
    p = run("--path", "/", "--peer-ip", "10.0.0.9", "--remote-ip", "203.0.113.7")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "source.ip 10.0.0.9, remote.ip 203.0.113.7" in p.stdout
