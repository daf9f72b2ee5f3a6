# GRPCRoute, pure: the CRD's rules (edge/gateway_api.py), Istio's method-match translation and precedence
# (edge/compiler/gateway_api_grpc.py), merging with HTTPRoutes, attachment, refusals, the backend protocol
# warning and `edge route` naming the GRPCRoute rule.
from __future__ import annotations

import msgspec
import pytest

from edge import gateway_api as gw
from edge import table
from edge.compiler import CompileOptions, load_and_compile
from edge.compiler.gateway_api_grpc import method_uri, sort_key
from edge.compiler.gateway_api_http import sort_key as http_sort_key


def method(service=None, name=None, type="Exact") -> gw.GRPCMethodMatch:
    return gw.GRPCMethodMatch(type=type, service=service, method=name)


def gmatch(service=None, name=None, type="Exact", headers=0) -> gw.GRPCRouteMatch:
    m = method(service, name, type) if service or name else None
    return gw.GRPCRouteMatch(method=m, headers=[gw.GRPCHeaderMatch(name=f"h{i}", value="v") for i in range(headers)])


# conversion.go createGRPCURIMatch: method match → (kind, value) of the :path match.
@pytest.mark.parametrize(
    "m, expected",
    [
        (method("pkg.Svc", "Call"), ("exact", "/pkg.Svc/Call")),
        (method("pkg.Svc"), ("prefix", "/pkg.Svc/")),
        (method(name="Call"), ("regex", "/[^/]+/Call")),
        (method("pkg.S.*", "Ca.l", "RegularExpression"), ("regex", "/pkg.S.*/Ca.l")),
        (method("pkg.S.*", type="RegularExpression"), ("regex", "/pkg.S.*/.+")),
        (method(name="C.*", type="RegularExpression"), ("regex", "/[^/]+/C.*")),
        (None, None),
    ],
)
def test_method_match_becomes_a_path_match(m, expected):
    uri = method_uri(m)
    got = None if uri is None else next((k, v) for k, v in msgspec.structs.asdict(uri).items() if v is not None)
    assert got == expected


# (higher precedence, lower precedence) by Istio's sortHTTPRoutes over the translated matches.
PRECEDENCE = [
    (gmatch("a.B", "M"), gmatch("a.LongerService")),  # exact path before any prefix
    (gmatch("a.LongerService"), gmatch("a.B")),  # the longer prefix first
    (gmatch("a.B"), gmatch(name="AVeryLongMethodName")),  # prefix (service only) before regex (method only)
    (gmatch("a.B"), gmatch("a.B", "M", "RegularExpression")),  # Istio, not the spec: an Exact service beats a regex service+method
    (gmatch(name="M"), gmatch(headers=3)),  # any path condition before none
    (gmatch("a.B", headers=2), gmatch("a.B", headers=1)),  # then more headers
    (gmatch(headers=1), None),  # a rule without matches comes last
]


@pytest.mark.parametrize("first, second", PRECEDENCE)
def test_precedence(first, second):
    assert sort_key(first) < sort_key(second)


def test_keys_compare_with_httproute_keys():
    # Istio sorts the merged HTTP and gRPC routes of a host together: prefix /pkg.Svc/ (9) before PathPrefix /api (4),
    # exact /a/b before both, an HTTP regex before a gRPC match with headers only.
    http = lambda t, v: http_sort_key(gw.HTTPRouteMatch(path=gw.HTTPPathMatch(type=t, value=v)))  # noqa: E731
    assert sort_key(gmatch("pkg.Svc")) < http("PathPrefix", "/api") < sort_key(gmatch(name="M"))
    assert http("Exact", "/a/b") < sort_key(gmatch("pkg.Svc"))
    assert http("RegularExpression", "/x") < sort_key(gmatch(headers=5))


