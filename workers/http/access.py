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

from typing import NamedTuple

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
    return None
