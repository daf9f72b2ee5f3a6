# End to end, Kubernetes Gateway API GRPCRoute: the conformance tests grpcroute-* (kubernetes-sigs/gateway-api
# conformance/tests/<name>.yaml copied unchanged into tests/e2e/gateway_api/ but for {GATEWAY_CLASS_NAME} → istio,
# expectations from <name>.go), with grpcio clients through edge (h2c with prior knowledge) to grpcio servers
# (HTTP/2 upstream), one `edge run` for the module and a SIGHUP reload per case.
#
# How it maps the suite onto one process:
# - conformance/base/manifests.yaml's infra Namespace and the port-80 Gateways (base-manifests.yaml without its
#   443 listeners); its grpc-infra-backend-v1..v3 Services (port 8080, appProtocol kubernetes.io/h2c, which Istio
#   reads as HTTP2) are ServiceEntries with an HTTP2 port 8080 whose endpoint is a grpcio server named after the
#   Service.
# - The backends stand in for the conformance grpc echo server: generic handlers (no protoc) for
#   gateway_api_conformance.echo_basic.grpcecho.GrpcEcho's Echo, EchoTwo and EchoThree answering JSON with what
#   the suite's compareResponse reads from the echo's assertions (the fully qualified method, the namespace and
#   the pod, here the backend's name) and the request metadata the backend received.
from __future__ import annotations

import collections
import functools
import json
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.e2e.harness import EdgeProcess

pytestmark = pytest.mark.e2e

CASES = Path(__file__).parent / "gateway_api"
INFRA = "gateway-conformance-infra"
SERVICE = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"
BACKENDS = ("grpc-infra-backend-v1", "grpc-infra-backend-v2", "grpc-infra-backend-v3")
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED


class EchoServer:
    """A grpcio server answering GrpcEcho's three methods as `name` (the conformance echo's pod)."""

    def __init__(self, name: str):
        self.name = name
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handlers = {m: grpc.unary_unary_rpc_method_handler(functools.partial(self.echo, m)) for m in ("Echo", "EchoTwo", "EchoThree")}
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def echo(self, method: str, request: bytes, context) -> bytes:
        headers: dict[str, list[str]] = collections.defaultdict(list)
        for key, value in context.invocation_metadata():
            headers[key].append(value)
        return json.dumps({"method": f"{SERVICE}/{method}", "namespace": INFRA, "pod": self.name, "headers": headers}).encode()


def service_entry(name: str, server: EchoServer) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {INFRA}}}
spec:
  hosts: [{name}.{INFRA}.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 8080, name: http2, protocol: HTTP2}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http2: {server.port}}}}}]
"""


def base_manifests() -> str:
    """base-manifests.yaml's documents without port-443 listeners (this module maps only port 80)."""
    docs = (CASES / "base-manifests.yaml").read_text().split("\n---\n")
    return "\n---\n".join(d for d in docs if "port: 443" not in d)


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    servers = {name: EchoServer(name) for name in BACKENDS}
    for s in servers.values():
        s.server.start()
    try:
        config = {"base.yaml": base_manifests(), "services.yaml": "---\n".join(service_entry(n, s) for n, s in servers.items()), "case.yaml": "# no case yet\n"}
        with EdgeProcess(tmp_path_factory.mktemp("gateway-api-grpc"), config, gateway_ports=(80,), workers=1) as process:
            yield process
    finally:
        for s in servers.values():
            s.server.stop(0)


def load_case(edge: EdgeProcess, name: str) -> None:
    edge.write_config("case.yaml", (CASES / f"{name}.yaml").read_text())
    outcome = edge.reload()
    assert "published" in outcome or "unchanged" in outcome, outcome


def rpc(edge: EdgeProcess, method: str = "Echo", metadata: dict[str, str] | None = None, authority: str | None = None):
    """One unary call to GrpcEcho/<method> through the gateway: (status code, echoed JSON or None)."""
    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(f"127.0.0.1:{edge.port(80)}", options=options) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            answer = call(b"", metadata=[(k.lower(), v) for k, v in (metadata or {}).items()], timeout=10)
        except grpc.RpcError as e:
            return e.code(), None
    return grpc.StatusCode.OK, json.loads(answer)


def expect(edge: EdgeProcess, backend: str | None, method: str = "Echo", **kw) -> dict | None:
    """The suite's compareResponse: the code, then (OK) the fully qualified method, namespace and pod."""
    code, echoed = rpc(edge, method, **kw)
    if backend is None:
        assert code == UNIMPLEMENTED, (method, kw, code)
        return None
    assert code == grpc.StatusCode.OK, (method, kw, code)
    assert (echoed["method"], echoed["namespace"], echoed["pod"]) == (f"{SERVICE}/{method}", INFRA, backend), (method, kw, echoed)
    return echoed


def test_grpcroute_exact_method_matching(edge):
    """grpcroute-exact-method-matching.go (GRPCExactMethodMatching)."""
    load_case(edge, "grpcroute-exact-method-matching")
    expect(edge, "grpc-infra-backend-v1", "Echo")
    expect(edge, "grpc-infra-backend-v2", "EchoTwo")
    expect(edge, None, "EchoThree")


