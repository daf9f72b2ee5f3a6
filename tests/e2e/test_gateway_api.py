# End to end, Kubernetes Gateway API: the real `edge run` (one process for the module) serving the Gateway API
# conformance suite's manifests (kubernetes-sigs/gateway-api conformance/tests/*.yaml, copied unchanged into
# tests/e2e/gateway_api/ but for {GATEWAY_CLASS_NAME} → istio), with the expectations of the matching .go files.
#
# How it maps the suite onto one process:
# - conformance/base/manifests.yaml's shared Gateways are BASE below (same-namespace, all-namespaces: HTTP on 80);
#   its Services are ServiceEntries for `<name>.<ns>.svc.cluster.local:8080` whose endpoints are loopback sample
#   backends named after them, so "which backend answered" is the sample backend's `instance`.
# - The suite applies one test's manifests at a time; so does this module: each test writes its case file and
#   reloads (SIGHUP), the way an operator would change the configuration (this is also the reload test).
# - Every served Gateway shares this one process, so listeners on one port are merged (as servers of Istio
#   Gateways are); the cases never rely on two Gateways on one port being isolated.
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

CASES = Path(__file__).parent / "gateway_api"
NS = "gateway-conformance-infra"
BACKENDS = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3")

# conformance/base/manifests.yaml: the shared Gateways (class istio).
BASE = f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: same-namespace
  namespace: {NS}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: Same
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: all-namespaces
  namespace: {NS}
spec:
  gatewayClassName: istio
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes:
      namespaces:
        from: All
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-api")
    ca = trustme.CA()
    leaf = ca.issue_cert("abc.example.com")
    cert, key = root / "tls.crt", root / "tls.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    with SampleBackends(root / "backends", http=list(BACKENDS), https=["tcp-backend"], tls_cert=cert, tls_key=key) as backends:
        services = [backends.service_entry(f"{name}.{NS}.svc.cluster.local", [name], port=8080) for name in BACKENDS]
        services.append(backends.service_entry(f"tcp-backend.{NS}.svc.cluster.local", ["tcp-backend"], port=8443, protocol="TLS"))
        config = {"base.yaml": BASE, "services.yaml": "---\n".join(services), "case.yaml": "# no case yet\n"}
        with EdgeProcess(root / "edge", config, gateway_ports=(80, 443)) as process:
            process.ca = ca
            yield process


def load_case(edge: EdgeProcess, *names: str) -> None:
    """The conformance test's manifests become the configuration's case file, then a reload publishes them."""
    edge.write_config("case.yaml", "\n---\n".join((CASES / f"{name}.yaml").read_text() for name in names))
    outcome = edge.reload()
    assert "published" in outcome or "unchanged" in outcome, outcome


def request(edge: EdgeProcess, path: str, host: str = "example.com", headers: dict | None = None, method: str = "GET"):
    status, body, response_headers = http_get(edge.port(80), path, host=host, headers=headers, method=method)
    echoed = json.loads(body) if status == 200 and body and method != "HEAD" else {}
    return status, echoed, response_headers


def served_by(edge: EdgeProcess, path: str, host: str = "example.com", headers: dict | None = None, method: str = "GET") -> str | int:
    """The backend that answered (v1, v2, v3), or the status when the gateway answered itself."""
    status, echoed, _ = request(edge, path, host, headers, method)
    return echoed["instance"].removeprefix("infra-backend-") if status == 200 and echoed else status


