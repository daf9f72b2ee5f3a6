"""RequestAuthentication in the compiler (edge/compiler/authentication.py), claim routing in the router, the
supervisor's JWKS fetching (edge/jwks.py) on a fake fetch, and `edge route --jwt` (edge/explain_jwt.py)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from prometheus_client.parser import text_string_to_metric_families

from edge import table
from edge.admin import config_dump
from edge.compiler.http_rules import routing_claim
from edge.explain import RouteExplainer, parse_route_request
from edge.jwks import JwksFetcher, Source, apply_jwks, jwks_sources, jwks_uris, openid_jwks_uri
from edge.loader import LoadResult, load_text
from edge.metrics import render_prometheus, sum_slots
from edge.readout import Readout
from edge.state import SupervisorState
from tests.edge.routing import GATEWAY_80, compile_text, compiled, messages
from workers.jwt import Auth
from workers.router import Router

SAMPLES = Path(__file__).resolve().parents[1] / "security" / "jwt_samples"
JWKS = (SAMPLES / "jwks.json").read_text().strip()
GROUPS = (SAMPLES / "groups-scope.jwt").read_text().strip()


def ra(rules: str, *, ns: str = "istio-system", name: str = "ra", extra: str = "") -> str:
    return f"""
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: {ns}}}
spec:
{extra}  jwtRules:
{rules}
"""


def test_rules_are_compiled_with_defaults_and_sorted_by_issuer():
    tbl = compiled(GATEWAY_80, ra(f"""  - issuer: z-issuer
    jwks: '{JWKS}'
    fromHeaders: [{{name: X-Token, prefix: "Bearer "}}]
    outputClaimToHeaders: [{{header: X-Sub, claim: sub}}]
  - issuer: a-issuer
    jwksUri: https://keys.example/jwks.json
    timeout: 2s
    spaceDelimitedClaims: [roles]
"""))
    first, second = tbl.jwt_rules
    assert (first.issuer, first.jwks_uri, first.fetch_timeout_s, first.jwks) == ("a-issuer", "https://keys.example/jwks.json", 2.0, "")
    assert first.space_delimited_claims == ("permission", "roles", "scope")
    assert second.from_headers == (table.JwtLocation(name="x-token", prefix="Bearer "),)
    assert second.output_claim_to_headers == (("x-sub", "sub"),) and second.policy == "istio-system/ra"


@pytest.mark.parametrize(
    "rule, message",
    [
        ("  - jwks: '{}'", "issuer or jwksUri must be non-empty string"),
        ("  - issuer: a\n    jwksUri: ftp://x/j", "scheme must be http or https"),
        ("  - issuer: a\n    jwks: 'nope'", "jwks parse error: Jwks is an invalid JSON"),
        ("  - issuer: a\n    audiences: ['']\n    jwksUri: https://k/j", "audience must be non-empty string"),
        ("  - issuer: a\n    jwksUri: https://k/j\n    fromHeaders: [{name: 'bad header'}]", "location header name"),
        ("  - issuer: a\n    jwksUri: https://k/j\n    fromParams: ['']", "location query must be non-empty string"),
        ("  - issuer: a\n    jwksUri: https://k/j\n    outputClaimToHeaders: [{header: x, claim: ''}]", "header and claim value must be non-empty"),
        ("  - issuer: a\n    jwksUri: https://k/j\n    timeout: 0s", "timeout must be at least 1ms"),
    ],
)
def test_invalid_rules_are_errors_with_their_path(rule, message):
    result = compile_text(GATEWAY_80, ra(rule))
    assert result.table is None
    assert any(message in m and "jwtRules" in m or message in m for m in messages(result, "error")), messages(result)


def test_unknown_fields_are_load_errors():
    result = LoadResult()
    load_text(ra("  - issuer: a\n    jwksUri: https://k/j\n    bogus: 1"), "x.yaml", result)
    assert any("$.spec.jwtRules[0]: unknown field 'bogus'" in str(d) for d in result.errors)


def test_warnings_inline_wins_issuer_only_and_private_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = json.dumps({"keys": [json.loads(RSAAlgorithm.to_jwk(key))]})
    result = compile_text(GATEWAY_80, ra(f"  - issuer: a\n    jwks: '{private}'\n    jwksUri: https://k/j\n  - issuer: b"))
    warnings = " | ".join(messages(result, "warning"))
    assert "inline jwks is used" in warnings and "private key material" in warnings
    assert "issuer 'b' is not an http(s) URL to discover keys from" in warnings and "always fail verification" in warnings
    assert [r.jwks_uri for r in result.table.jwt_rules] == ["", ""]


def test_an_issuer_only_rule_is_discovered_not_warned_about():
    result = compile_text(GATEWAY_80, ra("  - issuer: https://issuer.example/realm"))
    assert not messages(result, "warning") and not messages(result, "error")
    assert any("edge run discovers the keys from https://issuer.example/realm/.well-known/openid-configuration" in m for m in messages(result, "note"))
    assert jwks_sources(result.table) == {"https://issuer.example/realm/.well-known/openid-configuration": Source(5.0, True)}
    not_a_url = compiled(GATEWAY_80, ra("  - issuer: testing@secure.istio.io"))
    assert jwks_sources(not_a_url) == {} and apply_jwks(not_a_url, {}) is not_a_url


def test_applicability_is_the_authorization_policy_rule():
    other_ns = compiled(GATEWAY_80, ra(f"  - issuer: a\n    jwks: '{JWKS}'", ns="default"))
    assert other_ns.jwt_rules == ()
    selector = compiled(GATEWAY_80, ra(f"  - issuer: a\n    jwks: '{JWKS}'", extra="  selector: {matchLabels: {app: other}}\n"))
    assert selector.jwt_rules == ()
    selected = compiled(GATEWAY_80, ra(f"  - issuer: a\n    jwks: '{JWKS}'", extra="  selector: {matchLabels: {istio: ingressgateway}}\n"))
    assert len(selected.jwt_rules) == 1


@pytest.mark.parametrize(
    "where, extra",
    [
        ("default", ""),  # neither the gateway's nor the root namespace
        ("istio-system", "  selector: {matchLabels: {app: other}}\n"),
        ("istio-system", "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n"),
    ],
)
def test_a_request_authentication_that_does_not_apply_is_named_by_its_own_kind(where, extra):
    result = compile_text(GATEWAY_80, ra(f"  - issuer: a\n    jwks: '{JWKS}'", ns=where, extra=extra))
    notes = [d.message for d in result.diagnostics if "does not apply to this gateway" in d.message]
    assert notes and all(m.startswith(f"RequestAuthentication {where}/ra does not apply") for m in notes), notes
    assert not any("AuthorizationPolicy" in m for m in notes)


@pytest.mark.parametrize(
    "name, claim",
    [
        ("@request.auth.claims.groups", ("groups",)),
        ("@request.auth.claims.a.b", ("a", "b")),
        ("@request.auth.claims[a][b]", ("a", "b")),
        ("@request.auth.claims[a.b]", ("a.b",)),
        ("@request.auth.claims", ()),
        ("@request.auth.claims.", ()),
        ("@request.auth.claimsx", ()),
    ],
)
def test_routing_claim_is_istios_to_routing_claim(name, claim):
    assert routing_claim(name) == claim


CLAIM_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: claims}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match:
    - headers: {"@request.auth.claims.groups": {exact: group1}}
    directResponse: {status: 201}
  - match:
    - withoutHeaders: {"@request.auth.claims[org][id]": {prefix: "7"}}
    directResponse: {status: 202}
  - directResponse: {status: 203}
"""


