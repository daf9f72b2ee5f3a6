"""workers/route_policies.py, table by table: string matchers (workers/router.string_test, which it uses), fault decisions with a seeded random source, CORS
preflights and response headers, and consistent-hash keys (header, cookie, source IP, query parameter)."""

from __future__ import annotations

import random
import re

import pytest

from edge.table import MATCH_EXACT, MATCH_PREFIX, MATCH_PRESENT, MATCH_REGEX, Cors, Fault, HashPolicy, StringMatcher
from workers.balance import hash_key
from workers.route_policies import (
    PREFLIGHT_FORWARD,
    CompiledCors,
    cors_preflight,
    cors_response_headers,
    decide_fault,
    grpc_abort_headers,
    hash_for_request,
    set_cookie_value,
    string_test,
)

# ------------------------------------------------------------------------------------------------ string_test

STRINGS = [
    # (kind, value, ignore_case, input, matches)
    (MATCH_EXACT, "/a", False, "/a", True),
    (MATCH_EXACT, "/a", False, "/a/", False),
    (MATCH_EXACT, "/a", False, "/A", False),
    (MATCH_EXACT, "/A", True, "/a", True),
    (MATCH_EXACT, "", False, "", True),
    (MATCH_PREFIX, "/api", False, "/api/v1", True),
    (MATCH_PREFIX, "/api", False, "/apix", True),  # a plain string prefix
    (MATCH_PREFIX, "/api", False, "/ap", False),
    (MATCH_PREFIX, "/API", True, "/api/x", True),
    (MATCH_PREFIX, "", False, "anything", True),
    (MATCH_REGEX, "u[0-9]+", False, "u12", True),
    (MATCH_REGEX, "u[0-9]+", False, "xu12", False),  # a full match, not a search
    (MATCH_REGEX, "u[0-9]+", False, "u12x", False),
    (MATCH_REGEX, "abc", True, "ABC", False),  # ignore_case has no effect on a regex (Envoy's StringMatcher)
    (MATCH_REGEX, "(a+)+b", False, "a" * 60 + "!", False),  # RE2: linear, whatever the input
    (MATCH_PRESENT, "", False, "", True),
    (MATCH_PRESENT, "", False, "x", True),
]


@pytest.mark.parametrize(("kind", "value", "ignore_case", "text", "matches"), STRINGS)
def test_string_matchers(kind, value, ignore_case, text, matches):
    assert bool(string_test(StringMatcher(kind, value, ignore_case))(text)) is matches


# ------------------------------------------------------------------------------------------------ fault

FAULTS = [
    # (fault, draws, delayed share, http abort share, grpc abort share)
    (Fault(delay_s=0.5, delay_ppm=1_000_000), 0.5, 1.0, 0.0, 0.0),
    (Fault(delay_s=0.5, delay_ppm=250_000), 0.5, 0.25, 0.0, 0.0),
    (Fault(abort_status=503, abort_ppm=1_000_000), 0.0, 0.0, 1.0, 0.0),
    (Fault(abort_status=500, abort_ppm=500_000), 0.0, 0.0, 0.5, 0.0),
    (Fault(abort_grpc_status="UNAVAILABLE", abort_ppm=1_000_000), 0.0, 0.0, 0.0, 1.0),
    (Fault(delay_s=2.0, delay_ppm=1_000_000, abort_status=418, abort_ppm=1_000_000), 2.0, 1.0, 1.0, 0.0),  # independent
    (Fault(delay_s=1.0, abort_status=500), 1.0, 0.0, 0.0, 0.0),  # no percentage: never
    (Fault(delay_s=1.0, delay_ppm=1, abort_status=500, abort_ppm=1), 1.0, 0.0, 0.0, 0.0),  # one in a million
]


@pytest.mark.parametrize(("fault", "delay_s", "delayed", "aborted", "grpc"), FAULTS)
def test_fault_decisions(fault, delay_s, delayed, aborted, grpc):
    rng = random.Random(7)
    n = 20_000
    outcomes = [decide_fault(fault, rng) for _ in range(n)]
    assert {d for d, _, _ in outcomes} <= {0.0, delay_s}
    assert {s for _, s, _ in outcomes} <= {0, fault.abort_status}
    for share, count in ((delayed, sum(1 for d, _, _ in outcomes if d)), (aborted, sum(1 for _, s, _ in outcomes if s)), (grpc, sum(1 for _, _, g in outcomes if g))):
        assert abs(count - share * n) <= 4.5 * (n * share * (1 - share)) ** 0.5 + (0 if 0 < share < 1 else 0), (share, count)
    assert decide_fault(fault, random.Random(3)) == decide_fault(fault, random.Random(3))  # seeded: reproducible


@pytest.mark.parametrize(("name", "code"), [("UNAVAILABLE", b"14"), ("unavailable", b"14"), ("OK", b"0"), ("DEADLINE_EXCEEDED", b"4"), ("NO_SUCH", b"2")])
def test_grpc_abort_headers(name, code):
    assert grpc_abort_headers(name) == [(b"content-type", b"application/grpc"), (b"grpc-status", code), (b"grpc-message", b"fault filter abort")]


# ------------------------------------------------------------------------------------------------ CORS

