# RequestAuthentication at the gateway, pure: the compiled JWT rules of a table, a request's headers and query and
# `now` in; the verified principal and claims, or the refusal, and the header changes out. What Envoy's jwt_authn
# filter does with the configuration Istio generates (pilot/pkg/security/authn/policy_applier.go):
#
# Rules:
# - Istio makes one provider per JWT rule (rules sorted by issuer) and requires
#     any( provider_0, …, provider_n-1, all( any(provider_i, allow_missing) for each i ) )
#   so a request passes when it carries no token in any rule's locations (unauthenticated: only an
#   AuthorizationPolicy asking for a requestPrincipal can refuse it), or when the tokens found in some rule's
#   locations all verify with that rule. Otherwise the first rule (in that order) whose tokens fail gives the
#   refusal (Envoy's AllVerifier stops at its first failing child). Envoy's allow_missing authenticator goes on
#   after a failed token and reports the last one's status, so [good, bad] in one location passes there; edge
#   requires every token of a rule to verify instead (the provider verifier's rule), and reports the first
#   failure in Envoy's order (extracted tokens are verified from the last to the first).
# - Locations (Envoy's extractor): headers in (name + prefix) order, every value of a repeated header; with a prefix
#   the token starts at the first base64url character after the first occurrence of the prefix (a value without it
#   is no token); query parameters: the first value, percent-decoded; cookies. No location in a rule = header
#   Authorization with prefix "Bearer " and parameter access_token. A token found at a location is checked
#   against that rule's issuer only ("Jwt issuer is not configured" otherwise; an empty issuer takes any).
# - One token: format and JSON (jwt_verify_lib's parse statuses), issuer, time with Envoy's 60 s clock skew
#   (not yet valid when now + 60 < nbf, expired when now > exp + 60), audiences (any of the token's in the rule's;
#   none configured = any; "http://"/"https://" prefixes and one trailing "/" ignored on both sides, as
#   jwt_verify_lib's CheckAudience), then the signature: keys whose kid and alg do not contradict the token's
#   are tried in JWKS order ("Jwks doesn't have key to match kid or alg from Jwt" when none is left). A rule whose
#   jwksUri was never fetched has no keys: its tokens fail.
# - A refusal is 401 with jwt_verify_lib's status text as the body and `www-authenticate: Bearer
#   realm="<url>", error="invalid_token"` (Envoy's jwt_authn onComplete), or 403 for "Audiences in Jwt are not
#   allowed".
# - Success (the rule's provider settings): the token's header is removed (or its query parameter; a cookie is
#   left, as Envoy leaves it) unless forwardOriginalToken; outputPayloadToHeader gets the token's payload segment
#   (base64url, no padding); outputClaimToHeaders get string, number and boolean claims (Envoy's formatting). The
#   output headers of every rule are removed from the request first, so that a client cannot send its own.
# - The claims authorization and routing see are the payload with Istio's space-delimited claims (`scope`,
#   `permission` and the rule's spaceDelimitedClaims) split into lists, as Envoy's normalize_payload_in_metadata.
# - Keys are parsed once per table (Authenticator()); a JWKS that does not parse leaves its rule without keys.
#   Signatures are checked by PyJWT's algorithms over cryptography (OpenSSL); nothing here is cryptography.
# - Verified-token cache, as Envoy's jwt_authn jwt_cache_config (jwt_cache.cc): per rule (Envoy: per provider), an
#   LRU of JWT_CACHE_SIZE tokens (kJwtCacheDefaultSize) keyed by the token's text, tokens of at most
#   JWT_CACHE_MAX_TOKEN_BYTES (kMaxJwtSizeForCache); only tokens that passed every check (format, issuer, time,
#   audiences, signature) go in. A hit skips parsing and the signature but re-checks time with the 60 s skew (Envoy
#   re-checks expiry on every lookup and drops an expired entry; here nbf too): a token whose time no longer fits
#   is dropped and verified in full, which gives the refusal. The cache belongs to the Authenticator of one table
#   generation in one worker: keys that change come with a new table, so with an empty cache. Istio does not set
#   jwt_cache_config; the cache changes no verdict, only the cost of a repeated token.
from __future__ import annotations

