"""workers/http/access.py: RequestAuthentication at the request seam. Istio sets jwt_authn's bypass_cors_preflight,
so a CORS preflight (OPTIONS with a non-empty Origin and Access-Control-Request-Method, Envoy's
isCorsPreflightRequest) is not authenticated: an invalid token does not refuse it, and nothing is verified or removed."""

from __future__ import annotations

import pytest

from tests.workers.test_jwt import ISS, NOW, rule, token
from workers.http.access import authenticate
from workers.jwt import Authenticator


class Req:
    def __init__(self, method: str, headers: list):
        self.method = method
        self.headers = headers
        self.query = ""
        self.path = "/ip"
        self.scheme = "http"
        self.authority = "app.example.com"
        self.auth = None


AUTHN = Authenticator((rule(),))
ORIGIN = (b"origin", b"https://web.example")
ACRM = (b"access-control-request-method", b"GET")
BAD = (b"authorization", b"Bearer deadbeef")


@pytest.mark.parametrize(
    "method, headers, refused",
    [
        ("OPTIONS", [ORIGIN, ACRM, BAD], False),  # a preflight: bypassed whatever its token
        ("OPTIONS", [ACRM, BAD], True),  # no Origin: not a preflight
        ("OPTIONS", [(b"origin", b""), ACRM, BAD], True),  # an empty Origin: not a preflight (Envoy: !empty())
        ("OPTIONS", [ORIGIN, BAD], True),  # no Access-Control-Request-Method
        ("OPTIONS", [ORIGIN, (b"access-control-request-method", b""), BAD], True),
        ("GET", [ORIGIN, ACRM, BAD], True),  # the CORS headers on another method do not bypass
    ],
)
def test_cors_preflight_bypasses_authentication(method, headers, refused):
    req = Req(method, list(headers))
    reply = authenticate(AUTHN, req, NOW)
    assert (reply is not None) == refused
    if refused:
        assert (reply.status, reply.body) == (401, b"Jwt is not in the form of Header.Payload.Signature")
    else:
        assert req.auth is None and BAD in req.headers  # not verified, the token left as it came


def test_a_preflight_with_a_valid_token_is_not_authenticated_either():
    good = (b"authorization", b"Bearer " + token().encode())
    preflight = Req("OPTIONS", [ORIGIN, ACRM, good])
    assert authenticate(AUTHN, preflight, NOW) is None and preflight.auth is None and good in preflight.headers
    request = Req("GET", [good])
    assert authenticate(AUTHN, request, NOW) is None and request.auth.principal == f"{ISS}/alice"