def check(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", "check", *argv], capture_output=True, text=True)


# (request, expected backend or status) per conformance test; requests are (path, host, headers, method).
CASE_TABLE = {
    # conformance/tests/httproute-matching.go (HTTPRouteMatching)
    "httproute-matching": [
        (("/", None, None), "v1"), (("/example", None, None), "v1"), (("/", None, {"Version": "one"}), "v1"),
        (("/v2", None, None), "v2"), (("/v2/example", None, None), "v2"), (("/", None, {"Version": "two"}), "v2"),
        (("/v2/", None, None), "v2"), (("/v2example", None, None), "v1"), (("/foo/v2/example", None, None), "v1"),
    ],
    # conformance/tests/httproute-exact-path-matching.go (HTTPExactPathMatching)
    "httproute-exact-path-matching": [
        (("/one", None, None), "v1"), (("/two", None, None), "v2"), (("/", None, None), 404),
        (("/one/example", None, None), 404), (("/two/", None, None), 404), (("/Two", None, None), 404),
    ],
    # conformance/tests/httproute-header-matching.go (HTTPRouteHeaderMatching)
    "httproute-header-matching": [
        (("/", None, {"Version": "one"}), "v1"), (("/", None, {"Version": "two"}), "v2"),
        (("/", None, {"Version": "two", "Color": "orange"}), "v1"), (("/", None, {"Version": "two", "Color": "blue"}), "v2"),
        (("/", None, {"Color": "orange"}), 404), (("/", None, {"Some-Other-Header": "one"}), 404),
        (("/", None, {"Color": "blue"}), "v1"), (("/", None, {"Color": "green"}), "v1"), (("/", None, {"Color": "red"}), "v2"),
        (("/", None, {"Color": "yellow"}), "v2"), (("/", None, {"Color": "purple"}), 404),
    ],
    # conformance/tests/httproute-query-param-matching.go (HTTPRouteQueryParamMatching)
    "httproute-query-param-matching": [
        (("/?animal=whale", None, None), "v1"), (("/?animal=dolphin", None, None), "v2"), (("/?animal=dolphin&color=blue", None, None), "v3"),
        (("/?ANIMAL=Whale", None, None), "v3"), (("/?animal=whale&otherparam=irrelevant", None, None), "v1"),
        (("/?animal=dolphin&color=yellow", None, None), "v2"), (("/?color=blue", None, None), 404), (("/?animal=dog", None, None), 404),
        (("/?animal=whaledolphin", None, None), 404), (("/", None, None), 404), (("/path1?animal=whale", None, None), "v1"),
        (("/?animal=whale", None, {"version": "one"}), "v2"), (("/path2?animal=whale", None, {"version": "two"}), "v3"),
        (("/path3?animal=shark", None, None), "v1"),
    ],
    # conformance/tests/httproute-method-matching.go (HTTPRouteMethodMatching)
    "httproute-method-matching": [
        (("/", None, None, "POST"), "v1"), (("/", None, None, "GET"), "v2"), (("/", None, None, "HEAD"), 404),
        (("/path1", None, None, "GET"), "v1"), (("/", None, {"version": "one"}, "PUT"), "v2"),
        (("/path2", None, {"version": "two"}, "POST"), "v3"), (("/path3", None, None, "PATCH"), "v1"),
        (("/path4", None, {"version": "three"}, "DELETE"), "v1"), (("/", None, None, "PUT"), 404), (("/path4", None, None, "DELETE"), 404),
        (("/path5", None, None, "PATCH"), "v1"), (("/", None, {"version": "four"}, "PATCH"), "v2"),
    ],
    # conformance/tests/httproute-matching-across-routes.go (HTTPRouteMatchingAcrossRoutes)
    "httproute-matching-across-routes": [
        (("/", "example.com", None), "v1"), (("/example", "example.com", None), "v1"), (("/example", "example.net", None), "v1"),
        (("/example", "example.com", {"Version": "one"}), "v1"), (("/v2", "example.com", None), "v2"), (("/v2", "example.net", None), "v1"),
        (("/v2/example", "example.com", None), "v2"), (("/", "example.com", {"Version": "two"}), "v2"),
    ],
    # conformance/tests/httproute-path-match-order.go (HTTPRoutePathMatchOrder)
    "httproute-path-match-order": [
        (("/match/exact/one", None, None), "v3"), (("/match/exact", None, None), "v2"), (("/match", None, None), "v1"),
        (("/match/prefix/one/any", None, None), "v2"), (("/match/prefix/any", None, None), "v1"), (("/match/any", None, None), "v3"),
    ],
    # conformance/tests/httproute-listener-hostname-matching.go (HTTPRouteListenerHostnameMatching)
    "httproute-listener-hostname-matching": [
        (("/", "bar.com", None), "v1"), (("/", "foo.bar.com", None), "v2"), (("/", "baz.bar.com", None), "v3"),
        (("/", "boo.bar.com", None), "v3"), (("/", "multiple.prefixes.bar.com", None), "v3"),
        (("/", "multiple.prefixes.foo.com", None), "v3"), (("/", "foo.com", None), 404), (("/", "no.matching.host", None), 404),
    ],
    # conformance/tests/httproute-invalid-nonexistent-backendref.go (HTTPRouteInvalidNonExistentBackendRef)
    "httproute-invalid-nonexistent-backendref": [(("/", None, None), 500)],
    # conformance/tests/httproute-invalid-backendref-unknown-kind.go (HTTPRouteInvalidBackendRefUnknownKind)
    "httproute-invalid-backendref-unknown-kind": [(("/", None, None), 500)],
    # conformance/tests/httproute-omitted-backendrefs.go (HTTPRouteOmittedBackendRefs)
    "httproute-omitted-backendrefs": [(("/forward", None, None), "v1"), (("/omitted-no-forward", None, None), 500), (("/empty-no-forward", None, None), 500)],
}


@pytest.mark.parametrize("case", list(CASE_TABLE))
def test_routing_conformance(edge, case):
    load_case(edge, case)
    for req, expected in CASE_TABLE[case]:
        path, host, headers, *method = req
        got = served_by(edge, path, host or "example.com", headers, *(method or ["GET"]))
        assert got == expected, f"{case}: {req} → {got}, expected {expected}"


def test_rewrite_path_conformance(edge):
    """conformance/tests/httproute-rewrite-path.go (HTTPRouteRewritePath): the backend sees the rewritten path."""
    load_case(edge, "httproute-rewrite-path")
    for path, rewritten in [("/prefix/one/two", "/one/two"), ("/strip-prefix/three", "/three"), ("/strip-prefix", "/"), ("/full/one/two", "/one")]:
        status, echoed, _ = request(edge, path)
        assert (status, echoed.get("path"), echoed.get("instance")) == (200, rewritten, "infra-backend-v1"), path


def test_redirect_path_conformance(edge):
    """conformance/tests/httproute-redirect-path.go (HTTPRouteRedirectPath)."""
    load_case(edge, "httproute-redirect-path")
    expected = {
        "/original-prefix/lemon": (302, "http://example.com/replacement-prefix/lemon"),
        "/full/path/original": (302, "http://example.com/full-path-replacement"),
        "/path-and-host": (302, "http://example.org/replacement-prefix"),
        "/path-and-status": (301, "http://example.com/replacement-prefix"),
        "/full-path-and-host": (302, "http://example.org/replacement-full"),
        "/full-path-and-status": (301, "http://example.com/replacement-full"),
    }
    for path, (code, location) in expected.items():
        status, _, headers = request(edge, path)
        # The request's port is kept (FROM_REQUEST_PORT): edge listens on a mapped port, the Host has none.
        assert (status, headers.get("location")) == (code, location), path


def test_weight_conformance(edge):
    """conformance/tests/httproute-weight.go (HTTPRouteWeight): 70/30/0 split; the weight-0 backend gets nothing."""
    load_case(edge, "httproute-weight")
    counts = {"v1": 0, "v2": 0, "v3": 0}
    for _ in range(200):
        counts[served_by(edge, "/")] += 1
    assert counts["v3"] == 0
    assert 100 <= counts["v1"] <= 175 and 25 <= counts["v2"] <= 100, counts


def test_tlsroute_simple_same_namespace_conformance(edge):
    """conformance/tests/tlsroute-simple-same-namespace.go (TLSRouteSimpleSameNamespace): passthrough by SNI to a TLS
    backend; the client sees the backend's certificate, issued for abc.example.com."""
    load_case(edge, "tlsroute-simple-same-namespace")
    context = edge.ca.client_context() if hasattr(edge.ca, "client_context") else ssl.create_default_context()
    edge.ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", edge.port(443)), timeout=10) as raw, context.wrap_socket(raw, server_hostname="abc.example.com") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: abc.example.com\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert b'"instance": "tcp-backend"' in data or b'"instance":"tcp-backend"' in data
    # Another SNI under the listener's *.example.com has no route: the connection is refused (closed).
    with socket.create_connection(("127.0.0.1", edge.port(443)), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with context.wrap_socket(raw, server_hostname="other.example.com") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
                if not tls.recv(1):
                    raise ConnectionError("closed")


def test_mixing_with_istio_resources(edge):
    """A Gateway API route and an Istio Gateway + VirtualService in one configuration, each served."""
    istio_config = f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-gw
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [istio.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: istio-vs
spec:
  hosts: [istio.example.com]
  gateways: [istio-gw]
  http:
  - route:
    - destination: {{host: infra-backend-v3.{NS}.svc.cluster.local, port: {{number: 8080}}}}
"""
    edge.write_config("istio.yaml", istio_config)
    try:
        load_case(edge, "httproute-exact-path-matching")
        assert served_by(edge, "/one") == "v1"
        assert served_by(edge, "/anything", host="istio.example.com") == "v3"
    finally:
        edge.remove_config("istio.yaml")


def test_check_reports_status_conditions(tmp_path):
    """`edge check` names the Gateway API kinds and reports the route conditions with their reasons."""
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "route.yaml").write_text(
        (CASES / "httproute-invalid-nonexistent-backendref.yaml").read_text()
        + f"""\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: lost
  namespace: {NS}
spec:
  parentRefs:
  - name: same-namespace
    sectionName: nope
"""
    )
    result = check(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "2 Gateways (gateway.networking.k8s.io), 2 HTTPRoutes" in result.stdout
    assert "BackendNotFound" in result.stderr and "route.yaml:" in result.stderr
    assert "Accepted=False (NoMatchingParent): Gateway same-namespace has no listener with sectionName nope" in result.stderr
    assert "HTTPRoute gateway-conformance-infra/lost is not attached to any listener" in result.stderr


def test_check_rejects_schema_violations(tmp_path):
    """The CRDs' validation (here: a filter whose field does not match its type, a relative path) fails `edge check`
    with the file, line and field path."""
    (tmp_path / "route.yaml").write_text(
        """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bad
spec:
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: relative
"""
    )
    result = check(str(tmp_path))
    assert result.returncode == 1
    assert "route.yaml:8:" in result.stderr and "$.spec.rules[0].matches[0].path" in result.stderr
    assert "must be an absolute path" in result.stderr
