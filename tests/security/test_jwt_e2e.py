"""RequestAuthentication and JWT claim based routing end to end, on both HTTP/1 codecs.

Reproduces the istio.io tasks "Authentication Policy" (ingress part: the RequestAuthentication on the ingress
gateway with Istio's sample jwks and tokens; invalid token 401, no token 200, and the AuthorizationPolicy that
requires a token on a path) and "JWT claim based routing" (`@request.auth.claims.groups`), plus the token cases of
Envoy's jwt_authn (expired, not yet valid, wrong issuer, wrong audience, bad signature), the header operations
reaching the backend, a jwksUri served on loopback whose keys rotate and whose server then fails, an issuer-only
rule whose keys OpenID discovery finds on loopback (and one whose discovery fails), the CORS preflight that
jwt_authn lets through, and the fetcher's statistics on /config_dump and the metrics port.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.fixed_backend import FixedBackend
from tests.e2e.harness import EdgeProcess, free_ports, http_get
from tests.security.tools import CODECS, codec_args, static_service

pytestmark = pytest.mark.e2e

SAMPLES = Path(__file__).resolve().parent / "jwt_samples"
ISTIO_ISSUER = "testing@secure.istio.io"
ROTATING_ISSUER = "rotating@edge.test"
UNREACHABLE_ISSUER = "unreachable@edge.test"
HOST = "app.example.com"
ISTIO_KEY = (SAMPLES / "key.pem").read_bytes()
DEMO = (SAMPLES / "demo.jwt").read_text().strip()
GROUPS = (SAMPLES / "groups-scope.jwt").read_text().strip()


def istio_token(**claims) -> str:
    """A token of Istio's sample issuer signed with its published sample key (as its gen-jwt.py makes them)."""
    now = int(time.time())
    body = {"iss": ISTIO_ISSUER, "sub": ISTIO_ISSUER, "iat": now, "exp": now + 3600, **claims}
    kid = json.loads((SAMPLES / "jwks.json").read_text())["keys"][0]["kid"]
    return pyjwt.encode({k: v for k, v in body.items() if v is not None}, ISTIO_KEY, algorithm="RS256", headers={"kid": kid})


class JwksServer:
    """A JWKS endpoint on loopback whose keys the test rotates, or which answers 500."""

    def __init__(self):
        self.keys = [ec.generate_private_key(ec.SECP256R1())]
        self.failing = False
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits += 1
                status, body = 200, server.document().encode()
                if server.failing:
                    status, body = 500, b"broken"
                elif self.path == "/issuer/.well-known/openid-configuration":  # OpenID discovery of DISCOVERED_ISSUER
                    body = json.dumps({"issuer": server.issuer, "jwks_uri": f"http://127.0.0.1:{server.port}/discovered/jwks.json"}).encode()
                elif self.path.startswith("/nowhere/"):
                    status, body = 404, b"no such issuer"
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}/issuer"  # keys found by OpenID discovery
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def document(self) -> str:
        keys = []
        for i, key in enumerate(self.keys):
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=f"k{id(key)}", alg="ES256", use="sig")
            keys.append(jwk)
        return json.dumps({"keys": keys})

    def token(self, key=None, issuer=ROTATING_ISSUER, **claims) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body = {"iss": issuer, "sub": "robot", "aud": "edge-test", "exp": now + 3600, **claims}
        return pyjwt.encode(body, key, algorithm="ES256", headers={"kid": f"k{id(key)}"})

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def config(backend_port: int, jwks_port: int, closed_port: int) -> dict[str, str]:
    istio_jwks = (SAMPLES / "jwks.json").read_text().strip()
    return {
        "gw.yaml": """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
""",
        "se.yaml": static_service("backend.internal", backend_port),
        # "JWT claim based routing": /headers only for group1 members; the rest of the paths for everyone.
        "vs.yaml": f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app}}