class _Req:
    def __init__(self, claims=None):
        self.path, self.query, self.authority, self.method, self.scheme, self.headers = "/", "", "h", "GET", "http", []
        self.auth = Auth("iss", claims) if claims is not None else None


@pytest.mark.parametrize(
    "claims, status",
    [
        (None, 202),  # no token: no claim; withoutHeaders holds
        ({"groups": "group1"}, 201),
        ({"groups": ["x", "group1"]}, 201),  # a list holding a match (Istio's list matcher)
        ({"groups": ["group1x"], "org": {"id": "77"}}, 203),
        ({"groups": 1, "org": {"id": 7}}, 202),  # not a string: no match
    ],
)
def test_claim_routes_match_the_verified_claims(claims, status):
    tbl = compiled(GATEWAY_80, CLAIM_VS, ra(f"  - issuer: a\n    jwks: '{JWKS}'"))
    router = Router(tbl.listeners[0].route_config)
    vh = router.find_virtual_host("h")
    assert router.match(vh, _Req(claims)).direct.status == status


def test_claim_routing_without_request_authentication_is_warned_and_present_matches_refused():
    warned = compile_text(GATEWAY_80, CLAIM_VS)
    assert any("without any RequestAuthentication" in m for m in messages(warned, "warning"))
    bad = compile_text(GATEWAY_80, CLAIM_VS.replace("{exact: group1}", "{}"))
    assert any("needs exact, prefix or regex" in m for m in messages(bad, "error"))


def test_jwks_pure_part():
    tbl = compiled(GATEWAY_80, ra("  - issuer: a\n    jwksUri: https://k/j\n    timeout: 3s\n  - issuer: b\n    jwksUri: https://k/j"))
    assert jwks_uris(tbl) == {"https://k/j": 3.0}
    assert [r.jwks for r in apply_jwks(tbl, {"https://k/j": JWKS}).jwt_rules] == [JWKS, JWKS]
    plain = compiled(GATEWAY_80)
    assert apply_jwks(plain, {}) is plain


