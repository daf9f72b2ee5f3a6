"""workers/http/framing.py through both server codecs of workers/http/codec.py, table-driven.

Every case is fed whole, byte by byte and in two halves, to h11 and to httptools: the outcome (the requests read,
with body and trailers, or the status asked for) must be the one in the table for every combination. Cases come
from RFC 9112 and from what the hardening issue found (smuggling through Connection, trailers merged into the
head, obs-fold and bare LF accepted by one codec only, lengths beyond 2^63−1, chunk extensions with BWS).
"""

from __future__ import annotations

import pytest

from tests.workers.http.codec_driver import drive
from workers.http.engines import FastServer, H11Server
from workers.http.framing import (
    MAX_CONTENT_LENGTH,
    ProtocolError,
    RequestFramer,
    RequestLine,
    check_fields,
    check_head_bytes,
    parse_chunk_size,
)

CODECS = [H11Server, FastServer]
CHUNKINGS = ["whole", "bytes", "halves"]

H = b"Host: a\r\n"
GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"


def post(headers: bytes, body: bytes) -> bytes:
    return b"POST /p HTTP/1.1\r\n" + H + headers + b"\r\n" + body


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", body)


def req(method=b"GET", target=b"/", version=b"1.1", headers=((b"host", b"a"),), body=b"", trailers=()):
    return (method, target, version, list(headers), body, list(trailers))


TE = (b"transfer-encoding", b"chunked")