import binascii
import json
from base64 import urlsafe_b64decode
from collections import OrderedDict
from urllib.parse import unquote

from jwt import PyJWK
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import PyJWTError

from edge.table import JwtLocation, JwtRule

CLOCK_SKEW_S = 60  # jwt_verify_lib kClockSkewInSecond, Envoy's default clock_skew_seconds
JWT_CACHE_SIZE = 100  # tokens per rule: Envoy's jwt_cache.cc kJwtCacheDefaultSize
JWT_CACHE_MAX_TOKEN_BYTES = 4 * 1024  # longer tokens are verified every time: Envoy's kMaxJwtSizeForCache

# The algorithms Envoy's jwt_verify_lib implements (jwt.cc), and the JWK key type each needs.
ALGORITHM_KTY = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "EC", "ES384": "EC", "ES512": "EC",
    "HS256": "oct", "HS384": "oct", "HS512": "oct",
    "EdDSA": "OKP",
}  # fmt: skip
_ALGORITHMS = {name: algo for name, algo in get_default_algorithms().items() if name in ALGORITHM_KTY}

# jwt_verify_lib's status texts (src/status.cc): the body of Envoy's refusal.
JWT_BAD_FORMAT = "Jwt is not in the form of Header.Payload.Signature"
JWT_HEADER_PARSE = "Jwt header is an invalid Base64url input or an invalid JSON"
JWT_HEADER_BAD_ALG = "Jwt header [alg] field is not a string"
JWT_HEADER_ALG_NOT_IMPLEMENTED = "Jwt header [alg] field value is invalid"
JWT_HEADER_BAD_KID = "Jwt header [kid] field is not a string"
JWT_PAYLOAD_PARSE = "Jwt payload is an invalid Base64 or an invalid JSON"
JWT_SIGNATURE_PARSE = "Jwt signature is an invalid Base64"
JWT_UNKNOWN_ISSUER = "Jwt issuer is not configured"
JWT_NOT_YET_VALID = "Jwt not yet valid"
JWT_EXPIRED = "Jwt is expired"
JWT_AUDIENCE_NOT_ALLOWED = "Audiences in Jwt are not allowed"
JWT_VERIFICATION_FAILS = "Jwt verification fails"
JWKS_KID_ALG_MISMATCH = "Jwks doesn't have key to match kid or alg from Jwt"

DEFAULT_LOCATIONS = ((JwtLocation(name="authorization", prefix="Bearer "),), ("access_token",))
_BASE64URL_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


class Auth:
    """The verified JWT as authorization, routing and the access log see it (Istio's request.auth.*)."""

    __slots__ = ("principal", "audiences", "presenter", "claims", "issuer")

    def __init__(self, issuer: str, claims: dict):
        self.issuer = issuer
        sub = claims.get("sub")
        self.principal = f"{issuer}/{sub if isinstance(sub, str) else ''}"
        aud = claims.get("aud")
        self.audiences = (aud,) if isinstance(aud, str) else tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()
        azp = claims.get("azp")
        self.presenter = azp if isinstance(azp, str) else ""
        self.claims = claims

    def __repr__(self) -> str:
        return f"Auth(principal={self.principal!r})"


class Refusal:
    """A present but invalid token: Envoy's local reply."""

    __slots__ = ("status", "message", "policy")

    def __init__(self, message: str, policy: str):
        self.status = 403 if message == JWT_AUDIENCE_NOT_ALLOWED else 401
        self.message = message
        self.policy = policy

    def www_authenticate(self, url: str) -> bytes:
        return f'Bearer realm="{url}", error="invalid_token"'.encode("latin-1", "replace")

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.message!r})"


class Outcome:
    """What authentication decided: `auth` (None: no token), or `refusal`; `headers` and `query` are the request's
    with the rules' changes (the same objects when nothing changed)."""

    __slots__ = ("auth", "refusal", "headers", "query", "rule")

    def __init__(self, auth, refusal, headers, query, rule=None):
        self.auth = auth
        self.refusal = refusal
        self.headers = headers
        self.query = query
        self.rule = rule