spec:
  hosts: ["{HOST}"]
  gateways: [gw]
  http:
  - match:
    - uri: {{prefix: /headers}}
      headers:
        "@request.auth.claims.groups": {{exact: group1}}
    route: [{{destination: {{host: backend.internal}}}}]
  - match:
    - uri: {{prefix: /nested}}
      headers:
        "@request.auth.claims[team][name]": {{prefix: plat}}
    route: [{{destination: {{host: backend.internal}}}}]
  - match:
    - uri: {{prefix: /not-group1}}
      withoutHeaders:
        "@request.auth.claims.groups": {{exact: group1}}
    route: [{{destination: {{host: backend.internal}}}}]
  - match:
    - uri: {{prefix: /headers}}
    - uri: {{prefix: /nested}}
    - uri: {{prefix: /not-group1}}
    directResponse: {{status: 404}}
  - route: [{{destination: {{host: backend.internal}}}}]
""",
        # The authentication task's ingress RequestAuthentication, with the keys inline (the task's jwksUri is on
        # github), plus a loopback jwksUri and one that never answers.
        "ra.yaml": f"""\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt-example, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: "{ISTIO_ISSUER}"
    jwks: '{istio_jwks}'
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-foo, claim: foo}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: rotating, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: "{ROTATING_ISSUER}"
    jwksUri: "http://127.0.0.1:{jwks_port}/jwks.json"
    audiences: [edge-test]
    fromHeaders: [{{name: x-robot-token}}]
    forwardOriginalToken: true
  - issuer: "{UNREACHABLE_ISSUER}"
    jwksUri: "http://127.0.0.1:{closed_port}/jwks.json"
    timeout: 1s
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: discovered, namespace: istio-system}}
spec:
  jwtRules:
  - issuer: "http://127.0.0.1:{jwks_port}/issuer"
    fromHeaders: [{{name: x-discovered-token}}]
  - issuer: "http://127.0.0.1:{jwks_port}/nowhere"
    fromHeaders: [{{name: x-undiscovered-token}}]
