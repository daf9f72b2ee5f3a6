"""workers/headers.py: the header lists that go upstream and downstream, table-driven.

Header lists are h11-style [(lowercase name, value), ...]; every case states the whole input and checks the
exact output (or the part of it that the rule under test owns)."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.table import HeaderOps, HeaderRules
from workers.http.framing import RequestLine, check_fields
from workers.headers import (
    HOP_BY_HOP,
    CompiledHeaderOps,
    compile_rules,
    connection_tokens,
    downstream_response_headers,
    forwarded_for,
    has_underscore_name,
    header_value,
    new_request_id,
    upstream_request_headers,
)

PEER = b"10.0.0.9"
HOST = b"svc.example.com"


def joined(headers, name):
    found = [v for n, v in headers if n == name]
    return b",".join(found) if found else None


def upstream(headers, *, peer_ip=PEER, scheme=b"http", trusted_hops=0, generate_request_id=False, preserve_request_id=False, **kw):
    """The proxy's upstream headers for a client's list, with the edge decisions made as the proxy makes them.
    The request id is not generated unless the test is about it (deterministic output)."""
    fwd = forwarded_for(
        joined(headers, b"x-forwarded-for"),
        joined(headers, b"x-forwarded-proto"),
        joined(headers, b"x-request-id"),
        peer_ip=peer_ip,
        scheme=scheme,
        trusted_hops=trusted_hops,
        generate_request_id=generate_request_id,
        preserve_request_id=preserve_request_id,
    )
    kw.setdefault("host", HOST)
    # The Connection tokens as the codec reads them (workers/http/framing.check_fields).
    if "nominated" not in kw:
        fields = [(b"host", b"client.example"), *(h for h in headers if h[0] == b"connection")]
        kw["nominated"] = check_fields(RequestLine(b"GET", b"/", b"1.1"), fields, None).nominated
    return upstream_request_headers(headers, forwarded=fwd, **kw)


def names(headers):
    return [n for n, _ in headers]


def values(headers, name):
    return [v for n, v in headers if n == name]


def ops(set=(), add=(), remove=()):
    return CompiledHeaderOps(HeaderOps(set=tuple(set), add=tuple(add), remove=tuple(remove)))


# ---------------------------------------------------------------------------------------------------
# The common case, exactly


def test_plain_request_exact_output():
    client = [(b"host", b"client.example"), (b"user-agent", b"curl/8"), (b"accept", b"*/*")]
    assert upstream(client) == [
        (b"host", HOST),
        (b"user-agent", b"curl/8"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", PEER),
        (b"x-forwarded-proto", b"http"),
        (b"x-envoy-external-address", PEER),
        (b"x-envoy-attempt-count", b"1"),
    ]


def test_client_list_is_not_modified():
    client = [(b"host", b"a"), (b"connection", b"keep-alive"), (b"x-forwarded-for", b"1.1.1.1")]
    before = list(client)
    upstream(client, route_ops=ops(set=[("x", "1")]), destination_ops=ops(add=[("y", "2")]))
    assert client == before


# ---------------------------------------------------------------------------------------------------
# Hop-by-hop headers, both directions

HOP_CASES = [
    ("connection", [(b"connection", b"keep-alive")], []),
    ("keep-alive", [(b"keep-alive", b"timeout=5")], []),
    ("proxy-connection", [(b"proxy-connection", b"keep-alive")], []),
    ("te", [(b"te", b"gzip, deflate")], []),
    ("trailer", [(b"trailer", b"x-checksum")], []),
    ("transfer-encoding", [(b"transfer-encoding", b"chunked")], []),
    ("upgrade", [(b"upgrade", b"websocket"), (b"connection", b"upgrade")], []),
    ("listed-in-connection", [(b"connection", b"x-secret"), (b"x-secret", b"1"), (b"x-kept", b"2")],
     [(b"x-kept", b"2")]),
    ("listed-several-tokens", [(b"connection", b"close, X-A ,x-b,,"), (b"x-a", b"1"), (b"x-b", b"2"),
                               (b"x-c", b"3")], [(b"x-c", b"3")]),
    ("listed-in-second-connection", [(b"connection", b"close"), (b"connection", b"x-a"), (b"x-a", b"1"),
                                     (b"x-c", b"3")], [(b"x-c", b"3")]),
    ("no-connection-keeps-all", [(b"x-a", b"1"), (b"x-b", b"2")], [(b"x-a", b"1"), (b"x-b", b"2")]),
    # The proxy's own decisions cannot be nominated away: framing is the proxy's, Host is the route's.
    ("nominated-framing-and-host-kept", [(b"connection", b"content-length, host, x-request-id"), (b"content-length", b"5"),
                                         (b"x-c", b"3")], [(b"x-c", b"3")]),
]


def test_client_framing_never_crosses_and_the_proxy_frames_the_body():
    client = [(b"host", b"a"), (b"connection", b"content-length"), (b"content-length", b"5"), (b"transfer-encoding", b"chunked")]
    out = upstream(client, content_length=5, nominated=frozenset({b"content-length"}))  # as a codec never hands over
    assert values(out, b"content-length") == [b"5"] and values(out, b"transfer-encoding") == []
    assert values(out, b"host") == [HOST]
    out = upstream([(b"host", b"a"), (b"content-length", b"99")], chunked=True)
    assert values(out, b"content-length") == [] and values(out, b"transfer-encoding") == [b"chunked"]
    assert values(upstream([(b"host", b"a"), (b"content-length", b"99")]), b"content-length") == []


@pytest.mark.parametrize(("given", "kept"), [c[1:] for c in HOP_CASES], ids=[c[0] for c in HOP_CASES])
def test_hop_by_hop_removed_upstream(given, kept):
    out = upstream(given)
    assert [h for h in out if h[0] not in {b"host", b"x-forwarded-for", b"x-forwarded-proto",
                                           b"x-envoy-external-address", b"x-envoy-attempt-count"}] == kept
    assert not set(names(out)) & HOP_BY_HOP


def test_te_trailers_alone_crosses_upstream():
    # Envoy forwards `te: trailers` (gRPC needs it) and strips every other TE value.
    assert values(upstream([(b"te", b"trailers, gzip;q=0.5")]), b"te") == [b"trailers"]
    assert values(upstream([(b"te", b"gzip"), (b"te", b"Trailers")]), b"te") == [b"trailers"]
    assert values(upstream([(b"te", b"trailersx")]), b"te") == []


@pytest.mark.parametrize(("given", "kept"), [c[1:] for c in HOP_CASES], ids=[c[0] for c in HOP_CASES])
def test_hop_by_hop_removed_downstream(given, kept):
    assert downstream_response_headers(given, server=b"") == kept


@pytest.mark.parametrize(
    ("headers", "tokens"),
    [
        ([], frozenset()),
        ([(b"x", b"close")], frozenset()),
        ([(b"connection", b"close")], frozenset({b"close"})),
        ([(b"connection", b" Keep-Alive , X-Foo ")], frozenset({b"keep-alive", b"x-foo"})),
        ([(b"connection", b",,")], frozenset()),
        ([(b"connection", b"a"), (b"connection", b"b")], frozenset({b"a", b"b"})),
    ],
)
def test_connection_tokens(headers, tokens):
    assert connection_tokens(headers) == tokens


# ---------------------------------------------------------------------------------------------------
# X-Forwarded-For / X-Forwarded-Proto


@pytest.mark.parametrize(
    ("client", "xff"),
    [
        ([], PEER),
        # Envoy appends with "," (no space) and joins repeated headers the same way.
        ([(b"x-forwarded-for", b"1.1.1.1")], b"1.1.1.1," + PEER),
        ([(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2")], b"1.1.1.1, 2.2.2.2," + PEER),
        ([(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")], b"1.1.1.1,2.2.2.2," + PEER),
        ([(b"x-forwarded-for", b"1.1.1.1"), (b"accept", b"*/*"), (b"x-forwarded-for", b"2.2.2.2"),
          (b"x-forwarded-for", b"3.3.3.3")], b"1.1.1.1,2.2.2.2,3.3.3.3," + PEER),
    ],
    ids=["absent", "one", "one-with-list", "two-headers", "three-headers"],
)
def test_x_forwarded_for_appended(client, xff):
    out = upstream(client)
    assert values(out, b"x-forwarded-for") == [xff]


@pytest.mark.parametrize(
    ("client", "scheme"),
    [
        ([], b"http"),
        ([(b"x-forwarded-proto", b"https")], b"http"),
        ([(b"x-forwarded-proto", b"http")], b"https"),
        ([(b"x-forwarded-proto", b"http"), (b"x-forwarded-proto", b"ftp")], b"https"),
    ],
)
def test_x_forwarded_proto_overwritten(client, scheme):
    assert values(upstream(client, scheme=scheme), b"x-forwarded-proto") == [scheme]


# gatewayTopology.numTrustedProxies: (id, hops, client XFF, client XFP, connection scheme,
#   expected client address, taken from XFF?, X-Forwarded-Proto sent, scheme for routing)
TRUSTED_CASES = [
    ("untrusted-ignores-xff", 0, b"203.0.113.7", None, b"http", PEER, False, b"http", "http"),
    ("untrusted-overwrites-xfp", 0, b"203.0.113.7", b"https", b"http", PEER, False, b"http", "http"),
    ("one-hop", 1, b"203.0.113.7", None, b"http", b"203.0.113.7", True, b"http", "http"),
    ("one-hop-last-entry", 1, b"198.51.100.1, 203.0.113.7", None, b"http", b"203.0.113.7", True, b"http", "http"),
    ("two-hops", 2, b"198.51.100.1, 203.0.113.7", None, b"http", b"198.51.100.1", True, b"http", "http"),
    ("two-hops-spoofed-left-ignored", 2, b"6.6.6.6,198.51.100.1,203.0.113.7", None, b"http", b"198.51.100.1", True, b"http", "http"),
    ("too-few-entries", 2, b"203.0.113.7", None, b"http", PEER, False, b"http", "http"),
    ("not-an-address", 1, b"unknown", None, b"http", PEER, False, b"http", "http"),
    ("address-with-port", 1, b"203.0.113.7:4711", None, b"http", PEER, False, b"http", "http"),
    ("empty-entry", 1, b"203.0.113.7,", None, b"http", PEER, False, b"http", "http"),
    ("ipv6-normalised", 1, b" 2001:DB8:0:0::1 ", None, b"http", b"2001:db8::1", True, b"http", "http"),
    ("ipv6-bracketed", 1, b"[2001:db8::1]", None, b"http", PEER, False, b"http", "http"),
    ("no-xff-peer", 1, None, None, b"http", PEER, False, b"http", "http"),
    ("trusted-xfp-kept", 1, b"203.0.113.7", b"https", b"http", b"203.0.113.7", True, b"https", "https"),
    ("trusted-xfp-kept-without-xff", 1, None, b"https", b"http", PEER, False, b"https", "https"),
    ("trusted-xfp-odd-value-kept-scheme-not", 1, b"203.0.113.7", b"ftp", b"https", b"203.0.113.7", True, b"ftp", "https"),
    ("trusted-xfp-case", 1, b"203.0.113.7", b"HTTP", b"https", b"203.0.113.7", True, b"HTTP", "http"),
]


@pytest.mark.parametrize(
    ("hops", "xff", "xfp", "scheme", "client_ip", "from_xff", "proto", "routing_scheme"),
    [c[1:] for c in TRUSTED_CASES],
    ids=[c[0] for c in TRUSTED_CASES],
)
def test_trusted_proxies(hops, xff, xfp, scheme, client_ip, from_xff, proto, routing_scheme):
    fwd = forwarded_for(xff, xfp, None, peer_ip=PEER, scheme=scheme, trusted_hops=hops, generate_request_id=False)
    assert (fwd.client_ip, fwd.client_from_xff, fwd.proto, fwd.scheme) == (client_ip, from_xff, proto, routing_scheme)
    assert fwd.xff == (PEER if xff is None else xff + b"," + PEER)  # appended whatever is trusted
    client = ([(b"x-forwarded-for", xff)] if xff is not None else []) + ([(b"x-forwarded-proto", xfp)] if xfp else [])
    out = upstream(client, trusted_hops=hops, scheme=scheme)
    assert values(out, b"x-envoy-external-address") == [client_ip]
    assert values(out, b"x-forwarded-proto") == [proto]


# ---------------------------------------------------------------------------------------------------
# Headers the proxy owns: client copies dropped, ours added

@pytest.mark.parametrize(
    "name",
    [b"host", b"expect", b"x-forwarded-proto", b"x-envoy-attempt-count", b"x-envoy-expected-rq-timeout-ms",
     b"x-envoy-original-path", b"x-envoy-internal", b"x-envoy-external-address", b"x-forwarded-client-cert",
     # Envoy's control headers, stripped from edge requests (cleanInternalHeaders)
     b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries", b"x-envoy-upstream-rq-timeout-ms",
     b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-retriable-status-codes", b"x-envoy-retriable-header-names",
     b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-timeout-alt-response", b"x-envoy-force-trace",
     b"x-envoy-ip-tags", b"x-envoy-original-url", b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-decorator-operation",
     b"x-envoy-downstream-service-cluster", b"x-envoy-downstream-service-node"],
)
def test_client_copy_of_proxy_header_dropped(name):
    out = upstream([(name, b"forged")])
    assert (name, b"forged") not in out


def test_other_x_envoy_headers_pass():
    out = upstream([(b"x-envoy-custom", b"1"), (b"x-envoy-peer-metadata-id", b"p")])
    assert values(out, b"x-envoy-custom") == [b"1"]
    assert values(out, b"x-envoy-peer-metadata-id") == [b"p"]


def test_host_is_the_given_one_and_first():
    out = upstream([(b"accept", b"*/*"), (b"host", b"client.example")], host=b"rewritten.example")
    assert out[0] == (b"host", b"rewritten.example")
    assert values(out, b"host") == [b"rewritten.example"]


def test_expect_dropped():
    out = upstream([(b"expect", b"100-continue"), (b"content-length", b"5")], content_length=5)
    assert b"expect" not in names(out)
    assert values(out, b"content-length") == [b"5"]


def test_request_id_generated_when_absent():
    out = upstream([], generate_request_id=True)
    (rid,) = values(out, b"x-request-id")
    parsed = uuid.UUID(rid.decode())
    assert parsed.version == 4
    assert str(parsed).encode() == rid  # canonical lowercase 8-4-4-4-12 form


def test_request_ids_differ():
    ids = {values(upstream([], generate_request_id=True), b"x-request-id")[0] for _ in range(50)}
    assert len(ids) == 50


def test_new_request_id_is_uuid4():
    for _ in range(1000):  # the version/variant bits are forced, every other bit random
        rid = new_request_id()
        parsed = uuid.UUID(rid.decode())
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed).encode() == rid


def test_request_id_replaced_at_the_edge():
    # Istio does not set Envoy's preserve_external_request_id: an edge request's id is always a fresh one.
    (rid,) = values(upstream([(b"x-request-id", b"client-chosen")], generate_request_id=True), b"x-request-id")
    assert uuid.UUID(rid.decode()).version == 4


@pytest.mark.parametrize(("generate", "preserve"), [(True, True), (False, False), (False, True)])
def test_request_id_kept_when_preserved_or_not_generated(generate, preserve):
    out = upstream([(b"x-request-id", b"client-chosen")], generate_request_id=generate, preserve_request_id=preserve)
    assert values(out, b"x-request-id") == [b"client-chosen"]


def test_request_id_generated_when_preserving_and_absent():
    (rid,) = values(upstream([], generate_request_id=True, preserve_request_id=True), b"x-request-id")
    assert uuid.UUID(rid.decode()).version == 4


def test_request_id_not_generated_when_disabled():
    assert b"x-request-id" not in names(upstream([], generate_request_id=False))


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_attempt_count(attempt):
    out = upstream([(b"x-envoy-attempt-count", b"99")], attempt=attempt)
    assert values(out, b"x-envoy-attempt-count") == [str(attempt).encode()]


@pytest.mark.parametrize(("timeout_ms", "expected"), [(0, []), (1, [b"1"]), (15000, [b"15000"])])
def test_expected_timeout_header(timeout_ms, expected):
    out = upstream([(b"x-envoy-expected-rq-timeout-ms", b"7")], timeout_ms=timeout_ms)
    assert values(out, b"x-envoy-expected-rq-timeout-ms") == expected


@pytest.mark.parametrize(("original", "expected"), [(None, []), (b"/old/path?q=1", [b"/old/path?q=1"])])
def test_original_path(original, expected):
    out = upstream([(b"x-envoy-original-path", b"/forged")], original_path=original)
    assert values(out, b"x-envoy-original-path") == expected


@pytest.mark.parametrize(
    ("client", "chunked", "expected"),
    [
        ([], False, []),
        ([], True, [b"chunked"]),
        ([(b"transfer-encoding", b"gzip, chunked")], True, [b"chunked"]),
        ([(b"transfer-encoding", b"chunked")], False, []),
    ],
)
def test_transfer_encoding_only_for_chunked(client, chunked, expected):
    assert values(upstream(client, chunked=chunked), b"transfer-encoding") == expected


def test_full_upstream_order():
    out = upstream(
        [(b"x-request-id", b"r1"), (b"a", b"1")],
        attempt=2,
        timeout_ms=500,
        original_path=b"/o",
        chunked=True,
        scheme=b"https",
    )
    assert out == [
        (b"host", HOST),
        (b"a", b"1"),
        (b"x-forwarded-for", PEER),
        (b"x-forwarded-proto", b"https"),
        (b"x-envoy-external-address", PEER),
        (b"x-request-id", b"r1"),
        (b"x-envoy-attempt-count", b"2"),
        (b"x-envoy-expected-rq-timeout-ms", b"500"),
        (b"x-envoy-original-path", b"/o"),
        (b"transfer-encoding", b"chunked"),
    ]


# ---------------------------------------------------------------------------------------------------
# Header operations (route level, then destination level)

OPS_CASES = [
    # (id, client headers, route ops, destination ops, expected values of "x-h")
    ("route-set-adds", [], ops(set=[("x-h", "r")]), None, [b"r"]),
    ("route-set-overwrites", [(b"x-h", b"c1"), (b"x-h", b"c2")], ops(set=[("x-h", "r")]), None, [b"r"]),
    ("route-add-appends", [(b"x-h", b"c")], ops(add=[("x-h", "r")]), None, [b"c", b"r"]),
    ("route-add-when-absent", [], ops(add=[("x-h", "r")]), None, [b"r"]),
    ("route-remove", [(b"x-h", b"c1"), (b"x-h", b"c2")], ops(remove=["x-h"]), None, []),
    ("route-remove-absent", [], ops(remove=["x-h"]), None, []),
    ("route-set-then-add", [(b"x-h", b"c")], ops(set=[("x-h", "s")], add=[("x-h", "a")]), None, [b"s", b"a"]),
    ("dest-set-wins-over-route-set", [], ops(set=[("x-h", "r")]), ops(set=[("x-h", "d")]), [b"d"]),
    ("dest-set-wins-over-route-add", [(b"x-h", b"c")], ops(add=[("x-h", "r")]), ops(set=[("x-h", "d")]), [b"d"]),
    ("dest-add-after-route-set", [], ops(set=[("x-h", "r")]), ops(add=[("x-h", "d")]), [b"r", b"d"]),
    ("dest-remove-wins", [], ops(set=[("x-h", "r")]), ops(remove=["x-h"]), []),
    ("route-remove-then-dest-add", [(b"x-h", b"c")], ops(remove=["x-h"]), ops(add=[("x-h", "d")]), [b"d"]),
    ("dest-only", [(b"x-h", b"c")], None, ops(set=[("x-h", "d")]), [b"d"]),
    ("uppercase-names-lowercased", [(b"x-h", b"c")], ops(set=[("X-H", "r")]), None, [b"r"]),
    ("uppercase-remove-lowercased", [(b"x-h", b"c")], ops(remove=["X-H"]), None, []),
]


@pytest.mark.parametrize(("client", "route", "dest", "expected"), [c[1:] for c in OPS_CASES],
                         ids=[c[0] for c in OPS_CASES])
def test_header_ops_request(client, route, dest, expected):
    out = upstream(client + [(b"keep", b"k")], route_ops=route, destination_ops=dest)
    assert values(out, b"x-h") == expected
    assert values(out, b"keep") == [b"k"]  # operations touch only their names


@pytest.mark.parametrize(("upstream_headers", "route", "dest", "expected"), [c[1:] for c in OPS_CASES],
                         ids=[c[0] for c in OPS_CASES])
def test_header_ops_response(upstream_headers, route, dest, expected):
    out = downstream_response_headers(upstream_headers + [(b"keep", b"k")], server=b"istio-envoy",
                                      route_ops=route, destination_ops=dest)
    assert values(out, b"x-h") == expected
    assert values(out, b"keep") == [b"k"]


def test_route_ops_run_after_proxy_headers():
    """Route operations see (and may override) what the proxy set itself, as Envoy's do."""
    out = upstream([], route_ops=ops(set=[("x-forwarded-proto", "forced")], remove=["x-envoy-attempt-count"]))
    assert values(out, b"x-forwarded-proto") == [b"forced"]
    assert b"x-envoy-attempt-count" not in names(out)


