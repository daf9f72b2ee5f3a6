# An HTTP/2 header block → the proxy core's Request, and a response head → an HTTP/2 header block
# (workers/http2/request.py), as tables.
from __future__ import annotations

import pytest

from workers.http2.request import Malformed, field_error, h2_request, response_fields

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a?b=1"), (b":authority", b"App.Example.com:8443")]


def test_a_request_as_the_core_reads_it():
    request = h2_request(BASE + [(b"user-agent", b"t"), (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"5.6.7.8"), (b"cookie", b"a=1; b=2")], True)
    head = request.head
    assert (request.method, request.target, request.http_version) == (b"GET", b"/a?b=1", b"2")
    assert request.headers == [(b"user-agent", b"t"), (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"5.6.7.8"), (b"cookie", b"a=1; b=2")]
    assert (head.authority, head.host, head.port) == (b"App.Example.com:8443", b"app.example.com", 8443)
    assert head.xff == b"1.2.3.4,5.6.7.8" and head.content_length == -1 and not head.chunked and head.upgrade is None


@pytest.mark.parametrize(
    "extra, end_stream, length, chunked",
    [
        ([], True, -1, False),
        ([], False, -1, True),  # a body without content-length goes to an HTTP/1 upstream chunked
        ([(b"content-length", b"5")], False, 5, False),
        ([(b"content-length", b"0")], True, 0, False),
    ],
)
def test_body_framing(extra, end_stream, length, chunked):
    head = h2_request(BASE + extra, end_stream).head
    assert (head.content_length, head.chunked) == (length, chunked)


def test_split_cookie_fields_are_joined_last():
    # RFC 9113 §8.2.3: crumbs joined with "; " for an HTTP/1 upstream, after the other fields (as h2's normalisation).
    request = h2_request(BASE + [(b"cookie", b"a=1"), (b"x", b"1"), (b"cookie", b"b=2"), (b"cookie", b"c=3")], True)
    assert request.headers == [(b"x", b"1"), (b"cookie", b"a=1; b=2; c=3")]
    assert h2_request(BASE + [(b"cookie", b"a=1")], True).headers == [(b"cookie", b"a=1")]


def test_host_is_the_authority_without_authority_and_is_never_forwarded():
    fields = [f for f in BASE if f[0] != b":authority"] + [(b"host", b"h.example.com")]
    request = h2_request(fields, True)
    assert request.head.authority == b"h.example.com" and all(name != b"host" for name, _ in request.headers)
    same = h2_request(BASE + [(b"host", b"app.example.com:8443")], True)
    assert same.head.authority == b"App.Example.com:8443"


def test_underscore_names_are_noted_for_the_proxy_cores_check():
    assert h2_request(BASE + [(b"x_y", b"1")], True).head.underscore
    assert not h2_request(BASE + [(b"x-y", b"1")], True).head.underscore


@pytest.mark.parametrize(
    "fields",
    [
        [f for f in BASE if f[0] != b":authority"],  # no authority at all
        BASE[:3] + [(b":authority", b"bad host")],
        BASE + [(b"host", b"other.example.com")],
        [BASE[0], BASE[1], (b":path", b"relative"), BASE[3]],
        [BASE[0], BASE[1], (b":path", b"/a b"), BASE[3]],
        [BASE[0], BASE[1], (b":path", b"*"), BASE[3]],  # "*" is for OPTIONS only
        BASE + [(b"content-length", b"1"), (b"content-length", b"2")],
        BASE + [(b"content-length", b"x")],
    ],
)
def test_malformed_requests(fields):
    with pytest.raises(Malformed):
        h2_request(fields, True)


