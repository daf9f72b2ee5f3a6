# Compiler stage: RequestAuthentication → the table's JWT rules (table.JwtRule), verified by workers/jwt.py.
#
# Rules:
# - Which RequestAuthentications apply to this gateway is the one applicability rule AuthorizationPolicy uses too
#   (Istio's ShouldAttachPolicy: the root namespace or the gateway's namespace, selector or targetRefs), passed in
#   as `applies(where, res, spec)`.
# - Each JWT rule is checked as Istio's validateJwtRule (pkg/config/validation): non-empty audiences, issuer or
#   jwksUri, an http(s) jwksUri with a host, an inline jwks that parses into keys (a warning when it holds private
#   key material), non-empty location names, valid output header names, a timeout of at least 1 ms. Errors name
#   the field.
# - Key source, as istiod (PILOT_JWT_ENABLE_REMOTE_JWKS unset) builds it: inline `jwks` wins over `jwksUri` (which is
#   then not fetched: a warning says so); a jwksUri is fetched by the supervisor (edge/jwks.py) and its keys are
#   put into the published table. A rule with neither has its keys discovered by the supervisor from the issuer's
#   OpenID configuration (istiod's resolveJwksURIUsingOpenID: `<issuer>/.well-known/openid-configuration`): a note
#   says where. An issuer that is not an http(s) URL cannot be discovered from (istiod's GET fails and it publishes
#   a JWKS nobody holds a key of): a warning, and its tokens always fail verification (closed, never open).
# - Rules of all applying policies, in creation order, stably sorted by issuer (policy_applier.go).
# - JWT claim routing without any RequestAuthentication is warned about (Istio's analyzer IST0149): such a match
#   never sees claims.
from __future__ import annotations

import json
from urllib.parse import urlsplit

from edge import istio, table, wire
from edge.compiler.model import JWT_CLAIM_PREFIX
from edge.compiler.report import Report, Where
from workers.jwt import parse_jwks

KIND = "RequestAuthentication"
DEFAULT_FETCH_TIMEOUT_S = 5.0  # policy_applier.go: JWTRule.timeout unset → 5 s
MIN_TIMEOUT_S = 0.001  # agent.ValidateDuration
OPENID_CONFIGURATION = "/.well-known/openid-configuration"  # OpenID Connect Discovery 1.0 §4; istiod appends it as is
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")  # JWK members of private (or symmetric) keys


def compile_authentication(report: Report, by_kind: dict[str, list[istio.Resource]], applies) -> tuple[table.JwtRule, ...]:
    rules: list[table.JwtRule] = []
    for res in by_kind.get(KIND, []):
        where = Where(report, res)
        if not applies(where, res, res.spec):
            continue
        for index, rule in enumerate(res.spec.jwt_rules):
            compiled = compile_rule(where.at(f".jwtRules[{index}]"), res, rule)
            if compiled is not None:
                rules.append(compiled)
    rules.sort(key=lambda r: r.issuer)
    if not rules:
        _warn_claim_routes(report, by_kind.get("VirtualService", []))
    return tuple(rules)


