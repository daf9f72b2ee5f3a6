# The Gateway API front stage, pure: precedence, hostname intersection, path translation, attachment reasons and
# the generated Istio model (edge/compiler/gateway_api.py, gateway_api_http.py; Structs in edge/gateway_api.py).
from __future__ import annotations

import msgspec
import pytest

from edge import gateway_api as gw
from edge.compiler import load_and_compile
from edge.compiler.gateway_api import intersect
from edge.compiler.gateway_api_http import _replacement, match_variants, sort_key, timeout_and_retries


def match(path_type="PathPrefix", value="/", headers=0, query=0, method=None) -> gw.HTTPRouteMatch:
    return gw.HTTPRouteMatch(
        path=gw.HTTPPathMatch(type=path_type, value=value),
        headers=[gw.HTTPHeaderMatch(name=f"h{i}", value="v") for i in range(headers)],
        query_params=[gw.HTTPQueryParamMatch(name=f"q{i}", value="v") for i in range(query)],
        method=method,
    )


# (higher precedence, lower precedence): the spec's order as Istio's sortHTTPRoutes applies it.
PRECEDENCE = [
    (match("Exact", "/a"), match("PathPrefix", "/a/b/c")),  # Exact before any prefix
    (match("PathPrefix", "/abc"), match("PathPrefix", "/ab")),  # longer prefix first
    (match("PathPrefix", "/ab"), match("RegularExpression", "/abcdef.*")),  # Istio: prefix before regex
    (match(method="GET"), match(headers=3)),  # a method match before header count
    (match(headers=2), match(headers=1, query=3)),  # more headers first
    (match(query=2), match(query=1)),  # more query params first
    (match("PathPrefix", "/ab/"), match("PathPrefix", "/a")),  # a trailing slash does not count
]


@pytest.mark.parametrize("first, second", PRECEDENCE)
def test_precedence(first, second):
    assert sort_key(first) < sort_key(second)


def test_trailing_slash_is_ignored_in_length():
    assert sort_key(match("PathPrefix", "/ab/")) == sort_key(match("PathPrefix", "/ab"))


@pytest.mark.parametrize(
    "listener, route, expected",
    [
        (None, [], ["*"]),
        ("foo.com", [], ["foo.com"]),
        (None, ["a.com", "*.b.com"], ["a.com", "*.b.com"]),
        ("*.bar.com", ["foo.bar.com", "bar.com", "*.bar.com"], ["foo.bar.com", "*.bar.com"]),
        ("foo.bar.com", ["*.bar.com"], ["foo.bar.com"]),
        ("*.bar.com", ["*.foo.bar.com"], ["*.foo.bar.com"]),
        ("very.specific.com", ["non.matching.com"], []),
        ("*.wildcard.io", ["wildcard.io"], []),
    ],
)
def test_hostname_intersection(listener, route, expected):
    assert intersect(listener, route) == expected


@pytest.mark.parametrize(
    "m, expected",
    [
        (match("PathPrefix", "/"), [("prefix", "/")]),
        (match("PathPrefix", "/foo"), [("exact", "/foo"), ("prefix", "/foo/")]),
        (match("PathPrefix", "/foo/"), [("exact", "/foo"), ("prefix", "/foo/")]),
        (match("Exact", "/foo/"), [("exact", "/foo/")]),
        (match("RegularExpression", "/f.*"), [("regex", "/f.*")]),
    ],
)
def test_path_prefix_matches_whole_segments(m, expected):
    got = [(k, v) for uri, _ in match_variants(m) for k, v in msgspec.structs.asdict(uri).items() if v is not None]
    assert got == expected