# grpcroute-header-matching.go: (request metadata, the backend that answers or None for UNIMPLEMENTED).
HEADER_CASES = [
    ({"Version": "one"}, "grpc-infra-backend-v1"),
    ({"Version": "two"}, "grpc-infra-backend-v2"),
    ({"Version": "two", "Color": "orange"}, "grpc-infra-backend-v1"),
    ({"Version": "two", "Color": "blue"}, "grpc-infra-backend-v2"),
    ({"Color": "orange"}, None),
    ({"Some-Other-Header": "one"}, None),
    ({"Color": "blue"}, "grpc-infra-backend-v1"),
    ({"Color": "green"}, "grpc-infra-backend-v1"),
    ({"Color": "red"}, "grpc-infra-backend-v2"),
    ({"Color": "yellow"}, "grpc-infra-backend-v2"),
    ({"Color": "purple"}, None),
]


def test_grpcroute_header_matching(edge):
    """grpcroute-header-matching.go (GRPCRouteHeaderMatching)."""
    load_case(edge, "grpcroute-header-matching")
    for metadata, backend in HEADER_CASES:
        expect(edge, backend, metadata=metadata)


# grpcroute-listener-hostname-matching.go: (authority, backend or None).
HOSTNAME_CASES = [
    ("bar.com", "grpc-infra-backend-v1"),
    ("foo.bar.com", "grpc-infra-backend-v2"),
    ("baz.bar.com", "grpc-infra-backend-v3"),
    ("boo.bar.com", "grpc-infra-backend-v3"),
    ("multiple.prefixes.bar.com", "grpc-infra-backend-v3"),
    ("multiple.prefixes.foo.com", "grpc-infra-backend-v3"),
    ("foo.com", None),
    ("no.matching.host", None),
]


def test_grpcroute_listener_hostname_matching(edge):
    """grpcroute-listener-hostname-matching.go (GRPCRouteListenerHostnameMatching): four listeners on port 80
    with different hostnames, a GRPCRoute per listener (sectionName)."""
    load_case(edge, "grpcroute-listener-hostname-matching")
    for authority, backend in HOSTNAME_CASES:
        expect(edge, backend, authority=authority)


def test_grpcroute_named_rule(edge):
    """grpcroute-named-rule.go (GRPCRouteNamedRule, provisional)."""
    load_case(edge, "grpcroute-named-rule")
    expect(edge, "grpc-infra-backend-v1", "Echo")
    expect(edge, "grpc-infra-backend-v2", "EchoTwo")


def test_grpcroute_request_header_modifier(edge):
    """grpcroute-request-header-modifier.go (GRPCRouteRequestHeaderModifier). The suite's compareResponse checks
    only code, method, namespace and pod; this checks what the YAML's filters do to the metadata the backend
    receives. Three rules match Echo alike: the first (set) wins, so the add and remove rules never serve Echo."""
    load_case(edge, "grpcroute-request-header-modifier")
    authority = SERVICE  # the suite sets :authority to the service name
    got = expect(edge, "grpc-infra-backend-v1", metadata={"Some-Other-Header": "this-header-should-be-set", "X-Header-Set": "overwritten"}, authority=authority)["headers"]
    assert (got["some-other-header"], got["x-header-set"]) == (["this-header-should-be-set"], ["set-overwrites-values"])
    metadata = {"X-Header-Set-2": "set-header-2", "X-Header-Add-2": "add-header-2", "X-Header-Remove-1": "gone-1", "X-Header-Remove-2": "gone-2", "Some-Other-Header": "another-header-val"}
    got = expect(edge, "grpc-infra-backend-v2", "EchoTwo", metadata=metadata, authority=authority)["headers"]
    assert got["x-header-set-1"] == ["header-set-1"] and got["x-header-set-2"] == ["header-set-2"]
    assert got["x-header-add-1"] == ["header-add-1"] and got["x-header-add-2"] == ["add-header-2", "header-add-2"]
    assert "x-header-remove-1" not in got and "x-header-remove-2" not in got
    assert got["some-other-header"] == ["another-header-val"]


def test_grpcroute_weight(edge):
    """grpcroute-weight.go (GRPCRouteWeight): 70/30/0. The suite sends until the shares are within its tolerance;
    here 200 calls must land within ±4.5 standard deviations of 70 % and none on the weight-0 backend."""
    load_case(edge, "grpcroute-weight")
    counts = collections.Counter()
    with grpc.insecure_channel(f"127.0.0.1:{edge.port(80)}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/Echo")
        for _ in range(200):
            counts[json.loads(call(b"", timeout=10))["pod"]] += 1
    assert counts["grpc-infra-backend-v3"] == 0 and sum(counts.values()) == 200
    assert 111 <= counts["grpc-infra-backend-v1"] <= 169, counts


# Not a conformance test: a rule whose backendRefs all have weight 0 answers 500 (httproute_types.go BackendRefs;
# Istio's direct response), which reaches a gRPC client as Envoy's local reply does: UNKNOWN (httpToGrpcStatus).
NO_BACKENDS = f"""apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: no-backends, namespace: {INFRA}}}
spec:
  parentRefs: [{{name: same-namespace}}]
  rules:
  - matches: [{{method: {{service: {SERVICE}, method: EchoTwo}}}}]
    backendRefs: [{{name: grpc-infra-backend-v1, port: 8080, weight: 0}}]
  - backendRefs: [{{name: grpc-infra-backend-v3, port: 8080}}]
"""


def test_rule_without_backends_is_unknown_to_grpc_clients(edge):
    edge.write_config("case.yaml", NO_BACKENDS)
    assert "published" in edge.reload()
    assert rpc(edge, "EchoTwo")[0] == grpc.StatusCode.UNKNOWN
    expect(edge, "grpc-infra-backend-v3", "Echo")  # the match-less rule takes the rest