class _Token:
    __slots__ = ("text", "kind", "name")

    def __init__(self, text: str, kind: str, name):
        self.text = text
        self.kind = kind  # "header" | "param" | "cookie"
        self.name = name  # bytes for a header, str for a parameter or cookie


class _Parsed:
    __slots__ = ("alg", "kid", "payload", "signing_input", "signature", "payload_b64", "auth")


class CompiledRule:
    """One JWT rule with its keys parsed and its locations as the extractor reads them."""

    __slots__ = ("rule", "keys", "audiences", "headers", "params", "cookies", "spaced", "outputs", "problem", "cache")

    def __init__(self, rule: JwtRule):
        self.rule = rule
        self.cache: OrderedDict[str, _Parsed] = OrderedDict()  # verified tokens, least recently used first
        self.keys, self.problem = parse_jwks(rule.jwks)
        self.audiences = frozenset(_sanitize_audience(a) for a in rule.audiences)
        headers, params = rule.from_headers, rule.from_params
        if not headers and not params and not rule.from_cookies:
            headers, params = DEFAULT_LOCATIONS
        # Envoy's header_locations_ is a std::map keyed by name + prefix.
        self.headers = tuple(sorted(((h.name.encode("latin-1"), h.prefix) for h in headers), key=lambda hp: hp[0].decode("latin-1") + hp[1]))
        self.params = tuple(sorted(set(params)))
        self.cookies = tuple(sorted(set(rule.from_cookies)))
        self.spaced = frozenset(rule.space_delimited_claims)
        outputs = [n for n, _ in rule.output_claim_to_headers]
        if rule.output_payload_to_header:
            outputs.append(rule.output_payload_to_header)
        self.outputs = frozenset(n.encode("latin-1") for n in outputs)


def parse_jwks(text: str) -> tuple[tuple, str]:
    """The usable keys of a JWKS document as (kid, alg, kty, key object), and why some or all were not usable."""
    if not text:
        return (), "no JWKS"
    try:
        doc = json.loads(text)
    except ValueError:
        return (), "Jwks is an invalid JSON"
    raw = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        return (), "Jwks does not have [keys] field" if raw is None else "[keys] in Jwks is not an array"
    keys = []
    problems = []
    for index, jwk in enumerate(raw):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kty = jwk.get("kty")
        alg = jwk.get("alg", "")
        try:
            key = PyJWK(jwk, algorithm=alg or None).key
            if hasattr(key, "public_key"):
                key = key.public_key()  # a private JWK (the compiler warns): only its public half verifies
        except (PyJWTError, ValueError, TypeError, KeyError, binascii.Error) as exc:
            problems.append(f"key {index}: {exc}")
            continue
        kid = jwk.get("kid", "")
        keys.append((kid if isinstance(kid, str) else "", alg if isinstance(alg, str) else "", kty, key))
    if not keys:
        return (), "; ".join(problems) or "Jwks doesn't have any valid public key"
    return tuple(keys), "; ".join(problems)


class Authenticator:
    """The compiled rules of one table generation (built once per table; empty rules = nothing to do)."""

    __slots__ = ("rules", "outputs")

    def __init__(self, rules: tuple[JwtRule, ...]):
        self.rules = tuple(CompiledRule(r) for r in rules)
        self.outputs = frozenset().union(*(r.outputs for r in self.rules)) if self.rules else frozenset()

    def authenticate(self, headers: list, query: str, now: float) -> Outcome:
        if self.outputs and any(n in self.outputs for n, _ in headers):
            headers = [(n, v) for n, v in headers if n not in self.outputs]
        found = [(rule, _extract(rule, headers, query)) for rule in self.rules]
        if not any(tokens for _, tokens in found):
            return Outcome(None, None, headers, query)
        first_failure = None
        for rule, tokens in found:
            if not tokens:
                continue
            verified = []
            failure = None
            for token in reversed(tokens):
                result = verify_token(rule, token.text, now)
                if isinstance(result, str):
                    failure = result
                    break
                verified.append((token, result))
            if failure is None:
                return _success(rule, verified, headers, query)
            if first_failure is None:
                first_failure = Refusal(failure, rule.rule.policy)
        return Outcome(None, first_failure, headers, query)