def test_options_star_and_connect_reach_the_core():
    options = h2_request([(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*"), (b":authority", b"a.example.com")], True)
    assert options.target == b"*"
    connect = h2_request([(b":method", b"CONNECT"), (b":authority", b"a.example.com:443")], False)
    assert connect.method == b"CONNECT"  # read_request refuses it (no extended CONNECT at an edge)


def test_response_fields_drop_what_http2_forbids():
    fields = response_fields(200, [(b"content-type", b"text/plain"), (b"connection", b"close"), (b"transfer-encoding", b"chunked"), (b"keep-alive", b"5"), (b"te", b"trailers"), (b"te", b"gzip")])
    assert fields == [(b":status", b"200"), (b"content-type", b"text/plain"), (b"te", b"trailers")]
    assert response_fields(None, [(b"grpc-status", b"0")]) == [(b"grpc-status", b"0")]


# field_error against h2's own inbound validation (the checks it replaces, h2.utilities.validate_headers) as the
# oracle: the same blocks accepted and refused, requests and trailers.
def _h2_refuses(fields, trailer: bool) -> bool:
    import h2.exceptions
    from h2.utilities import HeaderValidationFlags, validate_headers

    flags = HeaderValidationFlags(is_client=False, is_trailer=trailer, is_response_header=False, is_push_promise=False)
    try:
        list(validate_headers(fields, flags))
    except h2.exceptions.ProtocolError:
        return True
    return False


GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.example")]
BLOCKS = [
    GET,
    GET + [(b"user-agent", b"x"), (b"cookie", b"a=1"), (b"te", b"trailers"), (b"te", b"Trailers"), (b"x", b"")],
    GET + [(b"host", b"a.example")],
    GET + [(b"host", b"A.example")],  # h2 compares bytes: a connection error
    GET + [(b"host", b"a.example"), (b"host", b"a.example")],
    [f for f in GET if f[0] != b":authority"] + [(b"host", b"a.example")],
    [f for f in GET if f[0] != b":authority"],
    [f for f in GET if f[0] != b":path"],
    [f for f in GET if f[0] != b":scheme"],
    [f for f in GET if f[0] != b":method"],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"a")],
    GET + [(b":method", b"GET")],
    GET + [(b":status", b"200")],
    GET + [(b":custom", b"1")],
    GET + [(b":protocol", b"websocket")],
    [(b":method", b"CONNECT"), (b":authority", b"a.example:443")],
    [(b":method", b"CONNECT"), (b":authority", b"a.example:443"), (b":path", b"/")],
    [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"a")],
    [(b"x", b"1")] + GET,
    GET + [(b"", b"1")],
    GET + [(b"X-Upper", b"1")],
    GET + [(b"a b", b"1")],
    GET + [(b"a:b", b"1")],
    GET + [(b"caf\xc3\xa9", b"1")],
    GET + [(b"a\x7f", b"1")],
    GET + [(b"x", b"a\x00b")],
    GET + [(b"x", b"a\nb")],
    GET + [(b"x", b"a\rb")],
    GET + [(b"x", b" a")],
    GET + [(b"x", b"a\t")],
    GET + [(b"x", b"a b\x01\xff")],  # other controls and non-ASCII values are allowed
    GET + [(b"connection", b"close")],
    GET + [(b"keep-alive", b"1")],
    GET + [(b"proxy-connection", b"1")],
    GET + [(b"transfer-encoding", b"chunked")],
    GET + [(b"upgrade", b"h2c")],
    GET + [(b"te", b"gzip")],
]
TRAILERS = [
    [(b"grpc-status", b"0"), (b"x", b"y")],
    [(b":path", b"/")],
    [(b"X", b"1")],
    [(b"x", b"a\r")],
    [(b"host", b"a"), (b"host", b"b")],
    [(b"connection", b"x")],
    [],
]


@pytest.mark.parametrize("fields", BLOCKS)
def test_field_error_refuses_what_h2_refuses(fields):
    assert (field_error(fields) is not None) == _h2_refuses(fields, False), field_error(fields)


@pytest.mark.parametrize("fields", TRAILERS)
def test_field_error_on_trailers_refuses_what_h2_refuses(fields):
    assert (field_error(fields, True) is not None) == _h2_refuses(fields, True), field_error(fields, True)