@pytest.mark.parametrize(
    "value, how, expected",
    [("/one", "full", "/one"), ("/one", "prefix", "/one/"), ("/", "full", "/"), ("/", "prefix", "/"), ("/one/", "prefix", "/one/")],
)
def test_replace_prefix_match(value, how, expected):
    assert _replacement(value, how) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"rules": [{"matches": [{"path": {"value": "/a//b"}}]}]}, "must not contain '//'"),
        ({"rules": [{"filters": [{"type": "RequestHeaderModifier"}]}]}, "filter.requestHeaderModifier must be specified"),
        ({"rules": [{"filters": [{"type": "URLRewrite", "requestRedirect": {}}]}]}, "filter.requestRedirect must be nil"),
        ({"rules": [{"backendRefs": [{"name": "svc"}]}]}, "Must have port for Service reference"),
        ({"hostnames": ["Foo.com"]}, "Expected `str` matching regex"),
        ({"rules": [{"timeouts": {"request": "1d"}}]}, "Expected `str` matching regex"),
        (
            {"rules": [{"matches": [{"path": {"value": "/a"}}, {"path": {"value": "/b"}}], "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]}]},
            "exactly one PathPrefix match",
        ),
    ],
)
def test_schema_rules(spec, message):
    with pytest.raises(msgspec.ValidationError, match=message.replace("(", r"\(").replace("`", "`")):
        msgspec.convert(spec, gw.HTTPRouteSpec)


def test_defaults():
    spec = msgspec.convert({"rules": [{"backendRefs": [{"name": "svc", "port": 80}]}]}, gw.HTTPRouteSpec)
    rule = spec.rules[0]
    assert rule.matches == [gw.HTTPRouteMatch(path=gw.HTTPPathMatch(type="PathPrefix", value="/"))]
    assert (rule.backend_refs[0].weight, rule.backend_refs[0].kind, rule.backend_refs[0].group) == (1, "Service", "")


GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
  - name: other
    port: 8080
    protocol: HTTP
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: svc, namespace: infra}
spec:
  hosts: [svc.infra.svc.cluster.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
"""


def compile_with(tmp_path, routes: str, classes=("istio",)):
    from edge.compiler import CompileOptions

    (tmp_path / "a.yaml").write_text(GATEWAY + "---\n" + routes)
    return load_and_compile([str(tmp_path)], CompileOptions(gateway_classes=classes))


ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw, namespace: infra{extra}}}]
  hostnames: [{hosts}]
  rules:
  - backendRefs: [{{name: svc, namespace: infra, port: 80}}]
"""


@pytest.mark.parametrize(
    "ns, extra, hosts, reason",
    [
        ("infra", "", "a.example.com", None),
        ("other", "", "a.example.com", "NotAllowedByListeners"),  # allowedRoutes defaults to Same
        ("infra", ", sectionName: nope", "a.example.com", "NoMatchingParent"),
        ("infra", ", port: 9999", "a.example.com", "NoMatchingParent"),
        ("infra", ", sectionName: http", "a.other.com", "NoMatchingListenerHostname"),
        ("infra", ", sectionName: other", "a.other.com", "NotAllowedByListeners"),  # a Selector on an unknown label
    ],
)
def test_attachment_reasons(tmp_path, ns, extra, hosts, reason):
    _, result = compile_with(tmp_path, ROUTE.format(ns=ns, extra=extra, hosts=hosts))
    messages = " | ".join(d.message for d in result.diagnostics if d.severity == "warning")
    assert result.ok
    if ns == "other":  # allowedRoutes defaults to Same: a route of another namespace is not allowed
        assert "NotAllowedByListeners" in messages
    elif reason is None:
        assert "Accepted=False" not in messages and "ResolvedRefs=False" not in messages, messages
    else:
        assert reason in messages, messages


def test_selector_sees_only_the_namespace_name_label(tmp_path):
    _, result = compile_with(tmp_path, ROUTE.format(ns="infra", extra=", sectionName: other", hosts="a.com"))
    messages = " | ".join(d.message for d in result.diagnostics)
    assert "namespace labels are unknown without a cluster" in messages
    assert "NotAllowedByListeners" in messages


def test_generated_model(tmp_path):
    loaded, result = compile_with(tmp_path, ROUTE.format(ns="infra", extra=", sectionName: http", hosts="a.example.com"))
    listener = next(l for l in result.table.listeners if l.port == 80)
    vhosts = listener.route_config.virtual_hosts
    assert [v.domains for v in vhosts] == [("a.example.com",)]
    route = vhosts[0].routes[0]
    assert route.name == "infra.r.0.0" and route.clusters[0].cluster == "outbound|80||svc.infra.svc.cluster.local"
    # The HTTPS listener with a certificateRef is a TLS server with that Secret's folder as its credential.
    https = next(l for l in result.table.listeners if l.port == 443)
    assert https.filter_chains[0].tls.credential_name == "cert"


def test_unserved_class_is_skipped(tmp_path):
    _, result = compile_with(tmp_path, "", classes=("other",))
    assert result.ok and result.table.listeners == ()
    assert any("is not served here" in d.message for d in result.diagnostics)


def test_edge_route_names_the_httproute_rule(tmp_path, capsys):
    from edge.cli import main

    (tmp_path / "a.yaml").write_text(GATEWAY + "---\n" + ROUTE.format(ns="infra", extra="", hosts="a.example.com"))
    assert main(["route", str(tmp_path), "--port", "80", "--host", "a.example.com", "--path", "/x"]) == 0
    out = capsys.readouterr().out
    assert "matched HTTPRoute infra/r rules[0].matches[0]" in out and "a.yaml:" in out


ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled"


# conversion.go convertHTTPRoute: (retry, timeouts) → (route timeout, retry attempts, retryOn, perTryTimeout, backoff).
@pytest.mark.parametrize(
    "retry, timeouts, expected",
    [
        (None, None, (None, None)),
        ({}, None, (None, (2, ISTIO_RETRY_ON, None, None))),  # a stanza alone: Istio's default 2 attempts, no codes
        ({"codes": [500, 503], "attempts": 3, "backoff": "100ms"}, None, (None, (3, ISTIO_RETRY_ON + ",500,503", None, 0.1))),
        (None, {"request": "500ms"}, (0.5, None)),
        (None, {"request": "0s"}, (None, None)),  # 0 disables the timeout
        (None, {"backendRequest": "500ms"}, (0.5, None)),  # no retry stanza: backendRequest is the route timeout
        (None, {"request": "2s", "backendRequest": "1s"}, (1.0, None)),  # ... replacing request's
        ({"attempts": 2}, {"request": "2s", "backendRequest": "1s"}, (2.0, (2, ISTIO_RETRY_ON, 1.0, None))),  # per-try
        ({"attempts": 1}, {"backendRequest": "0s"}, (None, (1, ISTIO_RETRY_ON, None, None))),
    ],
)
def test_timeout_and_retries_as_istio(retry, timeouts, expected):
    rule = gw.HTTPRouteRule(
        retry=msgspec.convert(retry, gw.HTTPRouteRetry) if retry is not None else None,
        timeouts=msgspec.convert(timeouts, gw.HTTPRouteTimeouts) if timeouts is not None else None,
    )
    timeout, retries = timeout_and_retries(rule)
    got_retry = None
    if retries is not None:
        per_try = float(retries.per_try_timeout) if retries.per_try_timeout is not None else None
        backoff = float(retries.backoff) if retries.backoff is not None else None
        got_retry = (retries.attempts, retries.retry_on, per_try, backoff)
    assert (float(timeout) if timeout is not None else None, got_retry) == expected


MIXED = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw, namespace: infra, sectionName: http}]
  hostnames: [a.example.com]
  rules:
  - backendRefs: [{name: svc, namespace: infra, port: 80}, {name: gone, namespace: infra, port: 80}, {name: x, kind: Bucket, group: s3, port: 80}]
"""


def test_invalid_backends_keep_their_share_and_answer_500(tmp_path):
    """buildHTTPDestination keeps invalid backends (not found, unknown kind) as destinations without a cluster;
    route.go answers those with ClusterNotFoundResponseCode 500 on Gateway API routes (Envoy's default is 503)."""
    _, result = compile_with(tmp_path, MIXED)
    route = next(l for l in result.table.listeners if l.port == 80).route_config.virtual_hosts[0].routes[0]
    assert [(c.cluster, c.weight) for c in route.clusters] == [("outbound|80||svc.infra.svc.cluster.local", 1), ("", 1), ("", 1)]
    assert route.cluster_not_found_status == 500
    messages = " | ".join(d.message for d in result.diagnostics)
    assert "BackendNotFound" in messages and "InvalidKind" in messages
