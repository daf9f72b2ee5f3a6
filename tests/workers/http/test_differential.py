"""The two server codecs must agree: any request bytes → h11 and httptools give the same verdict (which requests
were read, or which status refused them) and the same parsed requests (method, target, version, headers, body,
trailers), whether the bytes arrive whole, byte by byte or in two halves.

hypothesis generates requests from the pieces of RFC 9112 (request lines, field lines, framing headers, bodies
of both kinds, chunk extensions, trailers, pipelined requests), then mutates them: bytes replaced, inserted,
deleted or duplicated, with a bias towards the bytes that matter to parsers (CR, LF, SP, HTAB, ":", ";", '"',
"\\", NUL, DEL, 0x80+). Every disagreement is a bug in one codec or in the shared framing glue.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.workers.http.codec_driver import drive
from workers.http.engines import FastServer, H11Server

INTERESTING = b"\r\n \t:;\"\\,=\x00\x7f\x80\xff0aAzZ-_/?#%@[]{}()<>"
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

methods = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"CONNECT", b"FOO", b"get", b"M-SEARCH"])
targets = st.one_of(
    st.sampled_from([b"/", b"/a/b?c=d", b"*", b"http://h.example/x", b"/a#frag", b"//x", b"h.example:443", b"/%41%zz"]),
    st.binary(min_size=1, max_size=12).map(lambda b: b"/" + b),
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"http/1.1", b"HTTP/1"])
spaces = st.sampled_from([b" ", b" ", b"  ", b"\t"])
names = st.one_of(
    st.sampled_from([b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect", b"Upgrade", b"X-A", b"Trailer"]),
    st.text(TOKEN_CHARS, min_size=1, max_size=8).map(str.encode),
)
values = st.one_of(
    st.sampled_from([b"a", b"h.example:80", b"5", b"0", b"chunked", b"CHUNKED", b"gzip, chunked", b"close", b"keep-alive",
                     b"content-length", b"100-continue", b"websocket", b"", b" v ", b"9223372036854775808", b"5, 5"]),
    st.binary(max_size=10),
)


@st.composite
def field_lines(draw) -> bytes:
    return draw(names) + draw(st.sampled_from([b":", b": ", b":\t", b" :"])) + draw(values) + draw(st.sampled_from([b"", b" ", b"\t"])) + b"\r\n"


@st.composite
def chunked_bodies(draw) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(max_size=8))
        ext = draw(st.sampled_from([b"", b";a", b" ; a = b", b';a="x y"', b";a=\x01", b" ", b';a="\\"']))
        out += b"%x" % len(data) + ext + b"\r\n" + data + b"\r\n"
    out += b"0" + draw(st.sampled_from([b"", b";x"])) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(field_lines())
    return out + b"\r\n"


@st.composite
def requests(draw) -> bytes:
    line = draw(methods) + draw(spaces) + draw(targets) + draw(spaces) + draw(versions) + b"\r\n"
    fields = b"".join(draw(st.lists(field_lines(), max_size=5)))
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    host = draw(st.sampled_from([b"Host: h.example\r\n", b"", b"Host: h.example\r\nHost: i\r\n"]))
    if kind == "length":
        body = draw(st.binary(max_size=12))
        return line + host + fields + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if kind == "chunked":
        return line + host + fields + b"Transfer-Encoding: chunked\r\n\r\n" + draw(chunked_bodies())
    return line + host + fields + b"\r\n"


@st.composite
def mutated(draw, base) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["replace", "insert", "delete", "duplicate"]))
        byte = draw(st.one_of(st.sampled_from(list(INTERESTING)), st.integers(0, 255)))
        if op == "replace":
            data[i] = byte
        elif op == "insert":
            data.insert(i, byte)
        elif op == "delete":
            del data[i]
        else:
            j = draw(st.integers(i, min(len(data), i + 6)))
            data[i:i] = data[i:j]
    return bytes(data)


streams = st.one_of(
    requests(),
    mutated(requests()),
    st.lists(requests(), min_size=2, max_size=3).map(b"".join),
    mutated(st.lists(requests(), min_size=2, max_size=3).map(b"".join)),
    st.binary(max_size=64),
)


def check_agree(data: bytes) -> None:
    reference = drive(H11Server, data, "whole")
    for codec in (H11Server, FastServer):
        for chunking in ("whole", "bytes", "halves"):
            outcome = drive(codec, data, chunking)
            assert (outcome.status, outcome.requests) == (reference.status, reference.requests), (codec.__name__, chunking, data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams)
@example(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello")
@example(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: evil\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n")
@example(b"GET / HTTP/1.1\nHost: a\n\n")
@example(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551621\r\n\r\n")
@example(b"GET / HTTP/1.1\r\nHost: x:\xb2\r\n\r\n")
@example(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ch\x00nked\r\n\r\n0\r\n\r\n")  # found by the attack soak
def test_codecs_agree_on_any_bytes(data):
    check_agree(data)