async def test_fetcher_keeps_the_last_good_document_and_reports_changes():
    answers = {"https://k/j": JWKS.encode()}

    def fetch(uri, timeout_s):
        answer = answers[uri]
        if isinstance(answer, Exception):
            raise answer
        return answer

    tbl = compiled(GATEWAY_80, ra("  - issuer: a\n    jwksUri: https://k/j"))
    fetcher = JwksFetcher(fetch, refresh_s=10.0)
    published = await fetcher.resolve_new(tbl)
    assert published.jwt_rules[0].jwks == JWKS
    fetcher.follow(tbl)
    answers["https://k/j"] = OSError("connection refused")
    assert not await fetcher._fetch_all({"https://k/j": 1.0})
    assert fetcher.apply(tbl).jwt_rules[0].jwks == JWKS and "refused" in fetcher.errors["https://k/j"]
    answers["https://k/j"] = b'{"keys": []}'  # not usable: also a failure
    assert not await fetcher._fetch_all({"https://k/j": 1.0})
    other = json.dumps({"keys": [{**json.loads(JWKS)["keys"][0], "kid": "rotated"}]})
    answers["https://k/j"] = other.encode()
    assert await fetcher._fetch_all({"https://k/j": 1.0})
    assert fetcher.apply(tbl).jwt_rules[0].jwks == other and not fetcher.errors


ISSUER = "https://issuer.example"
OPENID = ISSUER + "/.well-known/openid-configuration"


def openid(jwks_uri) -> bytes:
    return json.dumps({"issuer": ISSUER, "jwks_uri": jwks_uri}).encode()


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"not json", "OpenID configuration is not JSON"),
        (b"[]", "invalid jwks_uri None"),
        (b'{"jwks_uri": 7}', "invalid jwks_uri 7"),
        (b'{"jwks_uri": "file:///etc/passwd"}', "scheme must be http or https"),
    ],
)
def test_openid_configuration_without_a_usable_jwks_uri(body, problem):
    with pytest.raises(ValueError, match=problem):
        openid_jwks_uri(body)


async def test_openid_discovery_fetches_the_jwks_uri_it_names_and_follows_it():
    other = json.dumps({"keys": [{**json.loads(JWKS)["keys"][0], "kid": "rotated"}]})
    answers: dict[str, object] = {OPENID: openid("https://keys.example/a"), "https://keys.example/a": JWKS.encode(), "https://keys.example/b": other.encode()}
    asked = []

    def fetch(uri, timeout_s):
        asked.append((uri, timeout_s))
        answer = answers[uri]
        if isinstance(answer, Exception):
            raise answer
        return answer

    tbl = compiled(GATEWAY_80, ra(f"  - issuer: {ISSUER}\n    timeout: 2s"))
    fetcher = JwksFetcher(fetch, refresh_s=10.0)
    published = await fetcher.resolve_new(tbl)
    assert published.jwt_rules[0].jwks == JWKS and published.jwt_rules[0].jwks_uri == ""
    assert asked == [(OPENID, 2.0), ("https://keys.example/a", 2.0)]
    fetcher.follow(tbl)
    answers[OPENID] = openid("https://keys.example/b")  # the issuer moved its keys: the next refresh follows
    assert await fetcher._fetch_all(fetcher.sources)
    assert fetcher.apply(tbl).jwt_rules[0].jwks == other
    answers[OPENID] = OSError("connection refused")  # discovery fails: the last good keys stay
    assert not await fetcher._fetch_all(fetcher.sources)
    assert fetcher.apply(tbl).jwt_rules[0].jwks == other and "refused" in fetcher.errors[OPENID]
    answers[OPENID] = openid("https://keys.example/a")
    answers["https://keys.example/a"] = b'{"keys": []}'  # discovered, but its JWKS is not usable: a failure too
    assert not await fetcher._fetch_all(fetcher.sources)
    assert fetcher.errors[OPENID].startswith("its jwks_uri https://keys.example/a: not a usable JWKS")
    stats = fetcher.statistics()["uris"][OPENID]
    assert stats["discovery"] and stats["jwks_uri"] == "https://keys.example/a" and stats["fetched"]
    assert (stats["fetches"], stats["failures"]) == (4, 2) and stats["last_success_at"] > 0 and "not a usable JWKS" in stats["error"]