def test_ops_apply_order_set_then_add():
    compiled = ops(set=[("a", "1"), ("b", "2")], add=[("c", "3")], remove=["d"])
    assert compiled.apply([(b"d", b"x"), (b"a", b"old"), (b"z", b"z")]) == [
        (b"z", b"z"), (b"a", b"1"), (b"b", b"2"), (b"c", b"3")]


def test_compiled_ops_are_bytes():
    compiled = ops(set=[("X-A", "v1")], add=[("x-b", "v2")], remove=["X-C"])
    assert compiled.set == ((b"x-a", b"v1"),)
    assert compiled.add == ((b"x-b", b"v2"),)
    assert compiled.remove == frozenset({b"x-c"})
    assert compiled.drop == frozenset({b"x-a", b"x-c"})


def test_compile_rules():
    assert compile_rules(None) == (None, None)
    request, response = compile_rules(HeaderRules(request=HeaderOps(set=(("a", "1"),))))
    assert isinstance(request, CompiledHeaderOps) and request.set == ((b"a", b"1"),)
    assert response is None
    request, response = compile_rules(HeaderRules(response=HeaderOps(remove=("b",))))
    assert request is None
    assert response is not None and response.remove == frozenset({b"b"})


# ---------------------------------------------------------------------------------------------------
# Responses


