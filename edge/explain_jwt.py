# `edge route --jwt TOKEN`: what RequestAuthentication (workers/jwt.py) makes of a request, for the explainer.
#
# Rules:
# - The token goes in `authorization: Bearer TOKEN` (unless the request already has that header), and the workers'
#   own verifier decides, at `now`, with the table's rules: the answer is what a worker would do.
# - A jwksUri's keys, and those OpenID discovery finds for an issuer-only rule, are fetched by `edge run`
#   (edge/jwks.py), not by this pure explanation: a token of such an issuer whose only failure is "no key" is
#   reported as not verified here, and its principal and claims are assumed from the (unverified) payload so that
#   the routing and policy explanation can go on.
# - No I/O: lines out through `say`.
from __future__ import annotations

from edge import table
from edge.compiler.authentication import discovery_url
from workers.jwt import JWKS_KID_ALG_MISMATCH, Auth, Authenticator, CompiledRule, normalize_claims, parse_token


def authenticate(routing: table.RoutingTable, request, token: str | None, now: float, say) -> bool:
    """Sets request.auth (and the forwarded headers/query) as a worker would; False when the request is refused."""
    request.auth = None
    if token is not None and not any(n == b"authorization" for n, _ in request.headers):
        request.headers = [*request.headers, (b"authorization", b"Bearer " + token.encode("latin-1"))]
    if not routing.jwt_rules:
        if token is not None:
            say("RequestAuthentication: none applies to this gateway, the token is not looked at")
        return True
    outcome = Authenticator(routing.jwt_rules).authenticate(request.headers, request.query, now)
    request.headers, request.query = outcome.headers, outcome.query
    if outcome.auth is not None:
        rule = outcome.rule.rule
        say(f"RequestAuthentication {rule.policy}: token verified for issuer {rule.issuer or '(any)'}: principal {outcome.auth.principal}, audiences {list(outcome.auth.audiences)}, presenter {outcome.auth.presenter or '-'}")
        request.auth = outcome.auth
        return True
    refusal = outcome.refusal
    if refusal is None:
        say("RequestAuthentication: no token in any rule's location: unauthenticated (only an AuthorizationPolicy asking for a requestPrincipal can refuse it)")
        return True
    assumed = _unfetched(routing, token, refusal.message)
    if assumed is not None:
        say(f"RequestAuthentication {refusal.policy}: its keys are fetched by edge run (jwksUri or OpenID discovery), so the signature is not checked here; assuming principal {assumed.principal} from the payload")
        request.auth = assumed
        return True
    say(f"RequestAuthentication {refusal.policy}: {refusal.status} {refusal.message} (the request is refused before routing)")
    return False


def _unfetched(routing: table.RoutingTable, token: str | None, message: str) -> Auth | None:
    if token is None or message != JWKS_KID_ALG_MISMATCH:
        return None
    parsed = parse_token(token)
    if isinstance(parsed, str):
        return None
    for rule in routing.jwt_rules:
        fetched = rule.jwks_uri or discovery_url(rule.issuer)
        if fetched and not rule.jwks and rule.issuer == parsed.payload.get("iss", ""):
            return Auth(rule.issuer, normalize_claims(parsed.payload, CompiledRule(rule).spaced))
    return None
