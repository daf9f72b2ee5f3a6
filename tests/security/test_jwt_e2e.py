"""RequestAuthentication and JWT claim based routing end to end, on both HTTP/1 codecs.

Reproduces the istio.io tasks "Authentication Policy" (ingress part: the RequestAuthentication on the ingress
gateway with Istio's sample jwks and tokens; invalid token 401, no token 200, and the AuthorizationPolicy that
requires a token on a path) and "JWT claim based routing" (`@request.auth.claims.groups`), plus the token cases of
Envoy's jwt_authn (expired, not yet valid, wrong issuer, wrong audience, bad signature), the header operations
reaching the backend, and a jwksUri served on loopback whose keys rotate and whose server then fails.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

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
                body = b"broken" if server.failing else server.document().encode()
                self.send_response(500 if server.failing else 200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def document(self) -> str:
        keys = []
        for i, key in enumerate(self.keys):
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=f"k{id(key)}", alg="ES256", use="sig")
            keys.append(jwk)
        return json.dumps({"keys": keys})

    def token(self, key=None, **claims) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        body = {"iss": ROTATING_ISSUER, "sub": "robot", "aud": "edge-test", "exp": now + 3600, **claims}
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