""",
        # "Require a valid token" on one path (DENY without a request principal), as the task's per-path policy.
        "ap.yaml": """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/secure/*"]}}]
""",
    }


@pytest.fixture(scope="module")
def jwks_server():
    server = JwksServer()
    yield server
    server.close()


@pytest.fixture(scope="module", params=CODECS)
def gateway(request, tmp_path_factory, jwks_server):
    closed_port = free_ports(1)[0]
    with FixedBackend("be") as backend:
        conf = config(backend.port, jwks_server.port, closed_port)
        extra = (*codec_args(request.param), "--jwks-refresh-interval", "0.5")
        with EdgeProcess(tmp_path_factory.mktemp(f"jwt-{request.param}"), conf, gateway_ports=(80,), extra_args=extra) as edge:
            yield edge, backend


def get(edge, path: str, headers: dict | None = None):
    return http_get(edge.port(80), path, host=HOST, headers=headers)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_the_authentication_task_ingress_part(gateway):
    edge, backend = gateway
    assert get(edge, "/ip")[0] == 200  # no token: unauthenticated, allowed
    status, body, headers = get(edge, "/ip", bearer("deadbeef"))
    assert (status, body) == (401, b"Jwt is not in the form of Header.Payload.Signature")
    assert headers["www-authenticate"] == f'Bearer realm="http://{HOST}/ip", error="invalid_token"'
    backend.reset()
    status, _, _ = get(edge, "/ip?x=1", bearer(DEMO))
    assert status == 200
    seen = backend.requests()[-1]
    assert "authorization" not in seen.headers  # forwardOriginalToken: false
    assert json.loads(base64.urlsafe_b64decode(seen.headers["x-jwt-payload"] + "==="))["foo"] == "bar"
    assert seen.headers["x-jwt-foo"] == "bar" and seen.path == "/ip?x=1"


def test_a_token_in_the_query_is_removed_before_forwarding(gateway):
    edge, backend = gateway
    backend.reset()
    assert get(edge, f"/ip?a=1&access_token={DEMO}")[0] == 200
    assert backend.requests()[-1].path == "/ip?a=1"


def test_a_client_cannot_forge_the_output_headers(gateway):
    edge, backend = gateway
    backend.reset()
    assert get(edge, "/ip", {"x-jwt-foo": "forged", "x-jwt-payload": "forged"})[0] == 200
    assert "x-jwt-foo" not in backend.requests()[-1].headers and "x-jwt-payload" not in backend.requests()[-1].headers


@pytest.mark.parametrize(
    "claims, status, message",
    [
        ({"exp": int(time.time()) - 120}, 401, "Jwt is expired"),
        ({"nbf": int(time.time()) + 600}, 401, "Jwt not yet valid"),
        ({"iss": "someone@else"}, 401, "Jwt issuer is not configured"),
    ],
)
def test_invalid_tokens_are_refused(gateway, claims, status, message):
    edge, _ = gateway
    got, body, headers = get(edge, "/ip", bearer(istio_token(**claims)))
    assert (got, body.decode()) == (status, message)
    assert 'error="invalid_token"' in headers["www-authenticate"]


def test_bad_signature_wrong_audience_and_unfetched_keys(gateway, jwks_server):
    edge, _ = gateway
    forged = DEMO.rsplit(".", 1)[0] + "." + GROUPS.rsplit(".", 1)[1]
    assert get(edge, "/ip", bearer(forged))[:2] == (401, b"Jwt verification fails")
    assert get(edge, "/ip", {"x-robot-token": jwks_server.token(aud="someone-else")})[:2] == (403, b"Audiences in Jwt are not allowed")
    unreachable = pyjwt.encode({"iss": UNREACHABLE_ISSUER, "sub": "x"}, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    assert get(edge, "/ip", bearer(unreachable))[0] == 401  # its jwksUri never answered: its tokens fail


def test_claim_based_routing_task(gateway):
    edge, _ = gateway
    assert get(edge, "/headers")[0] == 404  # no token: no claims
    assert get(edge, "/headers", bearer(DEMO))[0] == 404  # no groups claim
    assert get(edge, "/headers", bearer(GROUPS))[0] == 200  # groups: [group1, group2]
    assert get(edge, "/nested", bearer(istio_token(team={"name": "platform"})))[0] == 200
    assert get(edge, "/nested", bearer(istio_token(team={"name": "web"})))[0] == 404
    assert get(edge, "/not-group1")[0] == 200
    assert get(edge, "/not-group1", bearer(GROUPS))[0] == 404


def test_authorization_policy_sees_the_principal(gateway):
    edge, _ = gateway
    assert get(edge, "/secure/x")[:2] == (403, b"RBAC: access denied")
    assert get(edge, "/secure/x", bearer(DEMO))[0] == 200


def test_forwarded_custom_header_token(gateway, jwks_server):
    edge, backend = gateway
    backend.reset()
    token = jwks_server.token()
    assert get(edge, "/ip", {"x-robot-token": token})[0] == 200
    assert backend.requests()[-1].headers["x-robot-token"] == token  # forwardOriginalToken: true


def test_jwks_uri_keys_rotate_and_survive_a_failing_server(gateway, jwks_server):
    edge, _ = gateway
    old = jwks_server.keys[0]
    assert get(edge, "/ip", {"x-robot-token": jwks_server.token(old)})[0] == 200
    new = ec.generate_private_key(ec.SECP256R1())
    mark = len(edge.log_text())
    jwks_server.keys = [new]
    edge.wait_for_log(r"generation \d+ published: JWKS keys changed", after=mark)
    edge.wait_for_log(r"is served by every worker", after=mark)
    assert get(edge, "/ip", {"x-robot-token": jwks_server.token(new)})[0] == 200
    assert get(edge, "/ip", {"x-robot-token": jwks_server.token(old)})[0] == 401
    mark = len(edge.log_text())
    jwks_server.failing = True
    try:
        edge.wait_for_log(r"jwks: .*fetch failed.*keeping the last good keys", after=mark)
        assert get(edge, "/ip", {"x-robot-token": jwks_server.token(new)})[0] == 200
    finally:
        jwks_server.failing = False
        jwks_server.keys = [old]
    edge.wait_for_log(r"generation \d+ published: JWKS keys changed", after=mark)
    # Both sources serve these keys (the jwksUri and the discovered issuer's jwks_uri), and each is refreshed on
    # its own schedule after the failures, so the first publication may carry only one of them: the next tests
    # start once both accept the old key again.
    wait_accepted(edge, {"x-robot-token": jwks_server.token(old)})
    wait_accepted(edge, {"x-discovered-token": jwks_server.token(old, issuer=jwks_server.issuer)})


def wait_accepted(edge, headers: dict, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (status := get(edge, "/ip", headers)[0]) != 200:
        assert time.monotonic() < deadline, f"still {status} after {timeout_s} s"
        time.sleep(0.1)


def test_openid_discovery_finds_the_keys_and_a_failed_one_refuses_every_token(gateway, jwks_server):
    edge, _ = gateway
    token = jwks_server.token(issuer=jwks_server.issuer)
    assert get(edge, "/ip", {"x-discovered-token": token})[0] == 200
    forged = token.rsplit(".", 1)[0] + "." + jwks_server.token(issuer=jwks_server.issuer, sub="other").rsplit(".", 1)[1]
    assert get(edge, "/ip", {"x-discovered-token": forged})[:2] == (401, b"Jwt verification fails")
    nowhere = f"http://127.0.0.1:{jwks_server.port}/nowhere"
    status, body, _ = get(edge, "/ip", {"x-undiscovered-token": jwks_server.token(issuer=nowhere)})
    assert (status, body) == (401, b"Jwks doesn't have key to match kid or alg from Jwt")  # no keys: closed, never open
    assert re.search(rf"jwks: {nowhere}/.well-known/openid-configuration: OpenID discovery failed: HTTP Error 404", edge.log_text())


def test_a_cors_preflight_with_an_invalid_token_is_not_authenticated(gateway):
    edge, backend = gateway
    preflight = {"Origin": "https://web.example", "Access-Control-Request-Method": "GET", **bearer("deadbeef")}
    backend.reset()
    assert http_get(edge.port(80), "/ip", host=HOST, method="OPTIONS", headers=preflight)[0] == 200  # bypass_cors_preflight
    assert backend.requests()[-1].method == "OPTIONS"
    not_preflight = {"Origin": "https://web.example", **bearer("deadbeef")}
    assert http_get(edge.port(80), "/ip", host=HOST, method="OPTIONS", headers=not_preflight)[0] == 401


def test_the_fetchers_statistics_on_config_dump_and_metrics(gateway, jwks_server):
    edge, _ = gateway
    dump = json.loads(http_get(edge.admin_port, "/config_dump")[1])["jwks"]
    discovered = dump["uris"][f"{jwks_server.issuer}/.well-known/openid-configuration"]
    assert discovered["discovery"] and discovered["jwks_uri"] == f"http://127.0.0.1:{jwks_server.port}/discovered/jwks.json"
    assert discovered["fetched"] and discovered["fetches"] >= 1 and discovered["last_success_at"] > 0
    unreachable_uri = next(u for u in dump["uris"] if u.endswith("/jwks.json") and f":{jwks_server.port}/" not in u)
    unreachable = dump["uris"][unreachable_uri]
    assert not unreachable["fetched"] and unreachable["failures"] >= 1 and unreachable["error"]
    assert dump["failures_total"] >= 2 and dump["fetches_total"] >= 4
    families = {f.name: f for f in text_string_to_metric_families(http_get(edge.metrics_port, "/stats/prometheus")[1].decode())}
    available = {s.labels["uri"]: s.value for s in families["edge_jwks_keys_available"].samples}
    assert available[f"{jwks_server.issuer}/.well-known/openid-configuration"] == 1.0
    assert available[unreachable_uri] == 0.0
    failures = {s.labels["uri"]: s.value for s in families["edge_jwks_fetch_failures"].samples}
    assert failures[f"http://127.0.0.1:{jwks_server.port}/nowhere/.well-known/openid-configuration"] >= 1
