"""workers/paths.py: request-target splitting and Envoy-style path normalisation (RFC 3986 §5.2.4 dot
segments, unreserved escapes decoded, other escapes uppercased, "//" never merged), table-driven plus a
hypothesis property (idempotent, no dot segments left)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from workers.paths import normalize_path, parse_authority, split_target

# ---------------------------------------------------------------------------------------------------
# split_target: (authority or None, path, query)

SPLIT_CASES = [
    # origin-form
    (b"/", (None, b"/", b"")),
    (b"/a/b", (None, b"/a/b", b"")),
    (b"/a?x=1&y=2", (None, b"/a", b"x=1&y=2")),
    (b"/a?", (None, b"/a", b"")),
    (b"/?q", (None, b"/", b"q")),
    (b"/a?x=1?y=2", (None, b"/a", b"x=1?y=2")),  # only the first "?" splits
    (b"/a?u=http://x/y", (None, b"/a", b"u=http://x/y")),
    (b"//double", (None, b"//double", b"")),
    # fragments are dropped wherever they are
    (b"/a#frag", (None, b"/a", b"")),
    (b"/a?x=1#frag", (None, b"/a", b"x=1")),
    (b"/a#frag?notquery", (None, b"/a", b"")),
    (b"/#", (None, b"/", b"")),
    # absolute-form
    (b"http://example.com/a/b", (b"example.com", b"/a/b", b"")),
    (b"http://example.com", (b"example.com", b"/", b"")),
    (b"http://example.com/", (b"example.com", b"/", b"")),
    (b"http://example.com?x=1", (b"example.com", b"/", b"x=1")),
    (b"http://example.com/p?x=1", (b"example.com", b"/p", b"x=1")),
    (b"http://example.com:8080/p", (b"example.com:8080", b"/p", b"")),
    (b"http://example.com:8080", (b"example.com:8080", b"/", b"")),
    (b"https://secure.example.com/x?y", (b"secure.example.com", b"/x", b"y")),
    (b"HTTP://Example.COM/A", (b"Example.COM", b"/A", b"")),  # case is the router's business
    (b"http://[::1]:8080/p", (b"[::1]:8080", b"/p", b"")),
    (b"http://example.com/p#f", (b"example.com", b"/p", b"")),
    (b"http://example.com/p?q#f", (b"example.com", b"/p", b"q")),
    (b"http://example.com?q#f", (b"example.com", b"/", b"q")),
    (b"http://example.com#f", (b"example.com", b"/", b"")),
    (b"http://example.com:80#f", (b"example.com:80", b"/", b"")),
    (b"http://example.com//a", (b"example.com", b"//a", b"")),
    # asterisk-form (OPTIONS *)
    (b"*", (None, b"*", b"")),
    # neither: handed back as a path that normalize_path rejects
    (b"example.com:443", (None, b"example.com:443", b"")),
    (b"a/b", (None, b"a/b", b"")),
    (b"x?u=http://evil/admin", (None, b"x", b"u=http://evil/admin")),  # "://" in the query is no scheme
    (b"a b://host/p", (None, b"a b://host/p", b"")),
    (b"1http://host/p", (None, b"1http://host/p", b"")),  # schemes start with a letter
    (b"://host/p", (None, b"://host/p", b"")),
    (b"", (None, b"", b"")),
]


@pytest.mark.parametrize(("target", "expected"), SPLIT_CASES, ids=[repr(c[0])[2:-1] or "empty" for c in SPLIT_CASES])
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize("scheme", [b"http", b"https", b"ws", b"coap+tcp", b"a.b-c"])
def test_split_target_any_valid_scheme(scheme):
    assert split_target(scheme + b"://h:1/p?q") == (b"h:1", b"/p", b"q")


# ---------------------------------------------------------------------------------------------------
# normalize_path

RFC_CASES = [
    # RFC 3986 §5.2.4 worked examples (the absolute ones) and §5.4 reference resolution results.
    (b"/a/b/c/./../../g", b"/a/g"),
    (b"/b/c/./../../g", b"/g"),
    (b"/a/b/c/../../../g", b"/g"),
    (b"/a/b/c/../../../../g", b"/g"),
    (b"/./g", b"/g"),
    (b"/../g", b"/g"),
    (b"/a/b/c/g.", b"/a/b/c/g."),
    (b"/a/b/c/.g", b"/a/b/c/.g"),
    (b"/a/b/c/g..", b"/a/b/c/g.."),
    (b"/a/b/c/..g", b"/a/b/c/..g"),
    (b"/a/b/c/./../g", b"/a/b/g"),
    (b"/a/b/c/./g/.", b"/a/b/c/g/"),
    (b"/a/b/c/g/./h", b"/a/b/c/g/h"),
    (b"/a/b/c/g/../h", b"/a/b/c/h"),
    (b"/a/b/c/g;x=1/./y", b"/a/b/c/g;x=1/y"),
    (b"/a/b/c/g;x=1/../y", b"/a/b/c/y"),
    (b"/a/b/c/.", b"/a/b/c/"),
    (b"/a/b/c/./", b"/a/b/c/"),
    (b"/a/b/c/..", b"/a/b/"),
    (b"/a/b/c/../", b"/a/b/"),
    (b"/a/b/c/../..", b"/a/"),
    # start, middle, end; root
    (b"/.", b"/"),
    (b"/..", b"/"),
    (b"/./", b"/"),
    (b"/../", b"/"),
    (b"/../..", b"/"),
    (b"/../../a", b"/a"),
    (b"/./a", b"/a"),
    (b"/a/./b", b"/a/b"),
    (b"/a/../b", b"/b"),
    (b"/a/.", b"/a/"),
    (b"/a/..", b"/"),
    (b"/a/./.././b/", b"/b/"),
    (b"/...", b"/..."),
    (b"/.well-known/acme", b"/.well-known/acme"),
    (b"/a/.b/..c/", b"/a/.b/..c/"),
]

SLASH_CASES = [
    # "//" is never merged (Istio leaves merge_slashes off), but an empty segment still counts as one.
    (b"//", b"//"),
    (b"//a//b//", b"//a//b//"),
    (b"//a/./b", b"//a/b"),
    (b"/a//../b", b"/a/b"),
    (b"/a//./b", b"/a//b"),
    (b"/..//a", b"//a"),
    (b"/a/b//..", b"/a/b/"),
]

ESCAPE_CASES = [
    (b"/%7E", b"/~"),
    (b"/%7e", b"/~"),
    (b"/%41", b"/A"),
    (b"/%61%62%63", b"/abc"),
    (b"/%30%39", b"/09"),
    (b"/%2D%2E%5F%7E", b"/-._~"),
    (b"/a%2Fb", b"/a%2Fb"),  # %2F is never decoded: it would change the path's segments
    (b"/a%2fb", b"/a%2Fb"),
    (b"/%20", b"/%20"),
    (b"/%3a%3A", b"/%3A%3A"),
    (b"/%25", b"/%25"),
    (b"/%2541", b"/%2541"),  # no double decoding
    (b"/%ff%00", b"/%FF%00"),
    (b"/%", b"/%"),  # malformed escapes are kept as they are
    (b"/%4", b"/%4"),
    (b"/%G1", b"/%G1"),
    (b"/%4g", b"/%4g"),
    (b"/%%41", b"/%%41"),  # decoding "%41" here would make a new escape "%A..." of the kept "%": stays
    (b"/%%", b"/%%"),
    (b"/100%", b"/100%"),
    (b"/a%/b", b"/a%/b"),
    (b"/%2E", b"/"),  # an encoded dot is a dot (as Envoy's canonicaliser treats it)
    (b"/a/%2E%2E/b", b"/b"),
    (b"/a/%2e%2e", b"/"),
    (b"/a/.%2E/b", b"/b"),
    (b"/a/%2E/b", b"/a/b"),
    (b"/a%2F..%2Fb", b"/a%2F..%2Fb"),  # no real "/" around the dots: not a segment
]

OTHER_CASES = [
    (b"*", b"*"),
    (b"", None),
    (b"a", None),
    (b"a/b", None),
    (b"./a", None),
    (b"../a", None),
    (b"example.com:443", None),
    (b"%2Fa", None),
]


@pytest.mark.parametrize(("path", "expected"), RFC_CASES, ids=[c[0].decode() for c in RFC_CASES])
def test_dot_segments(path, expected):
    assert normalize_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), SLASH_CASES, ids=[c[0].decode() for c in SLASH_CASES])
def test_slashes_never_merged(path, expected):
    assert normalize_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), ESCAPE_CASES, ids=[c[0].decode() for c in ESCAPE_CASES])
def test_escapes(path, expected):
    assert normalize_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), OTHER_CASES, ids=[repr(c[0]) for c in OTHER_CASES])
def test_not_a_path(path, expected):
    assert normalize_path(path) == expected


@pytest.mark.parametrize(
    "path",
    [b"/", b"/a", b"/a/b/c", b"/a/b/", b"//a//b", b"/a.b/c..d", b"/a-b_c~d", b"/x;y=1,z", b"/caf\xc3\xa9", b"*"],
)
def test_nothing_to_do_returns_the_same_object(path):
    assert normalize_path(path) is path


@pytest.mark.parametrize("path", [b"/a%2Fb", b"/%20", b"/.well-known"])
def test_already_normal_paths_compare_equal(path):
    assert normalize_path(path) == path


# ---------------------------------------------------------------------------------------------------
# Properties

PATH_ALPHABET = b"/.%aAfF02457eE~-_;"
paths = st.builds(lambda body: b"/" + body, st.lists(st.sampled_from(list(PATH_ALPHABET)), max_size=24).map(bytes))


def _check_normal(out: bytes) -> None:
    assert out.startswith(b"/")
    for bad in (b"/./", b"/../"):
        assert bad not in out
    assert not out.endswith(b"/.") and not out.endswith(b"/..")


@settings(max_examples=2000, deadline=None)
@given(paths)
@example(b"/%%3441")
@example(b"/%4%31")
@example(b"/%%414")
@example(b"/%2%45")
@example(b"/a/%2E%2E/%2E")
@example(b"/%2E%2E%2F..")
def test_normalize_is_idempotent_and_leaves_no_dot_segments(path):
    out = normalize_path(path)
    assert out is not None
    _check_normal(out)
    assert normalize_path(out) == out


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=32))
def test_normalize_any_bytes(data):
    out = normalize_path(data)
    if data == b"*":
        assert out == b"*"
    elif not data.startswith(b"/"):
        assert out is None
    else:
        assert out is not None
        _check_normal(out)
        assert normalize_path(out) == out


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=32))
@example(b"http://h#f")
@example(b"http://h?#")
@example(b"x?http://h/#")
def test_split_target_never_raises_and_drops_fragments(data):
    authority, path, query = split_target(data)
    assert b"#" not in path and b"#" not in query
    if authority is not None:
        assert b"#" not in authority and b"/" not in authority and b"?" not in authority
        assert path.startswith(b"/")


# ------------------------------------------------------------------------------------------ authorities

AUTHORITY_CASES = [
    (b"app.example.com", (b"app.example.com", 0)),
    (b"App.Example.COM:8080", (b"app.example.com", 8080)),
    (b"", (b"", 0)),  # HTTP/1.0 without Host, or an empty Host: routed as "" (the catch-all)
    (b":80", (b"", 80)),
    (b"x:", (b"x", 0)),  # RFC 3986: port = *DIGIT
    (b".x", (b".x", 0)),  # a reg-name may hold dots anywhere
    (b"10.0.0.1:443", (b"10.0.0.1", 443)),
    (b"[::1]", (b"[::1]", 0)),
    (b"[2001:DB8::1]:8443", (b"[2001:db8::1]", 8443)),
    (b"%41pp.example", (b"%41pp.example", 0)),
    (b"a-b_c~d!$&'()*+,;=", (b"a-b_c~d!$&'()*+,;=", 0)),
    (b"x:99999", (b"x", 99999)),  # five digits, as the rule says
    # Refused:
    (b"x:123456", None),
    (b"x:" + b"9" * 5000, None),
    (b"x:\xb2", None),
    (b"evil.com#.example.com", None),
    (b"evil.com/x", None),
    (b"a b", None),
    (b"\xc3\xa9.example", None),
    (b"user@host", None),
    (b"a:1:2", None),
    (b"[::1", None),
    (b"[not-an-ip]", None),
    (b"[fe80::1%25eth0]", None),
    (b"%zz", None),
    (b"%4", None),
    (b"a\tb", None),
]


@pytest.mark.parametrize(("authority", "expected"), AUTHORITY_CASES, ids=[repr(c[0][:20])[2:-1] or "empty" for c in AUTHORITY_CASES])
def test_parse_authority(authority, expected):
    assert parse_authority(authority) == expected
