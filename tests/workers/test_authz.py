# AuthorizationPolicy, compiled (edge/compiler/authorization.py) and evaluated (workers/authz.py), table-driven: the
# cases mirror Istio's authz builder and model tests where they apply to a gateway (pilot/pkg/security/authz/builder
# testdata: allow-empty-rule, allow-nil-rule, deny-empty-rule, deny-and-allow, audit; model generator tests for
# requestPrincipals, claims, paths, hosts), plus Istio's validation and attachment rules.
from __future__ import annotations

import pytest

from edge.errors import ERROR, WARNING
from tests.edge.routing import compile_text, messages
from workers.authz import Authorizer, Facts, authorize

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
metadata: {name: echo, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
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


def policy(spec: str, name: str = "p", namespace: str = "istio-system") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n"


def authorizer(*policies: str, **kw) -> Authorizer:
    result = compile_text(GATEWAY, *policies, **kw)
    assert result.table is not None, messages(result)
    assert result.table.authorization is not None
    return Authorizer(result.table.authorization)


class Auth:
    def __init__(self, claims):
        self.claims = claims
        self.principal = f"{claims.get('iss')}/{claims.get('sub')}"


def http(peer="10.0.0.1", remote=None, host="app.example.com", method="GET", path="/", headers=(), auth=None, port=80, principal="", sni=""):
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers]
    return Facts(peer, remote or peer, "127.0.0.1", port, sni, principal, host=host, method=method, path=path, headers=hdrs, auth=Auth(auth) if auth is not None else None)


def tcp(peer="10.0.0.1", port=31400, principal=""):
    return Facts(peer, peer, "127.0.0.1", port, "", principal)


