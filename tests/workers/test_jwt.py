"""workers/jwt.py: the RequestAuthentication verifier, table-driven (Envoy jwt_authn + jwt_verify_lib semantics)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from edge.table import JwtLocation, JwtRule
from workers import jwt as v

SAMPLES = Path(__file__).resolve().parents[1] / "security" / "jwt_samples"
ISTIO_ISSUER = "testing@secure.istio.io"
NOW = 1_700_000_000
ISS = "https://issuer.example"

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_KEYS = {
    "RS256": _RSA, "RS384": _RSA, "RS512": _RSA, "PS256": _RSA, "PS384": _RSA, "PS512": _RSA,
    "ES256": ec.generate_private_key(ec.SECP256R1()), "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()), "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    "HS256": b"0123456789abcdef0123456789abcdef",
}  # fmt: skip


def jwk_of(alg: str, key, kid: str) -> dict:
    algo = get_default_algorithms()[alg]
    public = key if isinstance(key, bytes) else key.public_key()
    out = json.loads(algo.to_jwk(public))
    out.update(kid=kid, alg=alg)
    return out


def jwks(*entries) -> str:
    return json.dumps({"keys": [jwk_of(alg, key, kid) for alg, key, kid in entries]})


ALL_JWKS = jwks(*((alg, key, alg) for alg, key in _KEYS.items()))


def token(claims: dict | None = None, *, alg: str = "RS256", key=None, kid: str | None = None) -> str:
    body = {"iss": ISS, "sub": "alice", "exp": NOW + 3600, **(claims or {})}
    body = {k: v for k, v in body.items() if v is not None}
    return pyjwt.encode(body, key if key is not None else _KEYS[alg], algorithm=alg, headers={"kid": kid if kid is not None else alg})


def rule(**kw) -> JwtRule:
    return JwtRule(**{"issuer": ISS, "jwks": ALL_JWKS, "policy": "ns/ra", **kw})


def run(rules, headers=(), query="", now=NOW):
    return v.Authenticator(tuple(rules)).authenticate(list(headers), query, now)


def bearer(text: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + text.encode())


@pytest.mark.parametrize("alg", sorted(_KEYS))
def test_each_algorithm_verifies(alg):
    out = run([rule()], [bearer(token(alg=alg))])
    assert out.refusal is None and out.auth.principal == f"{ISS}/alice"


@pytest.mark.parametrize(
    "claims, now, message",
    [
        ({"exp": NOW - 61}, NOW, v.JWT_EXPIRED),
        ({"exp": NOW - 60}, NOW, None),  # the 60 s clock skew, inclusive
        ({"nbf": NOW + 61}, NOW, v.JWT_NOT_YET_VALID),
        ({"nbf": NOW + 60}, NOW, None),
        ({"exp": None}, NOW, None),  # no exp: never expires (jwt_verify_lib)
        ({"iss": "https://other"}, NOW, v.JWT_UNKNOWN_ISSUER),
        ({"iss": None}, NOW, v.JWT_UNKNOWN_ISSUER),
        ({"exp": "soon"}, NOW, v.JWT_PAYLOAD_PARSE),
    ],
)
def test_time_and_issuer(claims, now, message):
    out = run([rule()], [bearer(token(claims))], now=now)
    assert (out.refusal.message if out.refusal else None) == message
    if message:
        assert out.refusal.status == 401 and out.auth is None


@pytest.mark.parametrize(
    "configured, aud, ok",
    [
        ((), "anything", True),
        (("a", "b"), "b", True),
        (("a",), ["x", "a"], True),
        (("a",), "c", False),
        (("a",), None, False),
        (("https://api.example/",), "http://api.example", True),  # CheckAudience ignores scheme and a trailing /
    ],
)
def test_audiences(configured, aud, ok):
    out = run([rule(audiences=configured)], [bearer(token({"aud": aud}))])
    if ok:
        assert out.auth is not None
    else:
        assert out.refusal.message == v.JWT_AUDIENCE_NOT_ALLOWED and out.refusal.status == 403


def test_bad_signature_and_unknown_key():
    good = token()
    header, payload, sig = good.split(".")
    forged = ".".join([header, base64.urlsafe_b64encode(json.dumps({"iss": ISS, "sub": "mallory", "exp": NOW + 10}).encode()).rstrip(b"=").decode(), sig])
    assert run([rule()], [bearer(forged)]).refusal.message == v.JWT_VERIFICATION_FAILS
    assert run([rule()], [bearer(token(key=_RSA_OTHER))]).refusal.message == v.JWT_VERIFICATION_FAILS
    assert run([rule()], [bearer(token(kid="nope"))]).refusal.message == v.JWKS_KID_ALG_MISMATCH
    no_kid = pyjwt.encode({"iss": ISS, "sub": "a"}, _RSA, algorithm="RS256")
    assert run([rule()], [bearer(no_kid)]).auth is not None  # no kid: every key of the alg is tried
    assert run([rule(jwks="")], [bearer(token())]).refusal.message == v.JWKS_KID_ALG_MISMATCH  # never fetched


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc", v.JWT_BAD_FORMAT),
        ("a.b.c.d", v.JWT_BAD_FORMAT),
        ("!!.e30.sig", v.JWT_HEADER_PARSE),
        (pyjwt.encode({"iss": ISS}, None, algorithm="none"), v.JWT_HEADER_ALG_NOT_IMPLEMENTED),
    ],
)
def test_malformed(text, message):
    assert run([rule()], [bearer(text)]).refusal.message == message


def test_no_token_continues_unauthenticated():
    out = run([rule()], [(b"x", b"y")], "a=1")
    assert out.auth is None and out.refusal is None and out.query == "a=1"
    assert run([rule()], [(b"authorization", b"Basic abc")]).refusal is None  # no "Bearer " prefix: no token


def test_locations_default_header_and_param_removed():
    t = token()
    out = run([rule()], [bearer(t), (b"x", b"1")])
    assert out.headers == [(b"x", b"1")]
    out = run([rule()], [], f"a=1&access_token={t}&b=2")
    assert out.auth is not None and out.query == "a=1&b=2"


def test_custom_header_prefix_param_cookie():
    t = token()
    r = rule(from_headers=(JwtLocation(name="x-jwt", prefix="Token "),), from_params=("tk",), from_cookies=("session",))
    assert run([r], [(b"x-jwt", b"Token " + t.encode())]).auth is not None
    assert run([r], [(b"x-jwt", t.encode())]).auth is None  # prefix missing: no token
    assert run([r], [(b"x-jwt", b"junk Token  " + t.encode())]).auth is not None  # Envoy finds the prefix anywhere
    assert run([r], [bearer(t)]).auth is None  # the default location is not used once locations are given
    assert run([r], [], f"tk={t}").auth is not None
    out = run([r], [(b"cookie", f'a=1; session="{t}"'.encode())])
    assert out.auth is not None and out.headers == [(b"cookie", f'a=1; session="{t}"'.encode())]  # cookies stay (Envoy)
    assert run([rule(from_headers=(JwtLocation(name="x-raw"),))], [(b"x-raw", t.encode())]).auth is not None


def test_forward_original_token_and_output_headers():
    t = token({"groups": ["a"], "n": 3, "f": 1.5, "ok": True, "nested": {"k": "v"}})
    r = rule(
        forward_original_token=True,
        output_payload_to_header="x-payload",
        output_claim_to_headers=(("x-sub", "sub"), ("x-n", "n"), ("x-f", "f"), ("x-ok", "ok"), ("x-groups", "groups"), ("x-k", "nested.k")),
    )
    out = run([r], [bearer(t), (b"x-sub", b"forged"), (b"x-payload", b"forged")])
    h = dict(out.headers)
    assert h[b"authorization"] == b"Bearer " + t.encode()
    assert h[b"x-payload"] == t.split(".")[1].encode()
    assert json.loads(base64.urlsafe_b64decode(h[b"x-payload"] + b"==="))["sub"] == "alice"
    assert (h[b"x-sub"], h[b"x-n"], h[b"x-f"], h[b"x-ok"], h[b"x-k"]) == (b"alice", b"3", b"1.500000", b"true", b"v")
    assert b"x-groups" not in h  # a list is no header value (Envoy)
    assert [n for n, _ in out.headers].count(b"x-sub") == 1  # the client's copy was removed first
    refused = run([r], [bearer(token(key=_RSA_OTHER)), (b"x-sub", b"forged")])
    assert refused.refusal is not None


def test_several_rules_istio_requirement():
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r1 = rule()
    r2 = rule(issuer="https://second", jwks=jwks(("RS256", other_key, "k2")))
    second = token({"iss": "https://second"}, key=other_key, kid="k2")
    out = run([r1, r2], [bearer(second)])
    assert out.auth.principal == "https://second/alice"
    out = run([r1, r2], [bearer(token({"iss": "https://third"}))])
    assert out.refusal.message == v.JWT_UNKNOWN_ISSUER
    # A bad token in one location fails even when the other rule has no token there.
    assert run([r1, r2], [bearer(token(key=other_key))]).refusal is not None


def test_two_tokens_all_must_verify():
    good, bad = token(), token(key=_RSA_OTHER)
    assert run([rule()], [bearer(good), bearer(bad)]).refusal is not None
    assert run([rule()], [bearer(bad), bearer(good)]).refusal is not None
    assert run([rule()], [bearer(good), bearer(good)]).auth is not None


def test_claims_normalized_and_auth_fields():
    out = run([rule(space_delimited_claims=("permission", "scope", "roles"))], [bearer(token({"scope": "read write", "roles": "a b", "aud": ["x", "y"], "azp": "cli"}))])
    a = out.auth
    assert a.claims["scope"] == ["read", "write"] and a.claims["roles"] == ["a", "b"]
    assert a.audiences == ("x", "y") and a.presenter == "cli"


def test_istio_samples():
    keys = (SAMPLES / "jwks.json").read_text()
    r = JwtRule(issuer=ISTIO_ISSUER, jwks=keys)
    for name in ("demo.jwt", "groups-scope.jwt"):
        t = (SAMPLES / name).read_text().strip()
        out = run([r], [bearer(t)], now=1_700_000_000)
        assert out.auth.principal == f"{ISTIO_ISSUER}/{ISTIO_ISSUER}", name
    assert run([r], [bearer((SAMPLES / "demo.jwt").read_text().strip())], now=4685989700 + 61).refusal.message == v.JWT_EXPIRED


def test_parse_jwks_problems():
    assert v.parse_jwks("")[0] == ()
    assert v.parse_jwks("{")[1] == "Jwks is an invalid JSON"
    assert v.parse_jwks("{}")[1] == "Jwks does not have [keys] field"
    keys, problem = v.parse_jwks(json.dumps({"keys": [{"kty": "RSA", "n": "!!"}, jwk_of("ES256", _KEYS["ES256"], "e")]}))
    assert len(keys) == 1 and problem.startswith("key 0")


def test_a_private_jwk_verifies_with_its_public_half():
    private = json.loads(get_default_algorithms()["RS256"].to_jwk(_RSA))
    assert "d" in private
    out = run([rule(jwks=json.dumps({"keys": [{**private, "kid": "RS256"}]}))], [bearer(token())])
    assert out.auth is not None


# The verified-token cache (Envoy's jwt_authn jwt_cache_config): per rule, LRU of 100, only valid tokens, time
# re-checked on every hit with the 60 s skew, gone with the table generation.


def compiled_rule(**kw) -> v.CompiledRule:
    return v.CompiledRule(rule(**kw))


def test_a_verified_token_is_cached_and_a_hit_is_the_verified_token():
    r = compiled_rule()
    text = token()
    first = v.verify_token(r, text, NOW)
    assert not isinstance(first, str) and list(r.cache) == [text]
    assert v.verify_token(r, text, NOW + 5) is first  # not parsed nor verified again


@pytest.mark.parametrize(
    "claims, later, message",
    [
        ({"exp": NOW + 100}, NOW + 100 + v.CLOCK_SKEW_S, None),  # within the skew: still a hit
        ({"exp": NOW + 100}, NOW + 101 + v.CLOCK_SKEW_S, v.JWT_EXPIRED),  # expired since it was cached
        ({"nbf": NOW - 10}, NOW - 10 - v.CLOCK_SKEW_S, None),
        ({"nbf": NOW - 10}, NOW - 11 - v.CLOCK_SKEW_S, v.JWT_NOT_YET_VALID),  # the clock went back
    ],
)
def test_a_hit_rechecks_time_with_the_skew(claims, later, message):
    r = compiled_rule()
    text = token(claims)
    assert not isinstance(v.verify_token(r, text, NOW), str) and text in r.cache
    got = v.verify_token(r, text, later)
    if message is None:
        assert not isinstance(got, str) and text in r.cache
    else:
        assert got == message and text not in r.cache  # dropped, and refused by the full verification
        assert run([rule()], [bearer(text)], now=later).refusal.message == message


@pytest.mark.parametrize(
    "rule_kw, text",
    [
        ({}, token(key=_RSA_OTHER)),  # bad signature
        ({"audiences": ("someone",)}, token({"aud": "other"})),
        ({}, token({"iss": "https://elsewhere.example"})),
        ({}, token({"exp": NOW - 3600})),
        ({}, "a.b.c"),
    ],
)
def test_only_valid_tokens_are_cached(rule_kw, text):
    r = compiled_rule(**rule_kw)
    assert isinstance(v.verify_token(r, text, NOW), str)
    assert isinstance(v.verify_token(r, text, NOW), str) and not r.cache


def test_the_cache_is_a_bounded_lru():
    r = compiled_rule()
    texts = [token({"sub": f"user{i}"}, alg="HS256") for i in range(v.JWT_CACHE_SIZE + 1)]
    for text in texts[: v.JWT_CACHE_SIZE]:
        assert not isinstance(v.verify_token(r, text, NOW), str)
    v.verify_token(r, texts[0], NOW)  # a hit makes the oldest the most recently used
    v.verify_token(r, texts[-1], NOW)
    assert len(r.cache) == v.JWT_CACHE_SIZE and texts[0] in r.cache and texts[1] not in r.cache


def test_a_token_longer_than_envoys_cache_limit_is_verified_every_time():
    r = compiled_rule()
    text = token({"pad": "x" * v.JWT_CACHE_MAX_TOKEN_BYTES})
    assert len(text) > v.JWT_CACHE_MAX_TOKEN_BYTES
    assert not isinstance(v.verify_token(r, text, NOW), str) and not r.cache


def test_new_keys_come_with_a_new_table_and_an_empty_cache():
    text = token()
    old = v.Authenticator((rule(),))
    assert old.authenticate([bearer(text)], "", NOW).auth is not None and old.rules[0].cache
    rotated = v.Authenticator((rule(jwks=jwks(("RS256", _RSA_OTHER, "RS256"))),))  # the next generation's keys
    assert not rotated.rules[0].cache
    assert rotated.authenticate([bearer(text)], "", NOW).refusal.message == v.JWT_VERIFICATION_FAILS
    assert old.authenticate([bearer(text)], "", NOW).auth is not None  # the old generation answers as it did
