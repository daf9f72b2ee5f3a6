# An HTTP/2 request's header block → the Request the proxy core reads (workers/http/codec.Request with its
# RequestHead), and a response head → an HTTP/2 header block; pure.
#
# Rules:
# - h2 (validate_inbound_headers, normalize_inbound_headers) has already refused what RFC 9113 §8.2-8.3 calls
#   malformed as a connection error, as Envoy's default (override_stream_error_on_invalid_http_message false) does:
#   uppercase names, connection-specific fields (connection, keep-alive, proxy-connection, transfer-encoding,
#   upgrade), `te` other than "trailers", pseudo-fields after regular ones, unknown or repeated pseudo-fields,
#   missing :method/:scheme/:path; and it joined split cookie fields with "; " (§8.2.3), as an HTTP/1 upstream
#   needs them.
# - What is left is a stream error (RST_STREAM PROTOCOL_ERROR, §8.1.1), decided here: a :path that is neither
#   origin-form nor "*" for OPTIONS, or holds bytes outside visible ASCII; no authority (neither :authority nor
#   host); a host that names another authority than :authority (§8.3.1); an invalid authority; a content-length
#   that is not one number.
# - The authority is :authority, else host (as Envoy); host is not forwarded beside it (the proxy sets Host). The
#   header checks that apply to HTTP/1 heads apply the same way: "_" in a name (Envoy's REJECT_REQUEST), the
#   forwarding fields read once. A request with a body and no content-length goes to an HTTP/1 upstream chunked.
# - Response heads: :status first, then the fields minus the connection-specific ones HTTP/2 forbids.
from __future__ import annotations

from workers.http.codec import Request
from workers.http.framing import RequestHead
from workers.paths import parse_authority

HTTP2_VERSION = b"2"  # Request.http_version of an HTTP/2 stream (the access log's "HTTP/2")
# Connection-specific fields an HTTP/2 message may not carry (RFC 9113 §8.2.2), dropped from responses.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_STATUS = {code: b"%d" % code for code in range(100, 600)}
_NO_NAMES: frozenset[bytes] = frozenset()
_VISIBLE_ASCII = bytes(range(0x21, 0x7F))


class Malformed(Exception):
    """A malformed request (RFC 9113 §8.1.1): the stream is reset with PROTOCOL_ERROR."""


def h2_request(fields: list[tuple[bytes, bytes]], end_stream: bool) -> Request:
    """The Request of a stream's header block (pseudo-fields first, as h2 checked). Raises Malformed."""
    method = path = authority = None
    headers: list[tuple[bytes, bytes]] = []
    host = length = xff = xfp = request_id = None
    underscore = False
    for name, value in fields:
        if name[0] == 0x3A:  # ":"
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if name == b"host":
            host = value
            continue
        if name == b"content-length":
            if length is not None or not value.isdigit() or not value.isascii() or len(value) > 19:
                raise Malformed("invalid content-length")
            length = int(value)
        elif name == b"x-forwarded-for":
            xff = value if xff is None else xff + b"," + value
        elif name == b"x-forwarded-proto":
            xfp = value if xfp is None else xfp + b"," + value
        elif name == b"x-request-id":
            request_id = value if request_id is None else request_id + b"," + value
        elif b"_" in name:
            underscore = True
        headers.append((name, value))
    if method == b"CONNECT":
        path = authority or b""  # refused by the proxy core (read_request: no extended CONNECT at an edge)
    elif path is None or not _valid_path(path, method):
        raise Malformed("invalid :path")
    if authority is None:
        authority = host
    elif host is not None and host.lower() != authority.lower():
        raise Malformed("host differs from :authority")
    if not authority:
        raise Malformed("no authority")
    parsed = parse_authority(authority)
    if parsed is None:
        raise Malformed("invalid authority")
    head = RequestHead()
    head.authority = authority
    head.host, head.port = parsed
    head.content_length = -1 if length is None else length
    head.chunked = not end_stream and length is None
    head.keep_alive = True
    head.expect_continue = False  # HTTP/2 has no use for it: the body is sent when the client has it
    head.upgrade = None  # no Upgrade in HTTP/2 (and no extended CONNECT)
    head.nominated = _NO_NAMES
    head.underscore = underscore
    head.xff = xff
    head.xfp = xfp
    head.request_id = request_id
    return Request(method, path, headers, HTTP2_VERSION, head)


def _valid_path(path: bytes, method: bytes | None) -> bool:
    if path == b"*":
        return method == b"OPTIONS"
    if not path.startswith(b"/"):
        return False
    return not path.translate(None, _VISIBLE_ASCII)  # visible ASCII only, as an HTTP/1 request-target


def response_fields(status: int | None, headers) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 response header block: :status, then the fields HTTP/2 allows (a trailer block: status None)."""
    out = [] if status is None else [(b":status", _STATUS.get(status) or b"%d" % status)]
    for name, value in headers:
        if name in CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            continue
        out.append((name, value))
    return out