# (id, bytes, expected: a list of requests, or an int status for the first error)
CASES = [
    ("get", GET, [req()]),
    ("pipelined", GET + b"GET /2 HTTP/1.1\r\nHost: b\r\n\r\n", [req(), req(target=b"/2", headers=[(b"host", b"b")])]),
    ("leading-empty-lines", b"\r\n\r\n" + GET, [req()]),
    ("several-spaces-in-request-line", b"GET  /  HTTP/1.1\r\n" + H + b"\r\n", [req()]),
    ("ows-around-values", b"GET / HTTP/1.1\r\nHost: a\r\nX:  v w \t\r\n\r\n", [req(headers=[(b"host", b"a"), (b"x", b"v w")])]),
    ("obs-text-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: \xe9\r\n\r\n", [req(headers=[(b"host", b"a"), (b"x", b"\xe9")])]),
    ("fragment-kept-for-the-router", b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n", [req(target=b"/a#b")]),
    ("absolute-form", b"GET http://b.example/x HTTP/1.1\r\n" + H + b"\r\n", [req(target=b"http://b.example/x")]),
    ("options-asterisk", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", [req(method=b"OPTIONS", target=b"*")]),
    ("http10-no-host", b"GET / HTTP/1.0\r\n\r\n", [req(version=b"1.0", headers=[])]),
    ("content-length", post(b"Content-Length: 5\r\n", b"hello"), [req(b"POST", b"/p", headers=[(b"host", b"a"), (b"content-length", b"5")], body=b"hello")]),
    ("content-length-leading-zeros", post(b"Content-Length: 005\r\n", b"hello"), [req(b"POST", b"/p", headers=[(b"host", b"a"), (b"content-length", b"005")], body=b"hello")]),
    ("chunked", chunked(b"5\r\nhello\r\n0\r\n\r\n"), [req(b"POST", b"/p", headers=[(b"host", b"a"), TE], body=b"hello")]),
    ("chunked-uppercase-coding", post(b"Transfer-Encoding: CHUNKED\r\n", b"0\r\n\r\n"), [req(b"POST", b"/p", headers=[(b"host", b"a"), (b"transfer-encoding", b"CHUNKED")])]),
    ("chunk-extension-bws-quoted", chunked(b'6 ; q="x y" ;r = s\r\nhello!\r\n0\r\n\r\n'), [req(b"POST", b"/p", headers=[(b"host", b"a"), TE], body=b"hello!")]),
    ("chunk-extension-quoted-pair", chunked(b'1;a="\\"";b\r\nx\r\n0;c=d\r\n\r\n'), [req(b"POST", b"/p", headers=[(b"host", b"a"), TE], body=b"x")]),
    ("chunk-size-leading-zeros", chunked(b"0005\r\nhello\r\n0\r\n\r\n"), [req(b"POST", b"/p", headers=[(b"host", b"a"), TE], body=b"hello")]),
    ("trailers-kept-apart", chunked(b"5\r\nhello\r\n0\r\nHost: evil\r\nX-T: 1\r\n\r\n") + GET,
     [req(b"POST", b"/p", headers=[(b"host", b"a"), TE], body=b"hello", trailers=[(b"host", b"evil"), (b"x-t", b"1")]), req()]),
    ("connection-cannot-nominate-framing-away", post(b"Connection: content-length\r\nContent-Length: 5\r\n", b"GET /admin HTTP/1.1\r\n\r\n"[:5]),
     [req(b"POST", b"/p", headers=[(b"host", b"a"), (b"connection", b"content-length"), (b"content-length", b"5")], body=b"GET /")]),
    # Refused heads.
    ("no-host-http11", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("host-with-fragment", b"GET / HTTP/1.1\r\nHost: evil.com#.example.com\r\n\r\n", 400),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-non-ascii", b"GET / HTTP/1.1\r\nHost: \xe9.example\r\n\r\n", 400),
    ("host-long-port", b"GET / HTTP/1.1\r\nHost: x:" + b"9" * 5000 + b"\r\n\r\n", 400),
    ("host-port-six-digits", b"GET / HTTP/1.1\r\nHost: x:123456\r\n\r\n", 400),
    ("host-userinfo", b"GET / HTTP/1.1\r\nHost: u@x\r\n\r\n", 400),
    ("absolute-form-bad-authority", b"GET http://a b/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 400),
    ("bare-lf-line-end", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare-lf-in-head", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("bare-cr-in-head", b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00c\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x7fc\r\n\r\n", 400),
    ("space-in-name", b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", 400),
    ("empty-name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\nHost: a\r\nfoo\r\n\r\n", 400),
    ("unknown-method", b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lowercase-method", b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-with-space", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("target-non-ascii", b"GET /\xe9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk-for-get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("lowercase-http", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("version-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("version-1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("version-0.9", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"X: y\r\n" * 100 + b"\r\n", 431),
    ("content-length-twice", post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), 400),
    ("content-length-list", post(b"Content-Length: 5, 5\r\n", b"hello"), 400),
    ("content-length-plus", post(b"Content-Length: +5\r\n", b"hello"), 400),
    ("content-length-empty", post(b"Content-Length: \r\n", b""), 400),
    ("content-length-2^63", post(b"Content-Length: 9223372036854775808\r\n", b""), 400),
    ("content-length-2^64+5", post(b"Content-Length: 18446744073709551621\r\n", b"hello"), 400),
    ("content-length-and-chunked", post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 400),
    ("chunked-on-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("gzip-chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
    ("identity", post(b"Transfer-Encoding: identity\r\n", b""), 501),
    ("chunked-twice", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), 501),
    ("chunked-then-gzip", post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), 501),
    ("connection-nominates-xff", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for\r\n\r\n", 400),
    ("connection-ten-tokens", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + b",".join(b"x%d" % i for i in range(10)) + b"\r\n\r\n", 400),
    # Refused bodies: the head was accepted, then the framing broke.
    ("chunk-size-2^64+5", chunked(b"10000000000000005\r\nhello\r\n"), 400),
    ("chunk-size-not-hex", chunked(b"g\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-trailing-space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-extension-control", chunked(b"5;a\x01\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-extension-unterminated-quote", chunked(b'5;a="b\r\nhello\r\n0\r\n\r\n'), 400),
    ("chunk-data-without-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n"), 400),
    ("chunk-size-bare-lf", chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    ("trailer-obs-fold", chunked(b"0\r\nX: a\r\n b\r\n\r\n"), 400),
    ("trailer-bad-line", chunked(b"0\r\nnot a field\r\n\r\n"), 400),
    # The peer closed inside a message.
    ("eof-in-head", b"GET / HTTP/1.1\r\nHost", 0),
    ("eof-in-body", post(b"Content-Length: 10\r\n", b"hello"), 0),
    ("eof-in-chunk", chunked(b"5\r\nhel"), 0),
]


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("codec", CODECS, ids=["h11", "httptools"])
@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_both_codecs_frame_the_same(codec, chunking, data, expected):
    outcome = drive(codec, data, chunking)
    if isinstance(expected, int):
        assert outcome.status == expected
    else:
        assert outcome.status is None
        assert outcome.requests == expected


@pytest.mark.parametrize("codec", CODECS, ids=["h11", "httptools"])
def test_trailing_bytes_after_a_request_wait_for_the_next_cycle(codec):
    """Bytes after a message are the next request's, never part of this one (whatever they are)."""
    outcome = drive(codec, post(b"Content-Length: 2\r\n", b"okGARBAGE\r\n\r\n"))
    assert outcome.requests[0][4] == b"ok"
    assert outcome.status == 400  # the garbage is judged as the next head, and refused there


# ------------------------------------------------------------------------------------------ head limits


@pytest.mark.parametrize("codec", CODECS, ids=["h11", "httptools"])
@pytest.mark.parametrize(("data", "status"), [
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),  # the request line alone is too long
    (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 2000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 2000, 431),  # never finished, over the limit already
])  # fmt: skip
def test_head_size_limits(codec, data, status):
    for chunking in CHUNKINGS:
        assert drive(codec, data, chunking, max_head_bytes=1024).status == status


def test_trailer_section_is_bounded_like_a_head():
    data = chunked(b"0\r\n" + b"X: " + b"a" * 2000 + b"\r\n\r\n")
    for codec in CODECS:
        assert drive(codec, data, max_head_bytes=1024).status == 431


# ---------------------------------------------------------------------------------- the pure functions


@pytest.mark.parametrize(("line", "size"), [
    (b"0", 0), (b"a", 10), (b"A", 10), (b"7fffffffffffffff", MAX_CONTENT_LENGTH), (b"00000000000000000001", 1),
    (b"5;x", 5), (b"5 ;x", 5), (b"5\t;\tx\t=\ty", 5), (b'5;x="a;b"', 5), (b"5;x;y=z", 5),
])  # fmt: skip
def test_chunk_sizes(line, size):
    assert parse_chunk_size(line) == size


@pytest.mark.parametrize("line", [b"", b" 5", b"5 ", b"8000000000000000", b"5;", b"5;=x", b'5;x="', b"5;x=\x7f", b"-1", b"0x5", b"5;x y"])
def test_chunk_sizes_refused(line):
    with pytest.raises(ProtocolError):
        parse_chunk_size(line)


@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\n", None),
    (b"GET / HTTP/1.0\r\n", None),
    (b"M-SEARCH * HTTP/1.1\r\n", 400),  # "*" is OPTIONS' only
    (b"CONNECT a:443 HTTP/1.1\r\n", None),  # authority-form: answered by the proxy (404, as Envoy without CONNECT)
    (b"PATCH /x HTTP/1.1\r\n", None),
    (b"GET / HTTP/3.0\r\n", 505),
    (b"GET / HTTP/1.1 \r\n", 400),
    (b"GET / HTTP/11\r\n", 400),
    (b"GET /\x7f HTTP/1.1\r\n", 400),
    (b"GET relative HTTP/1.1\r\n", 400),
])  # fmt: skip
def test_request_lines(head, status):
    if status is None:
        check_head_bytes(head + b"\r\n")
    else:
        with pytest.raises(ProtocolError) as info:
            check_head_bytes(head + b"\r\n")
        assert info.value.status_hint == status


def test_check_fields_reads_the_head_once():
    line = RequestLine(b"POST", b"/", b"1.1")
    head = check_fields(line, [
        (b"host", b"A.Example:8080"), (b"content-length", b"12"), (b"connection", b"x-a, close, Upgrade"), (b"upgrade", b"websocket"),
        (b"expect", b"100-continue"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"), (b"x-request-id", b"r"), (b"x_y", b"1"),
    ], None)  # fmt: skip
    assert (head.host, head.port, head.authority) == (b"a.example", 8080, b"A.Example:8080")
    assert (head.content_length, head.chunked, head.keep_alive, head.upgrade, head.expect_continue) == (12, False, False, b"websocket", True)
    assert (head.nominated, head.xff, head.xfp, head.request_id, head.underscore) == ({b"x-a"}, b"1.1.1.1,2.2.2.2", None, b"r", True)
    head = check_fields(RequestLine(b"GET", b"http://b/", b"1.0"), [], b"b")
    assert (head.host, head.keep_alive, head.content_length, head.upgrade, head.underscore) == (b"b", False, -1, None, False)


def test_framer_waits_for_the_next_cycle_before_reading_the_next_head():
    framer = RequestFramer(1024)
    framer.receive_data(GET + b"GET /2")
    assert framer.next_head() == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    framer.start_body(-1, False)
    assert framer.done and framer.buffer == b"GET /2"
    framer.next_cycle()
    assert framer.in_head  # the next request has started: its header timeout runs