def _extract(rule: CompiledRule, headers: list, query: str) -> list[_Token]:
    tokens: list[_Token] = []
    for name, prefix in rule.headers:
        for n, v in headers:
            if n != name:
                continue
            text = v.decode("latin-1")
            if prefix:
                at = text.find(prefix)
                if at < 0:
                    continue
                text = _token_after(text, at + len(prefix))
            tokens.append(_Token(text, "header", name))
    if rule.params and query:
        params = _query_params(query)
        for name in rule.params:
            value = params.get(name)
            if value is not None:
                tokens.append(_Token(value, "param", name))
    if rule.cookies:
        cookies = _cookies(headers)
        for name in rule.cookies:
            value = cookies.get(name)
            if value is not None:
                tokens.append(_Token(value, "cookie", name))
    return tokens


def _token_after(text: str, after: int) -> str:
    """Envoy's extractJWT: from the first base64url character (or dot) after `after` to the end; the value as is
    when there is none."""
    for i in range(after, len(text)):
        if ord(text[i]) in _BASE64URL_CHARS:
            return text[i:]
    return text


def _query_params(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = unquote(key)
        if key not in out:
            out[key] = unquote(value)
    return out


def _cookies(headers: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, v in headers:
        if n != b"cookie":
            continue
        for part in v.decode("latin-1").split(";"):
            key, eq, value = part.strip().partition("=")
            if not eq or key in out:
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            out[key] = value
    return out


def _b64decode(segment: str) -> bytes:
    return urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parse_token(text: str) -> _Parsed | str:
    """jwt_verify_lib's Jwt::parseFromString: the parsed token, or the status text of what is wrong."""
    parts = text.split(".")
    if len(parts) != 3:
        return JWT_BAD_FORMAT
    try:
        header = json.loads(_b64decode(parts[0]))
    except (ValueError, binascii.Error):
        return JWT_HEADER_PARSE
    if not isinstance(header, dict):
        return JWT_HEADER_PARSE
    alg = header.get("alg")
    if not isinstance(alg, str):
        return JWT_HEADER_BAD_ALG
    if alg not in _ALGORITHMS:
        return JWT_HEADER_ALG_NOT_IMPLEMENTED
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        return JWT_HEADER_BAD_KID
    try:
        payload = json.loads(_b64decode(parts[1]))
    except (ValueError, binascii.Error):
        return JWT_PAYLOAD_PARSE
    if not isinstance(payload, dict) or not _payload_types_ok(payload):
        return JWT_PAYLOAD_PARSE
    try:
        signature = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        return JWT_SIGNATURE_PARSE
    p = _Parsed()
    p.alg, p.kid, p.payload, p.signature = alg, kid, payload, signature
    p.signing_input = (parts[0] + "." + parts[1]).encode("ascii", "replace")
    p.payload_b64 = parts[1]
    p.auth = None  # the Auth of a verified token, made once (a cached token's is reused: it depends on the rule only)
    return p


def _payload_types_ok(payload: dict) -> bool:
    for name in ("iss", "sub"):
        if name in payload and not isinstance(payload[name], str):
            return False
    for name in ("exp", "nbf", "iat"):
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            return False
    aud = payload.get("aud")
    return aud is None or isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))


def verify_token(rule: CompiledRule, text: str, now: float) -> _Parsed | str:
    """One token against one rule: the parsed token, or the status text of why it fails (see the rules above).
    A token this rule verified before is taken from its cache while its time still fits."""
    cache = rule.cache
    cached = cache.get(text)
    if cached is not None:
        if _time_problem(cached.payload, now) is None:
            cache.move_to_end(text)
            return cached
        del cache[text]  # its time no longer fits: verified in full below, which refuses it
    token = _verify(rule, text, now)
    if not isinstance(token, str) and len(text) <= JWT_CACHE_MAX_TOKEN_BYTES:
        cache[text] = token
        if len(cache) > JWT_CACHE_SIZE:
            cache.popitem(last=False)
    return token


