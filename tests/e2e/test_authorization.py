# End to end, AuthorizationPolicy at the gateway with the istio.io tasks' YAML verbatim: "Ingress Access Control"
# (authz-ingress: ipBlocks and remoteIpBlocks, ALLOW then DENY lists, with --num-trusted-proxies) and "Explicitly
# deny a request" (authz-deny: methods, a header condition, an ALLOW on paths), the second gateway taking PROXY
# protocol (ipBlocks see the header's source) and proxying TCP (an ALLOW rule with HTTP attributes never matches
# TCP, so the connection is closed). Denials: 403 "RBAC: access denied", flag "-", the matched rule in the access
# log's response code details, and istio_requests_total counting the 403; Envoy's RBAC stats (envoy_http_rbac, envoy_tcp_rbac,
# http.<listener>.rbac.logged), an AUDIT policy's access_log_hint, and a denied TCP connection in Istio's TCP metrics.
from __future__ import annotations

import json
import socket
import time

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

TIMEOUT_S = 5.0

BASE = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: NS}
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
metadata: {name: app, namespace: NS}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: app.local}}]
  tcp:
  - route: [{destination: {host: echo.local, port: {number: 9000}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: app, namespace: NS}
spec:
  hosts: [app.local]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, ports: {http: HTTP_PORT}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: NS}
spec:
  hosts: [echo.local]
  resolution: STATIC
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  endpoints: [{address: 127.0.0.1, ports: {tcp: TCP_PORT}}]
"""

# istio.io authz-ingress snips (ipbased_allow_list_and_deny_list_1/2/10/11/15/16), verbatim but for $CLIENT_IP.
INGRESS_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-policy
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  action: ACTION
  rules:
  - from:
    - source:
        FIELD: BLOCKS
"""

# istio.io authz-deny snips (explicitly_deny_a_request_4 and _7), verbatim.
DENY_METHOD_GET = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
"""
ALLOW_PATH_IP = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-path-ip
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        paths: ["/ip"]
"""


def ingress_policy(action: str, field: str, blocks: list[str]) -> str:
    return INGRESS_POLICY.replace("ACTION", action).replace("FIELD", field).replace("BLOCKS", json.dumps(blocks))


def config(backends, ns: str) -> str:
    return BASE.replace("NS", ns).replace("HTTP_PORT", str(backends.port("app"))).replace("TCP_PORT", str(backends.port("echo")))


def records(log_path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []


def wait_for_record(log_path, wanted) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:  # the log is flushed once a second
        found = [r for r in records(log_path) if wanted(r)]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise TimeoutError("no such access log line")


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    with SampleBackends(tmp_path_factory.mktemp("authz-backends"), http=["app"], tcp=["echo"]) as b:
        yield b


# Istio's JSON keys for what these tests read, and the AUDIT filter's hint as Envoy's access log reads it.
LOG_TEMPLATE = json.dumps({
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%", "access_log_hint": "%DYNAMIC_METADATA(envoy.common:access_log_hint)%",
})  # fmt: skip

AUDIT_POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-admin, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to:
    - operation: {paths: ["/headers/admin/{**}"]}
"""


def metric_lines(edge, prefix: str, path: str = "/stats/prometheus", wanted=lambda lines: bool(lines)) -> list[str]:
    """The lines of a metrics page starting with `prefix`, once `wanted` holds (workers publish every second)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        text = http_get(edge.metrics_port if path == "/stats/prometheus" else edge.admin_port, path)[1].decode()
        lines = [l for l in text.splitlines() if l.startswith(prefix)]
        if wanted(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


@pytest.fixture(scope="module")
def ingress(tmp_path_factory, backends):
    """The authz-ingress gateway: labels as Istio's ingress gateway pod has them, one trusted proxy in front."""
    work = tmp_path_factory.mktemp("authz-ingress")
    log_path = work / "access.log"
    args = ("--gateway-labels", "istio=ingressgateway,app=istio-ingressgateway", "--num-trusted-proxies", "1", "--access-log", str(log_path), "--access-log-format", "json", "--access-log-template", LOG_TEMPLATE)
    first = ingress_policy("ALLOW", "ipBlocks", ["1.2.3.4", "5.6.7.0/24"])
    with EdgeProcess(work, {"gw.yaml": config(backends, "istio-system"), "policy.yaml": first}, gateway_ports=(80, 31400), workers=1, extra_args=args) as edge:
        yield edge, log_path


def apply(edge, text: str) -> None:
    edge.write_config("policy.yaml", text)
    outcome = edge.reload()
    assert "published" in outcome or "unchanged" in outcome, outcome


def test_ip_allow_list_refuses_other_peers_with_rbac_403(ingress):
    edge, log_path = ingress
    apply(edge, ingress_policy("ALLOW", "ipBlocks", ["1.2.3.4", "5.6.7.0/24"]))
    status, body, headers = http_get(edge.port(80), "/headers?allow-list")
    assert (status, body, headers["content-type"]) == (403, b"RBAC: access denied", "text/plain")
    record = wait_for_record(log_path, lambda r: r.get("path") == "/headers?allow-list")
    assert record["response_code"] == 403
    assert record.get("response_flags") is None  # "-": no flag (JSON logs it as null)
    assert record["response_code_details"] == "rbac_access_denied_matched_policy[none]"
    # ipBlocks is the peer, whatever X-Forwarded-For claims.
    assert http_get(edge.port(80), "/headers", headers={"X-Forwarded-For": "5.6.7.8"})[0] == 403


def test_ip_allow_list_with_the_client_address_serves(ingress):
    edge, _ = ingress
    apply(edge, ingress_policy("ALLOW", "ipBlocks", ["1.2.3.4", "5.6.7.0/24", "127.0.0.1"]))
    assert http_get(edge.port(80), "/headers")[0] == 200


def test_remote_ip_blocks_use_the_trusted_forwarded_client(ingress):
    edge, _ = ingress
    apply(edge, ingress_policy("ALLOW", "remoteIpBlocks", ["1.2.3.4", "5.6.7.0/24"]))
    assert http_get(edge.port(80), "/headers", headers={"X-Forwarded-For": "5.6.7.8"})[0] == 200
    assert http_get(edge.port(80), "/headers", headers={"X-Forwarded-For": "9.9.9.9"})[0] == 403
    assert http_get(edge.port(80), "/headers")[0] == 403  # no XFF: the peer 127.0.0.1 is the client


def test_deny_list_names_the_matched_rule(ingress):
    edge, log_path = ingress
    apply(edge, ingress_policy("DENY", "remoteIpBlocks", ["5.6.7.8"]))
    assert http_get(edge.port(80), "/headers", headers={"X-Forwarded-For": "9.9.9.9"})[0] == 200
    status, body, _ = http_get(edge.port(80), "/headers?deny-list", headers={"X-Forwarded-For": "5.6.7.8"})
    assert (status, body) == (403, b"RBAC: access denied")
    record = wait_for_record(log_path, lambda r: r.get("path") == "/headers?deny-list")
    assert record["response_code_details"] == "rbac_access_denied_matched_policy[ns[istio-system]-policy[ingress-policy]-rule[0]]"


def test_denials_are_counted_with_istio_labels(ingress):
    edge, _ = ingress
    apply(edge, ingress_policy("DENY", "ipBlocks", ["127.0.0.1"]))
    assert http_get(edge.port(80), "/headers")[0] == 403
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        text = http_get(edge.metrics_port, "/stats/prometheus")[1].decode()
        lines = [l for l in text.splitlines() if l.startswith("istio_requests_total{") and 'response_code="403"' in l]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert lines and all('response_flags="-"' in l for l in lines), text[:2000]
    # Envoy's RBAC stats as Istio's proxy exports them: the DENY filter refused it.
    rbac = metric_lines(edge, "envoy_http_rbac{")
    assert any('authz_enforce_result="denied"' in l and not l.endswith(" 0") for l in rbac), rbac


def test_audit_policy_is_logged_and_counted_without_deciding(ingress):
    edge, log_path = ingress
    apply(edge, AUDIT_POLICY)
    assert http_get(edge.port(80), "/headers/admin/users")[0] == 200  # AUDIT never decides
    assert http_get(edge.port(80), "/headers/other")[0] == 200
    assert wait_for_record(log_path, lambda r: r.get("path") == "/headers/admin/users")["access_log_hint"] is True
    assert wait_for_record(log_path, lambda r: r.get("path") == "/headers/other")["access_log_hint"] is False
    logged = metric_lines(edge, "http.", "/stats", lambda lines: any(".rbac.logged: " in l for l in lines))
    assert any(".rbac.logged: " in l and not l.endswith(": 0") for l in logged), logged
    assert any(".rbac.not_logged: " in l and not l.endswith(": 0") for l in logged), logged


@pytest.fixture(scope="module")
def deny_task(tmp_path_factory, backends):
    """The authz-deny gateway: namespace foo, labels app=httpbin, behind a PROXY protocol load balancer."""
    work = tmp_path_factory.mktemp("authz-deny")
    log_path = work / "access.log"
    args = ("--gateway-labels", "istio=ingressgateway,app=httpbin", "--gateway-namespace", "foo", "--proxy-protocol", "--access-log", str(log_path))
    files = {"gw.yaml": config(backends, "foo"), "deny.yaml": DENY_METHOD_GET, "allow.yaml": ALLOW_PATH_IP}
    with EdgeProcess(work, files, gateway_ports=(80, 31400), workers=1, extra_args=args) as edge:
        edge.access_log_path = log_path
        yield edge


def proxied_request(port: int, source: str, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(f"PROXY TCP4 {source} 10.0.0.1 56324 80\r\n".encode() + request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:  # closed with our bytes unread: a reset, as from Envoy
            pass
        return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response else 0


@pytest.mark.parametrize(
    ("method", "path", "token", "expected"),
    [("GET", "/ip", "guest", 403), ("GET", "/ip", "admin", 200), ("GET", "/get", "admin", 403), ("POST", "/ip", "guest", 200)],
)
def test_explicit_deny_task(deny_task, method, path, token, expected):
    request = f"{method} {path} HTTP/1.1\r\nHost: httpbin.foo\r\nx-token: {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
    assert status_of(proxied_request(deny_task.port(80), "203.0.113.7", request)) == expected


def test_ip_blocks_see_the_proxy_protocol_source(deny_task):
    deny_task.write_config("ip.yaml", ingress_policy("DENY", "ipBlocks", ["203.0.113.0/24"]).replace("istio-system", "foo").replace("istio-ingressgateway", "httpbin"))
    try:
        assert "published" in deny_task.reload()
        request = b"GET /ip HTTP/1.1\r\nHost: httpbin.foo\r\nx-token: admin\r\nConnection: close\r\n\r\n"
        assert status_of(proxied_request(deny_task.port(80), "203.0.113.7", request)) == 403
        assert status_of(proxied_request(deny_task.port(80), "198.51.100.7", request)) == 200
    finally:
        deny_task.remove_config("ip.yaml")
        deny_task.reload()


def test_tcp_connection_is_closed_when_no_allow_rule_can_match(deny_task):
    # allow-path-ip's only rule needs HTTP attributes: on TCP it is skipped, and the ALLOW filter allows nothing.
    assert proxied_request(deny_task.port(31400), "203.0.113.7", b"hello\n") == b""
    assert proxied_request(deny_task.port(31400), "203.0.113.7", b"hello\n") == b""
    # Counted as Istio's TCP metrics count a connection its network RBAC filter closed: opened and closed, no
    # upstream (destination unknown), no response flag; and in Envoy's tcp.rbac.denied.
    closed = metric_lines(deny_task, "istio_tcp_connections_closed_total{", wanted=lambda ls: any(not l.endswith(" 0") for l in ls))
    assert any('response_flags="-"' in l and 'destination_service="unknown"' in l and int(l.rsplit(" ", 1)[1]) >= 2 for l in closed), closed
    opened = metric_lines(deny_task, "istio_tcp_connections_opened_total{")
    assert any('destination_service="unknown"' in l and int(l.rsplit(" ", 1)[1]) >= 2 for l in opened), opened
    denied = metric_lines(deny_task, 'envoy_tcp_rbac{authz_enforce_result="denied"}')
    assert denied and int(denied[0].rsplit(" ", 1)[1]) >= 2, denied
    # The access log's TCP line carries Envoy's connection termination details: deny-method-get's rule lost its
    # HTTP fields on TCP (Istio leaves them out of DENY rules), so it denies the connection before the ALLOW filter.
    line = '"- - -" 0 - - rbac_access_denied_matched_policy[ns[foo]-policy[deny-method-get]-rule[0]]'
    deadline = time.monotonic() + TIMEOUT_S
    while line not in deny_task.access_log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line in deny_task.access_log_path.read_text()
