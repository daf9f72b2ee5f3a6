# An HTTP/2 request's header block → the Request the proxy core reads (workers/http/codec.Request with its
# RequestHead), and a response head → an HTTP/2 header block; pure.
#
# Rules:
# - field_error refuses what RFC 9113 §8.2-8.3 calls malformed as a connection error, as Envoy's default
#   (override_stream_error_on_invalid_http_message false) does: empty names, names with uppercase, controls,
#   spaces, non-ASCII or a colon past the first byte; values with NUL, CR or LF or surrounding SP/HTAB;
#   connection-specific fields (connection, keep-alive, proxy-connection, transfer-encoding, upgrade), `te` other
#   than "trailers", pseudo-fields after regular ones, unknown or repeated pseudo-fields, :status in a request,
#   pseudo-fields in trailers, missing :method/:scheme/:path (CONNECT: no :scheme/:path unless extended), :protocol
#   without CONNECT, an empty :path, no authority, a repeated host, a host other than :authority. These are h2's
#   validate_inbound_headers checks, every one (tests/workers/http2/test_request.py holds h2's validator as the
#   oracle), done in one pass instead of h2's chain of seven generators per field: the workers run h2 with its
#   inbound validation and normalisation off. h2_request joins split cookie fields with "; " (§8.2.3), as an
#   HTTP/1 upstream needs them, last in the list as h2's normalisation put them.
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
# RFC 9113 §8.2.1: name bytes allowed (after a pseudo-field's leading colon), value bytes allowed.
_NAME_BYTES = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_VALUE_BYTES = bytes(c for c in range(256) if c not in (0x00, 0x0A, 0x0D))
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})
_BLANK = (0x20, 0x09)


class Malformed(Exception):
    """A malformed request (RFC 9113 §8.1.1): the stream is reset with PROTOCOL_ERROR."""


def field_error(fields, trailer: bool = False) -> str | None:
    """Why a request's (or its trailers') header block is malformed as a connection error; None when it is not
    (the module rules)."""
    seen: set[bytes] = set()
    regular = False
    method = authority = host = None
    for name, value in fields:
        if not name:
            return "empty field name"
        if name[0] == 0x3A:  # ":"
            if trailer or regular:
                return f"pseudo-field {name!r} in trailers or after a regular field"
            if name in seen or name not in _REQUEST_PSEUDO:
                return f"repeated or unknown pseudo-field {name!r}"
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                return "empty :path"
        else:
            regular = True
            if name.translate(None, _NAME_BYTES):
                return f"invalid field name {name!r}"
            if name in CONNECTION_SPECIFIC:
                return f"connection-specific field {name!r}"
            if name == b"te" and value.lower() != b"trailers":
                return "te other than trailers"
            if name == b"host" and not trailer:
                if host is not None:
                    return "repeated host"
                host = value
        if value and (value.translate(None, _VALUE_BYTES) or value[0] in _BLANK or value[-1] in _BLANK):
            return f"invalid value of {name!r}"
    if trailer:
        return None
    return _pseudo_error(seen, method, authority, host)


def _pseudo_error(seen: set[bytes], method: bytes | None, authority: bytes | None, host: bytes | None) -> str | None:
    if b":method" not in seen:
        return "no :method"
    connect = method == b"CONNECT"
    if connect and b":protocol" not in seen:
        if b":scheme" in seen or b":path" in seen:
            return "CONNECT with :scheme or :path"
    elif b":scheme" not in seen or b":path" not in seen:
        return "no :scheme or :path"
    if not connect and b":protocol" in seen:
        return ":protocol without CONNECT"
    if authority is None and host is None:
        return "neither :authority nor host"
    if authority is not None and host is not None and authority != host:
        return "host differs from :authority"
    return None


def h2_request(fields: list[tuple[bytes, bytes]], end_stream: bool) -> Request:
    """The Request of a stream's header block (pseudo-fields first, as h2 checked). Raises Malformed."""
    method = path = authority = None
    headers: list[tuple[bytes, bytes]] = []
    host = length = xff = xfp = request_id = None
    underscore = False
    cookies = None
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
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
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
    if cookies is not None:
        headers.append((b"cookie", b"; ".join(cookies)))
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
