# What `edge check --listeners` and `edge route` say a listener's clients may speak and a cluster's upstream
# protocol is (edge/explain_protocols.py): table-driven on compiled structures, and the CLI once on a config with
# plain HTTP, HTTPS, passthrough and gRPC / upgraded / client-following clusters.
from __future__ import annotations

import pytest

from edge import table
from edge.explain_protocols import PASSTHROUGH, PLAIN_HTTP, TCP, TLS_HTTP, TLS_TCP, cluster_protocol, listener_rows
from tests.edge.test_cli import edge

TLS = table.ServerTLS(mode="SIMPLE")
RC = table.RouteConfig(name="https.443")


@pytest.mark.parametrize(
    ("listener", "rows"),
    [
        (table.Listener(name="0.0.0.0_80", port=80), [("0.0.0.0_80", "-", PLAIN_HTTP)]),
        (table.Listener(name="0.0.0.0_31400", port=31400, protocol=table.PROTO_TCP), [("0.0.0.0_31400", "-", TCP)]),
        (
            table.Listener(name="0.0.0.0_443", port=443, protocol=table.PROTO_TLS, filter_chains=(
                table.FilterChain(server_names=("a.example.com", "b.example.com"), tls=TLS, route_config=RC),
                table.FilterChain(server_names=("pass.example.com",)),
                table.FilterChain(tls=TLS),
            )),
            [("0.0.0.0_443", "a.example.com,b.example.com", TLS_HTTP), ("0.0.0.0_443", "pass.example.com", PASSTHROUGH), ("0.0.0.0_443", "(any)", TLS_TCP)],
        ),
    ],
)  # fmt: skip
def test_listener_rows(listener, rows):
    assert listener_rows(listener) == rows


@pytest.mark.parametrize(
    ("port_protocol", "upstream", "spoken", "why"),
    [
        ("GRPC", table.UPSTREAM_HTTP2, "HTTP/2", "port protocol GRPC"),
        ("HTTP2", table.UPSTREAM_HTTP2, "HTTP/2", "port protocol HTTP2"),
        ("HTTP", table.UPSTREAM_HTTP2, "HTTP/2", "port protocol HTTP, DestinationRule h2UpgradePolicy: UPGRADE"),
        ("HTTP", table.UPSTREAM_CLIENT, "the client's (HTTP/2 for HTTP/2 requests, else HTTP/1.1)", "port protocol HTTP, DestinationRule useClientProtocol: true"),
        ("HTTP", table.UPSTREAM_HTTP1, "HTTP/1.1", "port protocol HTTP, no h2UpgradePolicy: UPGRADE"),
        ("", table.UPSTREAM_HTTP1, "HTTP/1.1", "port protocol (none), no h2UpgradePolicy: UPGRADE"),
        ("TLS", table.UPSTREAM_HTTP1, "HTTP/1.1", "port protocol TLS: TCP and TLS routes to it forward bytes"),
    ],
)
def test_cluster_protocol(port_protocol, upstream, spoken, why):
    cluster = table.Cluster(name="outbound|80||x", service="x", port=80, protocol=port_protocol, upstream_protocol=upstream)
    assert cluster_protocol(cluster) == (spoken, why)


CONFIG = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: grpc, protocol: GRPC}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc}
spec:
  hosts: [grpc.test, plain.test]
  resolution: STATIC
  ports: [{number: 50051, name: grpc, protocol: GRPC}, {number: 8080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: plain}
spec:
  host: plain.test
  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: routes}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /pkg.Echo/}}]
    route: [{destination: {host: grpc.test, port: {number: 50051}}}]
  - route: [{destination: {host: plain.test, port: {number: 8080}}}]
"""


def test_check_listeners_and_route_name_the_protocols(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    p = edge("check", "--listeners", str(tmp_path))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[2].split() == ["LISTENER", "SERVER", "NAMES", "CLIENTS", "MAY", "SPEAK"]
    assert lines[3].split(None, 2) == ["0.0.0.0_80", "-", PLAIN_HTTP]
    rows = {line.split()[0]: line for line in lines[6:]}
    assert rows["outbound|50051||grpc.test"].split(None, 1)[1] == "HTTP/2             port protocol GRPC"
    assert rows["outbound|8080||plain.test"].split(None, 1)[1] == "HTTP/2             port protocol HTTP, DestinationRule h2UpgradePolicy: UPGRADE"
    assert len(edge("check", str(tmp_path)).stdout.splitlines()) == 1  # without --listeners: the summary alone
    p = edge("route", str(tmp_path), "--port", "80", "--host", "x.test", "--path", "/pkg.Echo/Unary", "--method", "POST", "--header", "content-type=application/grpc")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"  clients may speak {PLAIN_HTTP}" in p.stdout.splitlines()
    assert "upstream protocol HTTP/2 (port protocol GRPC)" in p.stdout