POLICY = Cors(
    allow_origins=(StringMatcher(MATCH_EXACT, "https://ok.example"), StringMatcher(MATCH_PREFIX, "https://pre."), StringMatcher(MATCH_REGEX, r"https://[a-z]+\.rx\.example")),
    allow_methods="GET,POST",
    allow_headers="x-custom,content-type",
    expose_headers="x-exposed",
    max_age="86400",
    allow_credentials=True,
)
PREFLIGHT_HEADERS = [
    (b"access-control-allow-origin", b"https://ok.example"),
    (b"access-control-allow-methods", b"GET,POST"),
    (b"access-control-allow-headers", b"x-custom,content-type"),
    (b"access-control-max-age", b"86400"),
    (b"access-control-allow-credentials", b"true"),
]

PREFLIGHTS = [
    # (policy, method, origin, access-control-request-method, answer)
    (POLICY, b"OPTIONS", b"https://ok.example", b"POST", PREFLIGHT_HEADERS),
    (POLICY, b"OPTIONS", b"https://pre.anything", b"GET", [(b"access-control-allow-origin", b"https://pre.anything"), *PREFLIGHT_HEADERS[1:]]),
    (POLICY, b"OPTIONS", b"https://abc.rx.example", b"GET", [(b"access-control-allow-origin", b"https://abc.rx.example"), *PREFLIGHT_HEADERS[1:]]),
    (POLICY, b"OPTIONS", b"https://evil.example", b"GET", PREFLIGHT_FORWARD),  # unmatchedPreflights FORWARD (default)
    (Cors(allow_origins=POLICY.allow_origins, unmatched_preflights="IGNORE"), b"OPTIONS", b"https://evil.example", b"GET", []),
    (POLICY, b"OPTIONS", b"https://ok.example", None, None),  # no Access-Control-Request-Method: not a preflight
    (POLICY, b"OPTIONS", None, b"GET", None),
    (POLICY, b"GET", b"https://ok.example", b"GET", None),
    (Cors(allow_origins=POLICY.allow_origins[:1]), b"OPTIONS", b"https://ok.example", b"GET", [(b"access-control-allow-origin", b"https://ok.example")]),  # no credentials header unless true
]


@pytest.mark.parametrize(("policy", "method", "origin", "request_method", "answer"), PREFLIGHTS)
def test_cors_preflights(policy, method, origin, request_method, answer):
    assert cors_preflight(CompiledCors(policy), method, origin, request_method) == answer


@pytest.mark.parametrize(
    ("origin", "headers"),
    [
        (b"https://ok.example", [(b"access-control-allow-origin", b"https://ok.example"), (b"access-control-expose-headers", b"x-exposed"), (b"access-control-allow-credentials", b"true")]),
        (b"https://evil.example", []),
        (None, []),
        (b"https://ok.example.evil", []),  # exact is exact
    ],
)
def test_cors_response_headers(origin, headers):
    assert cors_response_headers(CompiledCors(POLICY), origin) == headers


# ------------------------------------------------------------------------------------------------ hashing

HEADERS = [(b"x-user", b"alice"), (b"cookie", b"a=1; session=s3cr3t; b=2"), (b"x-user", b"admin")]

HASHES = [
    # (policy, headers, query, peer, key hashed or None)
    (HashPolicy("header", "x-user"), HEADERS, "", b"10.0.0.1", b"alice,admin"),  # every value, joined
    (HashPolicy("header", "x-missing"), HEADERS, "", b"10.0.0.1", None),  # no key: round robin
    (HashPolicy("cookie", "session"), HEADERS, "", b"10.0.0.1", b"s3cr3t"),
    (HashPolicy("cookie", "sess"), HEADERS, "", b"10.0.0.1", None),  # a name is not a prefix
    (HashPolicy("source_ip"), HEADERS, "", b"10.0.0.1", b"10.0.0.1"),
    (HashPolicy("query", "user"), [], "a=1&user=u7&user=u8", b"1.1.1.1", b"u7"),  # the first
    (HashPolicy("query", "user"), [], "user=", b"1.1.1.1", b""),
    (HashPolicy("query", "user"), [], "username=x", b"1.1.1.1", None),
    (HashPolicy("query", "user"), [], "", b"1.1.1.1", None),
    (HashPolicy("unknown"), HEADERS, "", b"1.1.1.1", None),
]


@pytest.mark.parametrize(("policy", "headers", "query", "peer", "key"), HASHES)
def test_hash_keys(policy, headers, query, peer, key):
    value, set_cookie = hash_for_request(policy, headers, query, peer)
    assert set_cookie is None
    assert value == (hash_key(key) if key is not None else None)


def test_a_missing_cookie_with_a_ttl_is_generated_hashed_and_set():
    policy = HashPolicy("cookie", "session", cookie_path="/", cookie_ttl_s=60, cookie_attributes=(("SameSite", "Lax"), ("Secure", "")))
    value, set_cookie = hash_for_request(policy, [(b"cookie", b"other=1")], "", b"10.0.0.1")
    match = re.fullmatch(rb"session=([0-9a-f]{16}); Max-Age=60; Path=/; SameSite=Lax; Secure; HttpOnly", set_cookie)
    assert match is not None and value == hash_key(match.group(1))
    # The client sends it back: the same key, nothing set.
    assert hash_for_request(policy, [(b"cookie", b"session=" + match.group(1))], "", b"10.0.0.1") == (value, None)
    # Two clients without the cookie get different ones.
    assert hash_for_request(policy, [], "", b"10.0.0.1")[1] != set_cookie


def test_session_cookies_and_no_generation():
    assert set_cookie_value(HashPolicy("cookie", "s", cookie_ttl_s=0), b"v") == b"s=v; HttpOnly"  # a session cookie
    assert hash_for_request(HashPolicy("cookie", "s", cookie_ttl_s=-1), [], "", b"1.1.1.1") == (None, None)