async def test_openid_discovery_that_never_succeeds_leaves_the_rule_without_keys():
    def fetch(uri, timeout_s):
        raise OSError("HTTP Error 404: Not Found")

    lines = []
    tbl = compiled(GATEWAY_80, ra(f"  - issuer: {ISSUER}"))
    fetcher = JwksFetcher(fetch, log=lines.append)
    published = await fetcher.resolve_new(tbl)
    assert published.jwt_rules[0].jwks == ""  # the worker has no key: this issuer's tokens fail, never pass
    assert lines == [f"jwks: {OPENID}: OpenID discovery failed: HTTP Error 404: Not Found; its tokens fail verification until a fetch succeeds"]
    fetcher.follow(tbl)
    assert fetcher.statistics() == {
        "uris": {OPENID: {"discovery": True, "jwks_uri": "", "fetched": False, "fetches": 1, "failures": 1, "last_success_at": 0.0, "error": "HTTP Error 404: Not Found"}},
        "fetches_total": 1,
        "failures_total": 1,
    }


def explain(tbl, token, path="/"):
    out = io.StringIO()
    args = SimpleNamespace(port=80, scheme=None, sni=None, jwt=token, gateway_labels=None, cluster_domain="cluster.local")
    routed = RouteExplainer(tbl, [], args, out).explain(parse_route_request("GET", "h", path, []))
    return routed, out.getvalue()


def test_edge_route_with_a_token():
    tbl = compiled(GATEWAY_80, CLAIM_VS, ra(f"  - issuer: testing@secure.istio.io\n    jwks: '{JWKS}'"))
    routed, text = explain(tbl, GROUPS)
    assert routed and "principal testing@secure.istio.io/testing@secure.istio.io" in text and "201" in text
    routed, text = explain(tbl, "a.b")
    assert not routed and "401 Jwt is not in the form" in text
    routed, text = explain(tbl, None)
    assert routed and "unauthenticated" in text and "202" in text
    uri = compiled(GATEWAY_80, CLAIM_VS, ra("  - issuer: testing@secure.istio.io\n    jwksUri: https://k/j"))
    routed, text = explain(uri, GROUPS)
    assert routed and "signature is not checked here" in text and "201" in text
    not_discoverable = compiled(GATEWAY_80, CLAIM_VS, ra("  - issuer: testing@secure.istio.io"))
    routed, text = explain(not_discoverable, GROUPS)
    assert not routed and "401 Jwks doesn't have key" in text


def test_edge_route_with_a_token_of_a_discovered_issuer():
    payload = json.loads(base64.urlsafe_b64decode(GROUPS.split(".")[1] + "=="))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = pyjwt.encode({**payload, "iss": ISSUER}, key, algorithm="RS256")
    routed, text = explain(compiled(GATEWAY_80, CLAIM_VS, ra(f"  - issuer: {ISSUER}")), token)
    assert routed and "jwksUri or OpenID discovery" in text and f"principal {ISSUER}/" in text and "201" in text


async def test_fetcher_statistics_reach_config_dump_and_the_metrics_port():
    def fetch(uri, timeout_s):
        if uri == "https://k/down":
            raise OSError("connection refused")
        return JWKS.encode()

    tbl = compiled(GATEWAY_80, ra("  - issuer: a\n    jwksUri: https://k/j\n  - issuer: b\n    jwksUri: https://k/down"))
    fetcher = JwksFetcher(fetch)
    await fetcher.resolve_new(tbl)
    fetcher.follow(tbl)
    readout = Readout(SupervisorState(config_paths=(), workers=1))
    assert config_dump(readout)["jwks"] == {"uris": {}, "fetches_total": 0, "failures_total": 0}
    assert "edge_jwks" not in render_prometheus(sum_slots([]), readout.supervisor_view())  # no RequestAuthentication
    readout.jwks = fetcher
    dump = config_dump(readout)["jwks"]
    assert (dump["fetches_total"], dump["failures_total"]) == (2, 1)
    assert dump["uris"]["https://k/down"]["error"] == "connection refused" and dump["uris"]["https://k/j"]["fetched"]
    families = {f.name: f for f in text_string_to_metric_families(render_prometheus(sum_slots([]), readout.supervisor_view()))}
    values = {(f, s.labels["uri"]): s.value for f in ("edge_jwks_fetches", "edge_jwks_fetch_failures", "edge_jwks_keys_available") for s in families[f].samples}
    assert values == {
        ("edge_jwks_fetches", "https://k/down"): 1.0, ("edge_jwks_fetches", "https://k/j"): 1.0,
        ("edge_jwks_fetch_failures", "https://k/down"): 1.0, ("edge_jwks_fetch_failures", "https://k/j"): 0.0,
        ("edge_jwks_keys_available", "https://k/down"): 0.0, ("edge_jwks_keys_available", "https://k/j"): 1.0,
    }  # fmt: skip
    success = {s.labels["uri"]: s.value for s in families["edge_jwks_last_success_timestamp_seconds"].samples}
    assert success["https://k/down"] == 0.0 and success["https://k/j"] == dump["uris"]["https://k/j"]["last_success_at"] > 0