# The CRD's OpenAPI and CEL rules (grpcroute_types.go, shared_types.go).
@pytest.mark.parametrize(
    "spec, message",
    [
        ({"rules": [{"matches": [{"method": {}}]}]}, "One or both of 'service' or 'method' must be specified"),
        ({"rules": [{"matches": [{"method": {"type": "RegularExpression"}}]}]}, "One or both of 'service' or 'method'"),
        ({"rules": [{"matches": [{"method": {"service": "a/b"}}]}]}, "service must only contain valid characters"),
        ({"rules": [{"matches": [{"method": {"service": "1a"}}]}]}, "service must only contain valid characters"),
        ({"rules": [{"matches": [{"method": {"method": "a.b"}}]}]}, "method must only contain valid characters"),
        ({"rules": [{"matches": [{"method": {"type": "Prefix", "service": "a"}}]}]}, "Invalid enum value 'Prefix'"),
        ({"rules": [{"matches": [{"headers": [{"name": "a", "value": "1"}, {"name": "a", "value": "2"}]}]}]}, "duplicate entries for key"),
        ({"rules": [{"matches": [{"headers": [{"name": "a b", "value": "1"}]}]}]}, "Expected `str` matching regex"),
        ({"rules": [{"filters": [{"type": "RequestHeaderModifier"}]}]}, "filter.requestHeaderModifier must be specified"),
        ({"rules": [{"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "g", "kind": "K", "name": "n"}, "requestHeaderModifier": {}}]}]}, "filter.requestHeaderModifier must be nil"),
        ({"rules": [{"filters": [{"type": "URLRewrite"}]}]}, "Invalid enum value 'URLRewrite'"),  # HTTPRoute only
        (
            {"rules": [{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {}}, {"type": "RequestHeaderModifier", "requestHeaderModifier": {}}]}]},
            "RequestHeaderModifier filter cannot be repeated",
        ),
        ({"rules": [{"backendRefs": [{"name": "svc"}]}]}, "Must have port for Service reference"),
        ({"rules": [{"backendRefs": [{"name": "svc", "port": 80, "filters": [{"type": "ResponseHeaderModifier"}]}]}]}, "filter.responseHeaderModifier must be specified"),
        ({"rules": [{"name": "a"}, {"name": "a"}]}, "Rule name must be unique"),
        ({"rules": [{"matches": [{"method": {"service": "a"}}] * 64}] * 3}, "less than 128"),
        ({"rules": [{"sessionPersistence": {"type": "Header"}}]}, "header must be specified for Header type"),
        ({"rules": [{"sessionPersistence": {"cookie": {"lifetimeType": "Permanent"}}}]}, "AbsoluteTimeout must be specified"),
        ({"rules": [{"timeouts": {"request": "1s"}}]}, "unknown field `timeouts`"),  # HTTPRoute only
        ({"hostnames": ["Foo.com"]}, "Expected `str` matching regex"),
    ],
)
def test_schema_rules(spec, message):
    with pytest.raises(msgspec.ValidationError, match=message.replace("(", r"\(").replace("|", r"\|")):
        msgspec.convert(spec, gw.GRPCRouteSpec)


def test_defaults_and_valid_values():
    spec = msgspec.convert({"rules": [{"matches": [{"method": {"service": ".grpc.health.v1.Health", "method": "Check"}, "headers": [{"name": "v", "value": "1"}]}], "backendRefs": [{"name": "s", "port": 1}]}]}, gw.GRPCRouteSpec)
    m = spec.rules[0].matches[0]
    assert (m.method.type, m.headers[0].type, spec.rules[0].backend_refs[0].weight) == ("Exact", "Exact", 1)
    assert msgspec.convert({"rules": [{}]}, gw.GRPCRouteSpec).rules[0].matches == []  # no default match, unlike HTTPRoute
    # RegularExpression values are not held to the Exact patterns (RE2 syntax is checked where the regex is compiled).
    assert msgspec.convert({"rules": [{"matches": [{"method": {"type": "RegularExpression", "service": "a/.*"}}]}]}, gw.GRPCRouteSpec)


GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - name: http-only
    port: 8080
    protocol: HTTP
    allowedRoutes: {kinds: [{kind: HTTPRoute}]}
  - {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: infra}
spec:
  hosts: [grpc.infra.svc.cluster.local]
  ports: [{number: 8080, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: infra}
spec:
  hosts: [web.infra.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""

GRPC_ROUTE = """\
apiVersion: gateway.networking.k8s.io/{version}
kind: GRPCRoute
metadata: {{name: g, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw, namespace: infra{extra}}}]
  hostnames: [a.example.com]
  rules:
  - matches:
    - method: {{service: pkg.Svc}}
    - headers: [{{name: X-Version, value: two}}]
    backendRefs: [{{name: grpc, namespace: infra, port: {port}}}]
  - backendRefs: [{{name: grpc, namespace: infra, port: {port}}}]
"""

# Istio's testdata/http-grpc-same-host.yaml, as its golden output merges it.
HTTP_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: h, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  hostnames: [a.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web, port: 80}]
"""


def compile_with(tmp_path, routes: str):
    (tmp_path / "a.yaml").write_text(GATEWAY + "---\n" + routes)
    return load_and_compile([str(tmp_path)], CompileOptions(gateway_classes=("istio",)))


def grpc_route(version="v1", ns="infra", extra="", port=8080) -> str:
    return GRPC_ROUTE.format(version=version, ns=ns, extra=extra, port=port)


def warnings(result) -> str:
    """The warnings about GRPCRoutes (the Gateway's idle TLS listener has its own)."""
    return " | ".join(d.message for d in result.diagnostics if d.severity == "warning" and d.resource.startswith("GRPCRoute"))


def test_merged_with_httproutes_and_sorted_as_istio(tmp_path):
    _, result = compile_with(tmp_path, grpc_route() + "---\n" + HTTP_ROUTE)
    assert result.ok, result.diagnostics
    listener = next(l for l in result.table.listeners if l.port == 80)
    (vhost,) = listener.route_config.virtual_hosts
    assert vhost.domains == ("a.example.com",)
    order = [(r.name, r.match.path.value if r.match.path else None, tuple(h.name for h in r.match.headers)) for r in vhost.routes]
    assert order == [
        ("infra.g.0.0", "/pkg.Svc/", ()),  # prefix, 9 characters
        ("infra.h.0.0", "/api", ()),  # PathPrefix /api: exact /api, then prefix /api/ (Envoy's path_separated_prefix)
        ("infra.h.0.0", "/api/", ()),
        ("infra.g.0.1", None, ("x-version",)),  # no path condition; header names lowercased
        ("infra.g.1.0", None, ()),  # no match: last
    ]
    grpc = vhost.routes[0]
    assert grpc.clusters[0].cluster == "outbound|8080||grpc.infra.svc.cluster.local"
    assert result.table.clusters[grpc.clusters[0].cluster].upstream_protocol == table.UPSTREAM_HTTP2  # the GRPC port decides


def test_v1alpha2_is_read(tmp_path):
    _, result = compile_with(tmp_path, grpc_route(version="v1alpha2"))
    assert result.ok and not warnings(result), warnings(result)


@pytest.mark.parametrize(
    "ns, extra, reason",
    [
        ("infra", ", sectionName: http", None),
        ("infra", ", sectionName: http-only", "NotAllowedByListeners"),  # allowedRoutes.kinds lists HTTPRoute only
        ("infra", ", sectionName: tls", "NotAllowedByListeners"),  # a TLS listener supports TLSRoute
        ("other", "", "NotAllowedByListeners"),  # allowedRoutes from Same
        ("infra", ", sectionName: nope", "NoMatchingParent"),
    ],
)
def test_attachment_reasons(tmp_path, ns, extra, reason):
    _, result = compile_with(tmp_path, grpc_route(ns=ns, extra=extra))
    messages = warnings(result)
    assert result.ok
    if reason is None:
        assert "Accepted=False" not in messages and "ResolvedRefs=False" not in messages, messages
    else:
        assert reason in messages, messages


def test_cross_namespace_backend_needs_a_grant_from_grpcroute(tmp_path):
    route = grpc_route(ns="apps")
    gateway_all = "allowedRoutes: {namespaces: {from: All}}"
    (tmp_path / "a.yaml").write_text(GATEWAY.replace('hostname: "*.example.com"}', 'hostname: "*.example.com", ' + gateway_all + "}") + "---\n" + route)
    options = CompileOptions(gateway_classes=("istio",))
    _, result = load_and_compile([str(tmp_path)], options)
    assert "RefNotPermitted" in warnings(result)
    grant = """\
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: infra}
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: apps}]
  to: [{group: "", kind: Service}]
"""
    (tmp_path / "b.yaml").write_text(grant)
    _, result = load_and_compile([str(tmp_path)], options)
    assert result.ok and "RefNotPermitted" not in warnings(result), warnings(result)


def test_http_port_backend_is_warned_and_stays_http1(tmp_path):
    # Istio decides the upstream protocol by the port (setUpstreamProtocol), never by the route kind.
    route = grpc_route().replace("name: grpc, namespace: infra, port: 8080", "name: web, namespace: infra, port: 80")
    _, result = compile_with(tmp_path, route)
    assert "has protocol HTTP: edge (as Istio) speaks HTTP/1.1 to it" in warnings(result)
    assert result.table.clusters["outbound|80||web.infra.svc.cluster.local"].upstream_protocol == "HTTP/1.1"


@pytest.mark.parametrize(
    "rule, path",
    [
        ("  - filters: [{type: ExtensionRef, extensionRef: {group: g.io, kind: K, name: n}}]\n", "$.spec.rules[2].filters[0]"),
        ("  - sessionPersistence: {type: Header, header: {name: x-session}}\n", "$.spec.rules[2].sessionPersistence"),
    ],
)
def test_unsupported_filter_or_session_persistence_is_not_served(tmp_path, rule, path):
    _, result = compile_with(tmp_path, grpc_route() + rule)
    refused = [d for d in result.diagnostics if "UnsupportedValue" in d.message]
    assert result.ok and [d.path for d in refused] == [path]
    listener = next((l for l in result.table.listeners if l.port == 80), None)
    assert listener is None or not any(r.name.startswith("infra.g.") for v in listener.route_config.virtual_hosts for r in v.routes)


def test_no_backends_answer_500_and_mirrors_are_kept(tmp_path):
    route = grpc_route() + (
        "  - matches: [{method: {service: pkg.Mirror}}]\n"
        "    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: grpc, port: 8080}}}]\n"
        "    backendRefs: [{name: grpc, port: 8080}]\n"
        "  - matches: [{method: {service: pkg.None}}]\n"
        "    backendRefs: [{name: grpc, port: 8080, weight: 0}]\n"
    )
    _, result = compile_with(tmp_path, route)
    routes = {r.name: r for l in result.table.listeners if l.port == 80 for v in l.route_config.virtual_hosts for r in v.routes}
    assert routes["infra.g.2.0"].mirrors[0].cluster == "outbound|8080||grpc.infra.svc.cluster.local"
    assert routes["infra.g.3.0"].action == table.ACTION_DIRECT and routes["infra.g.3.0"].direct.status == 500


def test_invalid_regex_is_an_error_at_the_grpcroute_match(tmp_path):
    route = grpc_route() + "  - matches: [{method: {type: RegularExpression, service: 'a(?=b)'}}]\n"
    _, result = compile_with(tmp_path, route)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert not result.ok and errors and errors[0].resource == "GRPCRoute infra/g" and errors[0].path.startswith("$.spec.rules[2].matches[0]"), errors


def test_edge_route_names_the_grpcroute_rule(tmp_path, capsys):
    from edge.cli import main

    (tmp_path / "a.yaml").write_text(GATEWAY + "---\n" + grpc_route() + "---\n" + HTTP_ROUTE)
    args = ["route", str(tmp_path), "--port", "80", "--host", "a.example.com", "--method", "POST"]
    assert main([*args, "--path", "/pkg.Svc/Call"]) == 0
    out = capsys.readouterr().out
    assert "matched GRPCRoute infra/g rules[0].matches[0]" in out and "a.yaml:" in out
    assert main([*args, "--path", "/other.Svc/Call", "--header", "x-version=two"]) == 0
    assert "matched GRPCRoute infra/g rules[0].matches[1]" in capsys.readouterr().out
    assert main([*args, "--path", "/api/x"]) == 0
    assert "matched HTTPRoute infra/h rules[0].matches[0]" in capsys.readouterr().out
