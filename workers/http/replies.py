# The gateway's own replies, as one table: every local reply's status, body, response flag and response code
# details, the way Envoy writes them (its local reply bodies, %RESPONSE_FLAGS%, %RESPONSE_CODE_DETAILS%). Pure.
#
# Rules:
# - A reply is named by its LOCAL_REPLIES key where it is decided (workers/http/request.py, forward.py, …); a status
#   of 0 means the configuration gives it (a redirect's code, a direct response, a fault abort).
# - `close` replies end the connection after them (the request's bytes cannot be trusted to frame the next one,
#   or the protocol says so).
# - closing_reply() writes a whole reply without a codec, for when the codec's state is unusable or beside the
#   point (a malformed head, a timeout mid-head, an unexpected error): always `connection: close`.
from __future__ import annotations

import time
from typing import NamedTuple

from workers.http.codec import REASONS

# Envoy's local reply bodies.
BODY_NO_HEALTHY_UPSTREAM = b"no healthy upstream"
BODY_CONNECT_FAILURE = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
BODY_RESET = b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
BODY_OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
BODY_TIMEOUT = b"upstream request timeout"
BODY_PROTOCOL_ERROR = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"
BODY_STREAM_TIMEOUT = b"stream timeout"
OVERLOADED = [(b"x-envoy-overloaded", b"true")]  # sent with the overflow replies (Envoy's circuit breakers)


class LocalReply(NamedTuple):
    status: int  # 0: given by the configuration
    body: bytes
    flags: str  # %RESPONSE_FLAGS%
    details: str  # %RESPONSE_CODE_DETAILS%
    close: bool = False
    headers: tuple = ()  # sent with it (a JWT refusal's www-authenticate)


LOCAL_REPLIES: dict[str, LocalReply] = {
    # Before routing (workers/http/request.read_request).
    "no_table": LocalReply(503, BODY_NO_HEALTHY_UPSTREAM, "UH", "no_table"),
    "http10_refused": LocalReply(426, b"", "-", "http1.0_not_allowed", close=True),
    "missing_host": LocalReply(400, b"", "-", "missing_host_header", close=True),
    "underscore_header": LocalReply(400, b"", "-", "http1.invalid_characters", close=True),
    "connect_refused": LocalReply(404, b"", "NR", "route_not_found", close=True),
    # AuthorizationPolicy (workers/http/access.py): Envoy's RBAC filter, details naming the deciding rule.
    "rbac_denied": LocalReply(403, b"RBAC: access denied", "-", "rbac_access_denied_matched_policy[none]"),
    "path_normalization_failed": LocalReply(400, b"", "-", "path_normalization_failed", close=True),
    # Routing and the route's own action (request.find_route, request.decide_action).
    "route_not_found": LocalReply(404, b"", "NR", "route_not_found"),
    "https_redirect": LocalReply(301, b"", "-", "via_upstream"),
    "cors_preflight": LocalReply(200, b"", "-", "cors_response"),
    "redirect": LocalReply(0, b"", "-", "redirect"),
    "direct_response": LocalReply(0, b"", "-", "direct_response"),
    "fault_abort": LocalReply(0, b"", "FI", "fault_filter_abort"),
    # Forwarding (workers/http/forward.py).
    "cluster_not_found": LocalReply(503, b"", "NC", "cluster_not_found"),
    "overflow": LocalReply(503, BODY_OVERFLOW, "UO", "overflow"),
    "no_healthy_upstream": LocalReply(503, BODY_NO_HEALTHY_UPSTREAM, "UH", "no_healthy_upstream"),
    "upstream_timeout": LocalReply(504, BODY_TIMEOUT, "UT", "upstream_response_timeout"),
    "upstream_overflow": LocalReply(503, BODY_OVERFLOW, "UO", "upstream_reset_before_response_started{overflow}"),
    "upstream_protocol_error": LocalReply(502, BODY_PROTOCOL_ERROR, "UPE", "upstream_reset_before_response_started{protocol_error}"),
    "connect_failure": LocalReply(503, BODY_CONNECT_FAILURE, "UF", "upstream_reset_before_response_started{connection_failure}"),
    "connect_failure_retried": LocalReply(503, BODY_CONNECT_FAILURE, "URX", "upstream_reset_before_response_started{connection_failure}"),
    "upstream_reset": LocalReply(503, BODY_RESET, "UC", "upstream_reset_before_response_started{connection_termination}"),
    "upstream_reset_retried": LocalReply(503, BODY_RESET, "URX", "upstream_reset_before_response_started{connection_termination}"),
    "body_codec_error": LocalReply(400, b"", "DPE", "http1.codec_error", close=True),
    "upgrade_with_body": LocalReply(400, b"", "-", "upgrade_with_body", close=True),
    # Written without the codec (closing_reply): the request head never made it, or the request's handling did not.
    "request_header_timeout": LocalReply(408, b"", "-", "request_header_timeout", close=True),
    "internal_error": LocalReply(500, b"", "-", "internal_error", close=True),
}

# %RESPONSE_FLAGS% lists several flags in this order, joined with "," (Envoy's ResponseFlagUtils), e.g. "DI,FI" for a
# delayed then aborted request.
FLAG_ORDER = ("LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR")
_FLAG_RANK = {flag: rank for rank, flag in enumerate(FLAG_ORDER)}


def with_flag(flags: str, flag: str) -> str:
    """`flags` (a %RESPONSE_FLAGS% value, "-" for none) with `flag` added in Envoy's order."""
    if flag == "-" or flag in flags.split(","):
        return flags
    if flags == "-":
        return flag
    return ",".join(sorted([*flags.split(","), flag], key=lambda f: _FLAG_RANK.get(f, len(FLAG_ORDER))))


# Envoy's response code details for what its HTTP/1 codec refuses (all flagged DPE, downstream protocol error).
CODEC_ERROR_DETAILS = {431: "http1.headers_too_large", 414: "http1.headers_too_large", 501: "http1.invalid_transfer_encoding"}


def codec_error_reply(status: int) -> LocalReply:
    """The reply to a head the codec refused with `status` (400, 414, 431, 501, 505)."""
    return LocalReply(status, b"", "DPE", CODEC_ERROR_DETAILS.get(status, "http1.codec_error"), close=True)


def stream_timeout_status(body_pending: bool) -> int:
    """Envoy's stream idle timeout: 408 while the request was still arriving, else 504 (nothing came back)."""
    return 408 if body_pending else 504


_date_cache: list = [0, b""]  # [second, formatted]: replies in the same second share one string


def http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _date_cache[1]


def closing_reply(server_header: bytes, status: int, body: bytes = b"", content_type: bytes | None = None) -> bytes:
    """A whole reply written without the codec, announcing the close."""
    head = b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\n" % (status, REASONS.get(status, b""), len(body))
    if content_type is not None:
        head += b"content-type: " + content_type + b"\r\n"
    head += b"date: " + http_date() + b"\r\n"
    if server_header:
        head += b"server: " + server_header + b"\r\n"
    return head + b"connection: close\r\n\r\n" + body


def reply_headers(body: bytes, content_type: bytes | None, server_header: bytes, extra: list | None, response_ops) -> list:
    """The head of a local reply sent through the codec: framing, date, server, the caller's, then the route's
    response header operations."""
    headers = []
    if body and content_type is not None:
        headers.append((b"content-type", content_type))
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"date", http_date()))
    if server_header:
        headers.append((b"server", server_header))
    if extra:
        headers.extend(extra)
    if response_ops is not None:
        headers = response_ops.apply(headers)
    return headers