def compile_rule(w: Where, res: istio.Resource, rule) -> table.JwtRule | None:
    for i, audience in enumerate(rule.audiences):
        if not audience:
            w.error("audience must be non-empty string", f".audiences[{i}]")
    if not rule.issuer and not rule.jwks_uri:
        w.error("issuer or jwksUri must be non-empty string")
    if rule.jwks_uri:
        problem = jwks_uri_problem(rule.jwks_uri)
        if problem is not None:
            w.error(problem, ".jwksUri")
    if rule.jwks:
        _check_inline_jwks(w, rule)
    elif not rule.jwks_uri and rule.issuer:
        url = discovery_url(rule.issuer)
        if url is None:
            w.warn(
                f"neither jwks nor jwksUri, and issuer {rule.issuer!r} is not an http(s) URL to discover keys from "
                f"({rule.issuer}{OPENID_CONFIGURATION} cannot be fetched, as in istiod): tokens of this issuer always fail verification"
            )
        else:
            w.note(f"neither jwks nor jwksUri: edge run discovers the keys from {url} (OpenID discovery, as istiod)")
    headers = []
    for i, location in enumerate(rule.from_headers):
        problem = wire.header_name_problem(location.name)
        if problem is not None:
            w.error(f"location header name: {problem}", f".fromHeaders[{i}].name")
        headers.append(table.JwtLocation(name=location.name.lower(), prefix=location.prefix))
    for field, names in (("fromParams", rule.from_params), ("fromCookies", rule.from_cookies)):
        for i, name in enumerate(names):
            if not name:
                w.error("location query must be non-empty string" if field == "fromParams" else "cookie name must be non-empty string", f".{field}[{i}]")
    outputs = []
    for i, pair in enumerate(rule.output_claim_to_headers):
        if not pair.claim or not pair.header:
            w.error("outputClaimToHeaders header and claim value must be non-empty string", f".outputClaimToHeaders[{i}]")
            continue
        problem = wire.header_name_problem(pair.header)
        if problem is not None:
            w.error(problem, f".outputClaimToHeaders[{i}].header")
        outputs.append((pair.header.lower(), pair.claim))
    if rule.output_payload_to_header:
        problem = wire.header_name_problem(rule.output_payload_to_header)
        if problem is not None:
            w.error(problem, ".outputPayloadToHeader")
    timeout = DEFAULT_FETCH_TIMEOUT_S if rule.timeout is None else float(rule.timeout)
    if timeout < MIN_TIMEOUT_S:
        w.error("timeout must be at least 1ms", ".timeout")
    if w.failed:
        return None
    return table.JwtRule(
        issuer=rule.issuer,
        audiences=tuple(rule.audiences),
        jwks=rule.jwks,
        jwks_uri="" if rule.jwks else rule.jwks_uri,
        fetch_timeout_s=timeout,
        from_headers=tuple(headers),
        from_params=tuple(rule.from_params),
        from_cookies=tuple(rule.from_cookies),
        forward_original_token=rule.forward_original_token,
        output_payload_to_header=rule.output_payload_to_header.lower(),
        output_claim_to_headers=tuple(outputs),
        space_delimited_claims=tuple(sorted({"permission", "scope", *rule.space_delimited_claims})),
        policy=res.key,
    )


def discovery_url(issuer: str) -> str | None:
    """Where an issuer's OpenID configuration is, or None when the issuer is no http(s) URL to discover from."""
    url = issuer + OPENID_CONFIGURATION
    return url if issuer and jwks_uri_problem(url) is None else None


def jwks_uri_problem(uri: str) -> str | None:
    """security.ParseJwksURI: an http or https URL with a host (and a valid port)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        return f"jwksUri {uri!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"jwksUri {uri!r}: scheme must be http or https"
    if not parts.hostname:
        return f"jwksUri {uri!r} has no host"
    if port == 0:
        return f"jwksUri {uri!r}: port 0"
    return None


def _check_inline_jwks(w: Where, rule) -> None:
    keys, problem = parse_jwks(rule.jwks)
    if not keys:
        w.error(f"jwks parse error: {problem}", ".jwks")
        return
    if problem:
        w.warn(f"jwks: some keys are not usable and are ignored: {problem}", ".jwks")
    if rule.jwks_uri:
        w.warn("jwksUri is not fetched: the inline jwks is used, as istiod does", ".jwksUri")
    for i, jwk in enumerate(json.loads(rule.jwks).get("keys", [])):
        if isinstance(jwk, dict) and any(m in jwk for m in _PRIVATE_MEMBERS):
            w.warn(f"jwks key at index {i} contains private key material; only public keys are used for verification", ".jwks")


def _warn_claim_routes(report: Report, virtual_services: list[istio.Resource]) -> None:
    for res in virtual_services:
        for i, http in enumerate(res.spec.http):
            for j, match in enumerate(http.match):
                for field, names in ((".headers", match.headers), (".withoutHeaders", match.without_headers)):
                    for name in names:
                        if name.lower().startswith(JWT_CLAIM_PREFIX):
                            Where(report, res).warn(
                                "JWT claim based routing without any RequestAuthentication applying to this gateway: no request has claims",
                                f".http[{i}].match[{j}]{field}.{name}",
                            )
