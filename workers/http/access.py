# Access control of one request, pure: values in, a verdict out. Istio's gateway runs its HTTP filters in the
# order jwt_authn (RequestAuthentication) → rbac (AuthorizationPolicy: CUSTOM, DENY, ALLOW; AUDIT only logs) →
# router, so a request is authenticated and authorized before any route is looked at: a denied request with no
# route is 403, not 404, and claim-based routing sees the verified claims.
#
# Rules:
# - `check_access` takes the compiled policies from the table snapshot, the request's facts (RequestInfo) and the
#   connection's (ConnectionFacts), and returns None (go on) or the LocalReply that refuses the request. It may set
#   `req.auth` (the verified JWT: principal, claims) for the router and the forwarder.
# - Nothing here parses config: CIDRs, path patterns and keys were compiled at table load.
from __future__ import annotations

import time
from typing import NamedTuple

from workers import headers as hdr
from workers.http.replies import LocalReply


class ConnectionFacts(NamedTuple):
    """What the connection knows that a policy may ask about (Istio's source.ip, destination.port,
    connection.sni, source.principal)."""

    peer_ip: bytes  # the direct peer, or the PROXY protocol's source when the listener takes it
    port: int  # the gateway port the request came in on
    sni: str
    client_cert: bytes | None


def check_access(snapshot, req, conn: ConnectionFacts) -> LocalReply | None:
    """RequestAuthentication, then AuthorizationPolicy (see the rules above)."""
    if snapshot.authn is not None:
        refused = authenticate(snapshot.authn, req, time.time())
        if refused is not None:
            return refused
    return None


JWT_DETAILS = "jwt_authn_access_denied{%s}"  # Envoy's response code details, spaces as "_"
JWT_URI_MAX = 256  # Envoy's jwt_authn MaximumUriLength: the realm's path is cut there


def authenticate(authn, req, now: float) -> LocalReply | None:
    """RequestAuthentication (workers/jwt.py): sets req.auth; the token's removal and the output headers go into
    req.headers / req.query, which are what is forwarded. A CORS preflight is not authenticated (Istio sets
    jwt_authn's bypass_cors_preflight)."""
    if req.method == "OPTIONS" and hdr.header_value(req.headers, b"origin") and hdr.header_value(req.headers, b"access-control-request-method"):
        return None
    outcome = authn.authenticate(req.headers, req.query, now)
    req.headers = outcome.headers
    if outcome.query is not req.query:
        req.query = outcome.query
        req.query_bytes = outcome.query.encode("latin-1")
    refusal = outcome.refusal
    if refusal is None:
        req.auth = outcome.auth
        return None
    path = req.path + ("?" + req.query if req.query else "")
    realm = f"{req.scheme}://{req.authority}{path[:JWT_URI_MAX]}"
    body = refusal.message.encode()
    return LocalReply(refusal.status, body, "-", JWT_DETAILS % refusal.message.replace(" ", "_"), headers=((b"www-authenticate", refusal.www_authenticate(realm)),))