@pytest.mark.parametrize(
    ("upstream_headers", "server", "expected"),
    [
        ([], b"istio-envoy", [b"istio-envoy"]),
        ([(b"server", b"nginx")], b"istio-envoy", [b"istio-envoy"]),
        ([(b"server", b"nginx"), (b"server", b"extra")], b"edge", [b"edge"]),
        ([(b"server", b"nginx")], b"", [b"nginx"]),  # "" passes the upstream's through
        ([], b"", []),
    ],
)
def test_server_header(upstream_headers, server, expected):
    assert values(downstream_response_headers(upstream_headers, server=server), b"server") == expected


@pytest.mark.parametrize(("ms", "expected"), [(None, []), (0, [b"0"]), (12, [b"12"])])
def test_upstream_service_time(ms, expected):
    out = downstream_response_headers([(b"x-envoy-upstream-service-time", b"999")], server=b"s",
                                      service_time_ms=ms)
    assert values(out, b"x-envoy-upstream-service-time") == expected


def test_full_response_exact_output():
    upstream_headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"server", b"gunicorn"),
        (b"connection", b"keep-alive, x-internal"),
        (b"x-internal", b"secret"),
        (b"keep-alive", b"timeout=5"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    out = downstream_response_headers(
        upstream_headers,
        server=b"istio-envoy",
        service_time_ms=7,
        extra=[(b"x-extra", b"e")],
        route_ops=ops(add=[("x-route", "r")]),
    )
    assert out == [
        (b"content-type", b"text/plain"),
        (b"content-length", b"5"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"server", b"istio-envoy"),
        (b"x-envoy-upstream-service-time", b"7"),
        (b"x-extra", b"e"),
        (b"x-route", b"r"),
    ]


def test_response_accepts_any_iterable():
    out = downstream_response_headers(iter([(b"connection", b"x-a"), (b"x-a", b"1"), (b"b", b"2")]), server=b"")
    assert out == [(b"b", b"2")]


# ---------------------------------------------------------------------------------------------------
# Helpers


@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ([], None),
        ([(b"x-a", b"1"), (b"x-b", b"2")], None),
        ([(b"x_a", b"1")], b"x_a"),
        ([(b"ok", b"1"), (b"under_score", b"2"), (b"second_one", b"3")], b"under_score"),
        ([(b"x-a", b"has_underscore_in_value")], None),
    ],
)
def test_has_underscore_name(headers, found):
    assert has_underscore_name(headers) == found


