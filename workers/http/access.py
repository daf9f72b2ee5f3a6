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
from workers.authz import Authorizer, Facts, authorize, rbac_counts
from workers.http.replies import LOCAL_REPLIES, LocalReply


class ConnectionFacts(NamedTuple):
    """What the connection knows that a policy may ask about (Istio's source.ip, destination.port,
    connection.sni, source.principal)."""

    peer_ip: bytes  # the direct peer, or the PROXY protocol's source when the listener takes it
    port: int  # the local port the connection came in on (the PROXY protocol's destination when taken): destination.port
    sni: str
    client_cert: bytes | None
    local_ip: bytes = b""  # destination.ip (likewise)
    principal: str = ""  # the verified client certificate's URI SAN (else DNS SAN, else subject): source.principal


def check_access(snapshot, req, conn: ConnectionFacts, log=None) -> LocalReply | None:
    """RequestAuthentication, then AuthorizationPolicy (see the rules above). `log` (the request's RequestLog)
    gets the RBAC filters' counts: the stats and the AUDIT filter's access_log_hint read them."""
    if snapshot.authn is not None:
        refused = authenticate(snapshot.authn, req, time.time())
        if refused is not None:
            return refused
    if snapshot.authz is not None:
        return authorize_request(snapshot.authz, req, conn, log)
    return None


def request_facts(req, conn: ConnectionFacts) -> Facts:
    """What AuthorizationPolicy may ask of this request: remote.ip is the trusted client address (X-Forwarded-For
    hops / PROXY protocol, workers/headers.forwarded_for), source.ip the direct peer."""
    return Facts(
        conn.peer_ip, req.forwarded.client_ip, conn.local_ip, conn.port, conn.sni, conn.principal,
        host=req.authority, method=req.method, path=req.path, headers=req.headers, auth=req.auth,
    )


def authorize_request(authz: Authorizer, req, conn: ConnectionFacts, log=None) -> LocalReply | None:
    """AuthorizationPolicy (workers/authz.py) over the HTTP filter chain's rules: None, or Envoy's RBAC 403 whose
    response code details name the deciding rule (or "none": no ALLOW rule matched)."""
    verdict = authorize(authz.http, request_facts(req, conn))
    if log is not None and authz.http:
        log.rbac = rbac_counts(authz.http, verdict)
    if verdict.allowed:
        return None
    return rbac_refusal(verdict.policy)


def rbac_refusal(policy: str) -> LocalReply:
    return LOCAL_REPLIES["rbac_denied"]._replace(details=RBAC_DETAILS % policy)


RBAC_DETAILS = "rbac_access_denied_matched_policy[%s]"  # Envoy's RBAC responseDetail


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