# (name, policies, facts, allowed, deciding policy id)
CASES = [
    ("allow-ip-block", [policy('action: ALLOW\nrules:\n- from:\n  - source:\n      ipBlocks: ["1.2.3.4", "5.6.7.0/24"]')], http("5.6.7.99"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("allow-ip-block-miss", [policy('action: ALLOW\nrules:\n- from:\n  - source:\n      ipBlocks: ["1.2.3.4", "5.6.7.0/24"]')], http("5.6.8.1"), False, "none"),
    ("remote-ip-uses-client", [policy('action: ALLOW\nrules:\n- from:\n  - source:\n      remoteIpBlocks: ["1.2.3.4"]')], http("10.0.0.1", remote="1.2.3.4"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("ip-block-ignores-client", [policy('action: ALLOW\nrules:\n- from:\n  - source:\n      ipBlocks: ["1.2.3.4"]')], http("10.0.0.1", remote="1.2.3.4"), False, "none"),
    ("ipv6-cidr", [policy('action: DENY\nrules:\n- from:\n  - source:\n      ipBlocks: ["2001:db8::/32"]')], http("2001:db8::5"), False, "ns[istio-system]-policy[p]-rule[0]"),
    ("not-ip-blocks", [policy('action: DENY\nrules:\n- from:\n  - source:\n      notIpBlocks: ["10.0.0.0/8"]')], http("10.9.9.9"), True, ""),
    # allow-empty-rule: `rules: [{}]` matches everything; allow-nil-rule / spec {}: an ALLOW that allows nothing.
    ("allow-empty-rule", [policy("action: ALLOW\nrules:\n- {}")], http(), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("allow-empty-spec-denies-all", [policy("{}")], http(), False, "none"),
    ("deny-empty-rule", [policy("action: DENY\nrules:\n- {}")], http(), False, "ns[istio-system]-policy[p]-rule[0]"),
    # deny-and-allow: DENY first, whatever ALLOW says.
    ("deny-before-allow", [policy("action: ALLOW\nrules:\n- {}", "a"), policy('action: DENY\nrules:\n- to:\n  - operation:\n      methods: ["GET"]', "d")], http(method="GET"), False, "ns[istio-system]-policy[d]-rule[0]"),
    ("allow-when-deny-misses", [policy("action: ALLOW\nrules:\n- {}", "a"), policy('action: DENY\nrules:\n- to:\n  - operation:\n      methods: ["GET"]', "d")], http(method="POST"), True, "ns[istio-system]-policy[a]-rule[0]"),
    ("audit-never-decides", [policy("action: AUDIT\nrules:\n- {}")], http(), True, ""),
    # istio.io authz-deny: DENY GET unless x-token is admin; ALLOW /ip only.
    ("deny-get-without-admin-token", [policy('action: DENY\nrules:\n- to:\n  - operation:\n      methods: ["GET"]\n  when:\n  - key: request.headers[x-token]\n    notValues: ["admin"]')], http(headers=[("x-token", "guest")]), False, "ns[istio-system]-policy[p]-rule[0]"),
    ("deny-get-missing-header", [policy('action: DENY\nrules:\n- to:\n  - operation:\n      methods: ["GET"]\n  when:\n  - key: request.headers[x-token]\n    notValues: ["admin"]')], http(), False, "ns[istio-system]-policy[p]-rule[0]"),
    ("get-with-admin-token", [policy('action: DENY\nrules:\n- to:\n  - operation:\n      methods: ["GET"]\n  when:\n  - key: request.headers[x-token]\n    notValues: ["admin"]')], http(headers=[("X-Token", "admin")]), True, ""),
    ("paths-prefix", [policy('rules:\n- to:\n  - operation:\n      paths: ["/api/*"]')], http(path="/api/v1"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("paths-suffix", [policy('rules:\n- to:\n  - operation:\n      paths: ["*/status"]')], http(path="/x/status"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("paths-exact-miss", [policy('rules:\n- to:\n  - operation:\n      paths: ["/ip"]')], http(path="/ip/x"), False, "none"),
    ("path-template-one", [policy('rules:\n- to:\n  - operation:\n      paths: ["/foo/{*}"]')], http(path="/foo/bar"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("path-template-one-no-deeper", [policy('rules:\n- to:\n  - operation:\n      paths: ["/foo/{*}"]')], http(path="/foo/bar/baz"), False, "none"),
    ("path-template-any", [policy('rules:\n- to:\n  - operation:\n      paths: ["/foo/{*}/bar/{**}"]')], http(path="/foo/buzz/bar/baz"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("hosts-case-insensitive", [policy('rules:\n- to:\n  - operation:\n      hosts: ["App.Example.com"]')], http(host="app.EXAMPLE.com"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("hosts-port-is-part-of-authority", [policy('rules:\n- to:\n  - operation:\n      hosts: ["app.example.com"]')], http(host="app.example.com:8080"), False, "none"),
    ("hosts-suffix", [policy('rules:\n- to:\n  - operation:\n      hosts: ["*.example.com"]')], http(host="app.example.com"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("ports", [policy('rules:\n- to:\n  - operation:\n      ports: ["80"]')], http(port=80), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("fields-and", [policy('rules:\n- to:\n  - operation:\n      methods: ["GET"]\n      paths: ["/a"]')], http(method="GET", path="/b"), False, "none"),
    ("rules-or", [policy('rules:\n- to:\n  - operation:\n      paths: ["/a"]\n- to:\n  - operation:\n      paths: ["/b"]')], http(path="/b"), True, "ns[istio-system]-policy[p]-rule[1]"),
    ("request-principal-any-needs-jwt", [policy('rules:\n- from:\n  - source:\n      requestPrincipals: ["*"]')], http(), False, "none"),
    ("request-principal-exact", [policy('rules:\n- from:\n  - source:\n      requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]')], http(auth={"iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io"}), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("request-principal-issuer-prefix", [policy('rules:\n- from:\n  - source:\n      requestPrincipals: ["https://issuer/*"]')], http(auth={"iss": "https://issuer", "sub": "u1"}), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("not-request-principal-without-jwt", [policy('action: DENY\nrules:\n- from:\n  - source:\n      notRequestPrincipals: ["*"]')], http(), False, "ns[istio-system]-policy[p]-rule[0]"),
    ("claim-list", [policy('rules:\n- when:\n  - key: request.auth.claims[groups]\n    values: ["group1"]')], http(auth={"iss": "i", "sub": "s", "groups": ["group1", "group2"]}), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("claim-nested", [policy('rules:\n- when:\n  - key: request.auth.claims[nested][key1]\n    values: ["valueA"]')], http(auth={"iss": "i", "sub": "s", "nested": {"key1": "valueA"}}), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("claim-number-never-matches", [policy('rules:\n- when:\n  - key: request.auth.claims[n]\n    values: ["1"]')], http(auth={"iss": "i", "sub": "s", "n": 1}), False, "none"),
    ("audiences", [policy('rules:\n- when:\n  - key: request.auth.audiences\n    values: ["app"]')], http(auth={"iss": "i", "sub": "s", "aud": ["x", "app"]}), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("principal-from-certificate", [policy('rules:\n- from:\n  - source:\n      principals: ["cluster.local/ns/foo/sa/client"]')], http(principal="spiffe://cluster.local/ns/foo/sa/client"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("principal-without-certificate", [policy('rules:\n- from:\n  - source:\n      principals: ["*"]')], http(), False, "none"),
    ("namespaces-from-spiffe", [policy('rules:\n- from:\n  - source:\n      namespaces: ["foo"]')], http(principal="spiffe://cluster.local/ns/foo/sa/client"), True, "ns[istio-system]-policy[p]-rule[0]"),
    ("sni", [policy('action: DENY\nrules:\n- when:\n  - key: connection.sni\n    values: ["*.internal"]')], http(sni="db.internal"), False, "ns[istio-system]-policy[p]-rule[0]"),
    # TCP: ALLOW rules with HTTP attributes are skipped; DENY rules lose them (deny more).
    ("tcp-allow-http-rule-skipped", [policy('rules:\n- to:\n  - operation:\n      methods: ["GET"]')], tcp(), False, "none"),
    ("tcp-deny-http-fields-dropped", [policy('action: DENY\nrules:\n- to:\n  - operation:\n      paths: ["/admin"]')], tcp(), False, "ns[istio-system]-policy[p]-rule[0]"),
    ("tcp-deny-keeps-l4-fields", [policy('action: DENY\nrules:\n- from:\n  - source:\n      ipBlocks: ["9.9.9.9"]\n  to:\n  - operation:\n      paths: ["/admin"]')], tcp("10.0.0.1"), True, ""),
    ("tcp-allow-ip", [policy('rules:\n- from:\n  - source:\n      ipBlocks: ["10.0.0.0/8"]')], tcp("10.1.2.3"), True, "ns[istio-system]-policy[p]-rule[0]"),
]


@pytest.mark.parametrize(("policies", "facts", "allowed", "decider"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policies_decide_as_istio(policies, facts, allowed, decider):
    authz = authorizer(*policies)
    filters = authz.tcp if facts.method is None else authz.http
    verdict = authorize(filters, facts)
    assert verdict.allowed is allowed
    assert verdict.policy == decider


def test_audit_is_reported_without_deciding():
    verdict = authorize(authorizer(policy("action: AUDIT\nrules:\n- {}")).http, http())
    assert verdict.allowed and verdict.audited == ("ns[istio-system]-policy[p]-rule[0]",)


def test_a_hundred_cidrs_merge_into_ranges():
    blocks = ", ".join(f'"10.{i}.0.0/16"' for i in range(100))
    result = compile_text(GATEWAY, policy(f"rules:\n- from:\n  - source:\n      ipBlocks: [{blocks}]"))
    cond = result.table.authorization.http[0].rules[0].principals[0][0]
    assert cond.cidrs.v4 == ((int.from_bytes(bytes([10, 0, 0, 0]), "big"), int.from_bytes(bytes([10, 99, 255, 255]), "big")),)


# (name, policies, compile options, severity, message fragment, $.path)
DIAGNOSTICS = [
    ("custom", [policy('action: CUSTOM\nprovider: {name: ext}\nrules:\n- {}')], {}, ERROR, "CUSTOM", "$.spec.action"),
    ("deny-without-rules", [policy("action: DENY")], {}, ERROR, "DENY action without `rules`", "$.spec.action"),
    ("experimental-key", [policy('rules:\n- when:\n  - key: experimental.envoy.filters.a[b]\n    values: ["x"]')], {}, ERROR, "Envoy filter metadata", "$.spec.rules[0].when[0].key"),
    ("unknown-key", [policy('rules:\n- when:\n  - key: source.color\n    values: ["x"]')], {}, ERROR, "unknown attribute", "$.spec.rules[0].when[0].key"),
    ("bad-cidr", [policy('rules:\n- from:\n  - source:\n      ipBlocks: ["1.2.3.400"]')], {}, ERROR, "bad IP address", "$.spec.rules[0].from[0].source.ipBlocks"),
    ("bad-port", [policy('rules:\n- to:\n  - operation:\n      ports: ["http"]')], {}, ERROR, "bad port", "$.spec.rules[0].to[0].operation.ports"),
    ("bad-template", [policy('rules:\n- to:\n  - operation:\n      paths: ["/{**}/foo/{*}"]')], {}, ERROR, "path template", "$.spec.rules[0].to[0].operation.paths"),
    ("empty-source", [policy("rules:\n- from:\n  - source: {}")], {}, ERROR, "must not be empty", "$.spec.rules[0].from[0].source"),
    ("selector-and-target", [policy("selector: {matchLabels: {a: b}}\ntargetRefs: [{kind: Gateway, name: gw}]\nrules:\n- {}")], {}, ERROR, "only one of", "$.spec"),
    ("other-namespace", [policy("rules:\n- {}", namespace="foo")], {}, WARNING, "does not apply", "$.spec"),
    ("selector-misses", [policy("selector: {matchLabels: {app: istio-ingressgateway}}\nrules:\n- {}")], {}, WARNING, "not among --gateway-labels", "$.spec.selector.matchLabels"),
    ("target-ref-on-istio-gateway", [policy("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\nrules:\n- {}")], {}, WARNING, "Kubernetes Gateway API", "$.spec.targetRefs"),
    ("tcp-allow-http", [policy('rules:\n- to:\n  - operation:\n      paths: ["/"]')], {}, WARNING, "skipped", "$.spec.rules[0]"),
]


@pytest.mark.parametrize(("policies", "options", "severity", "fragment", "path"), [c[1:] for c in DIAGNOSTICS], ids=[c[0] for c in DIAGNOSTICS])
def test_diagnostics_name_the_field(policies, options, severity, fragment, path):
    result = compile_text(GATEWAY, *policies, **options)
    found = [d for d in result.diagnostics if d.severity == severity and fragment in d.message]
    assert found, messages(result)
    assert found[0].path == path
    assert (result.table is None) is (severity == ERROR)


@pytest.mark.parametrize(
    ("spec", "labels", "namespace", "applies"),
    [
        ("selector: {matchLabels: {app: istio-ingressgateway}}", {"istio": "ingressgateway", "app": "istio-ingressgateway"}, "istio-system", True),
        ("{}", {"istio": "ingressgateway"}, "istio-system", True),  # root namespace, no selector: mesh-wide
        ("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: web}]", {"gateway.networking.k8s.io/gateway-name": "web"}, "istio-system", True),
        ("targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}]", {"gateway.networking.k8s.io/gateway-name": "web"}, "istio-system", False),
        ("{}", {"istio": "ingressgateway"}, "foo", True),  # the gateway's namespace (--gateway-namespace foo)
    ],
)
def test_which_policies_apply(spec, labels, namespace, applies):
    text = policy(spec + "\nrules:\n- {}" if spec != "{}" else "rules:\n- {}", namespace=namespace)
    gateway = GATEWAY.replace("{istio: ingressgateway}", "{}")
    result = compile_text(gateway, text, labels=labels, gateway_namespace="foo" if namespace == "foo" else "istio-system")
    assert result.table is not None, messages(result)
    assert (result.table.authorization is not None) is applies


def test_peer_authentication_and_envoy_filter_are_warned_about():
    extra = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ef, namespace: istio-system}
spec:
  configPatches: []
"""
    result = compile_text(GATEWAY, extra)
    warnings = messages(result, WARNING)
    assert any("PeerAuthentication istio-system/default is not enforced" in m for m in warnings)
    assert any("EnvoyFilter istio-system/ef is not applied" in m for m in warnings)