@pytest.mark.parametrize(
    ("headers", "name", "value"),
    [
        ([], b"a", None),
        ([(b"b", b"1")], b"a", None),
        ([(b"a", b"1")], b"a", b"1"),
        ([(b"a", b"")], b"a", b""),
        ([(b"a", b"1"), (b"b", b"x"), (b"a", b"2")], b"a", b"1, 2"),
        ([(b"a", b"1"), (b"a", b"2"), (b"a", b"3")], b"a", b"1, 2, 3"),
    ],
)
def test_header_value(headers, name, value):
    assert header_value(headers, name) == value


# Any X-Forwarded-For a client can send: never an exception, and the client address is either the peer or a
# well-formed address that the trusted hop put at its place in the list.
_XFF_ENTRY = st.one_of(
    st.ip_addresses().map(lambda a: str(a).encode()),
    st.binary(max_size=12),
    st.sampled_from([b"", b" ", b"unknown", b"[::1]", b"1.2.3.4:80", b"01.2.3.4", b"fe80::1%eth0", b"\xff\xfe"]),
)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(_XFF_ENTRY, min_size=1, max_size=6), hops=st.integers(min_value=0, max_value=8), spaces=st.booleans())
def test_any_forwarded_for_gives_the_peer_or_the_trusted_entry(entries, hops, spaces):
    xff = (b", " if spaces else b",").join(entries)
    fwd = forwarded_for(xff, None, None, peer_ip=PEER, scheme=b"http", trusted_hops=hops, generate_request_id=False)
    assert fwd.xff == xff + b"," + PEER
    if not fwd.client_from_xff:
        assert fwd.client_ip == PEER
        return
    parts = xff.split(b",")
    assert 1 <= hops <= len(parts)
    assert fwd.client_ip == str(ipaddress.ip_address(parts[-hops].strip().decode())).encode()