def _verify(rule: CompiledRule, text: str, now: float) -> _Parsed | str:
    token = parse_token(text)
    if isinstance(token, str):
        return token
    payload = token.payload
    issuer = rule.rule.issuer
    if issuer and payload.get("iss", "") != issuer:
        return JWT_UNKNOWN_ISSUER
    problem = _time_problem(payload, now)
    if problem is not None:
        return problem
    if rule.audiences:
        aud = payload.get("aud")
        auds = (aud,) if isinstance(aud, str) else (aud or ())
        if not any(_sanitize_audience(a) in rule.audiences for a in auds):
            return JWT_AUDIENCE_NOT_ALLOWED
    return token if _signature_ok(rule, token) else (JWT_VERIFICATION_FAILS if _candidates(rule, token) else JWKS_KID_ALG_MISMATCH)


def _time_problem(payload: dict, now: float) -> str | None:
    """jwt_verify_lib's verifyTimeConstraint with the clock skew: nbf, then exp (0 or absent: none)."""
    second = int(now)
    nbf = payload.get("nbf")
    if nbf is not None and second + CLOCK_SKEW_S < nbf:
        return JWT_NOT_YET_VALID
    exp = payload.get("exp")
    if exp and second > exp + CLOCK_SKEW_S:
        return JWT_EXPIRED
    return None


def _candidates(rule: CompiledRule, token: _Parsed) -> list:
    return [k for k in rule.keys if not (token.kid and k[0] and k[0] != token.kid) and not (k[1] and k[1] != token.alg)]


def _signature_ok(rule: CompiledRule, token: _Parsed) -> bool:
    algorithm = _ALGORITHMS[token.alg]
    kty = ALGORITHM_KTY[token.alg]
    for _kid, _alg, key_kty, key in _candidates(rule, token):
        if key_kty != kty:
            continue
        try:
            if algorithm.verify(token.signing_input, key, token.signature):
                return True
        except (ValueError, TypeError, PyJWTError):
            continue  # a key of the right type that cannot take this algorithm (an EC curve for another size)
    return False


def _sanitize_audience(aud: str) -> str:
    for scheme in ("http://", "https://"):
        if aud.startswith(scheme):
            aud = aud[len(scheme) :]
            break
    return aud[:-1] if aud.endswith("/") else aud


def _success(rule: CompiledRule, verified: list, headers: list, query: str) -> Outcome:
    r = rule.rule
    token, parsed = verified[-1]  # the first token extracted is verified last and its payload kept (Envoy)
    headers = list(headers)
    if not r.forward_original_token:
        for tok, _ in verified:
            if tok.kind == "header":
                headers = [(n, v) for n, v in headers if n != tok.name]
            elif tok.kind == "param":
                query = _without_param(query, tok.name)
    if r.output_payload_to_header:
        headers.append((r.output_payload_to_header.encode("latin-1"), parsed.payload_b64.encode("ascii")))
    for header, claim in r.output_claim_to_headers:
        value = claim_text(claim_value(parsed.payload, claim))
        if value:
            headers.append((header.encode("latin-1"), value.encode("utf-8")))
    if parsed.auth is None:
        parsed.auth = Auth(r.issuer or parsed.payload.get("iss", ""), normalize_claims(parsed.payload, rule.spaced))
    return Outcome(parsed.auth, None, headers, query, rule)


def _without_param(query: str, name: str) -> str:
    return "&".join(p for p in query.split("&") if p and unquote(p.partition("=")[0]) != name)


def claim_value(payload: dict, claim: str):
    """A claim by name, or by a dotted path into nested objects when no top-level claim has the name."""
    if claim in payload:
        return payload[claim]
    value = payload
    for part in claim.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def claim_text(value) -> str:
    """Envoy's addJWTClaimToHeader: strings as they are, booleans true/false, whole non-negative numbers as
    integers and other numbers as C's std::to_string (six decimals); anything else is no header."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if value >= 0 and value < 2**64 and float(value).is_integer():
            return str(int(value))
        return f"{float(value):f}"
    return ""


def normalize_claims(payload: dict, spaced: frozenset) -> dict:
    """The payload as Envoy puts it in metadata: space-delimited string claims split into lists."""
    if not any(isinstance(payload.get(name), str) for name in spaced):
        return payload
    return {k: (v.split() if k in spaced and isinstance(v, str) else v) for k, v in payload.items()}
