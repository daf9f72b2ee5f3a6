# Per-route request policies as pure decisions: fault injection, CORS and consistent-hash keys.
# No I/O: the proxy passes the request's values (and a random source) and acts on what comes back.
#
# Rules (Envoy's filters, in the order Istio installs them: CORS, fault, router):
# - CORS (envoy.filters.http.cors): a preflight is an OPTIONS request with Origin and
#   Access-Control-Request-Method. A preflight whose Origin matches allowOrigins is answered by the gateway
#   with 200 and access-control-allow-{origin,methods,headers}, -max-age and -allow-credentials (only when
#   allowCredentials is true). A preflight that does not match is forwarded upstream (unmatchedPreflights
#   FORWARD, the default) or answered 200 with no CORS headers (IGNORE). Any other request whose Origin
#   matches gets access-control-allow-origin (the request's Origin), -expose-headers and -allow-credentials
#   on the response.
# - Fault (envoy.filters.http.fault): delay and abort are decided independently, each with its own
#   percentage in parts per million; the delay happens first, then the abort. An HTTP abort answers the
#   status with the body "fault filter abort"; a gRPC abort answers 200 with grpc-status.
# - gRPC (Envoy's router and local replies, as an Istio gateway configures them): a request is gRPC when its
#   content-type is application/grpc or application/grpc+… / ;… (Grpc::Common::isGrpcRequestHeaders). Istio sets
#   the route's max_grpc_timeout to the route timeout (route.go), so a gRPC request's timeout is its grpc-timeout
#   header capped by the route timeout (0 = no cap; no header = the cap), and the header sent upstream is
#   rewritten to the time the try has left. retryOn cancelled / deadline-exceeded / internal /
#   resource-exhausted / unavailable retry on the grpc-status of the response *headers* (trailers-only
#   responses; Envoy's RetryStateImpl does not wait for trailers). A local reply to a gRPC request is a
#   trailers-only HTTP 200 with grpc-status from Envoy's Grpc::Utility::httpToGrpcStatus and the body as a
#   percent-encoded grpc-message.
# - Consistent hash (route hash_policy): the key is a header value, a cookie, the client IP or a query
#   parameter. A missing header/query/cookie means "no hash" (the balancer then picks as round robin),
#   except a cookie policy with a TTL: the gateway generates the cookie, hashes it, and sets it on the response.
from __future__ import annotations

import os
from typing import Sequence

from edge.table import Cors, Fault, HashPolicy
from workers.balance import hash_key
from workers.router import string_test

PPM = 1_000_000
FAULT_ABORT_BODY = b"fault filter abort"

# gRPC status names (HTTPFaultInjection.Abort.grpcStatus) to codes.
GRPC_STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------------------


def decide_fault(fault: Fault, rng) -> tuple[float, int, str]:
    """(delay in seconds or 0, HTTP abort status or 0, gRPC abort status name or "")."""
    delay = fault.delay_s if fault.delay_ppm and rng.randrange(PPM) < fault.delay_ppm else 0.0
    status = 0
    grpc = ""
    if fault.abort_ppm and rng.randrange(PPM) < fault.abort_ppm:
        if fault.abort_grpc_status:
            grpc = fault.abort_grpc_status
        else:
            status = fault.abort_status
    return delay, status, grpc


def grpc_abort_headers(name: str) -> list[tuple[bytes, bytes]]:
    code = GRPC_STATUS_CODES.get(name.upper(), 2)
    return [(b"content-type", b"application/grpc"), (b"grpc-status", str(code).encode()), (b"grpc-message", b"fault filter abort")]


# ---------------------------------------------------------------------------------------------------------
# CORS
# ---------------------------------------------------------------------------------------------------------


class CompiledCors:
    """A route's CorsPolicy with its origin predicates and header values ready as bytes."""

    __slots__ = ("cors", "origin_tests", "allow_methods", "allow_headers", "expose_headers", "max_age", "credentials", "forward_unmatched")

    def __init__(self, cors: Cors):
        self.cors = cors
        self.origin_tests = tuple(string_test(m) for m in cors.allow_origins)
        self.allow_methods = cors.allow_methods.encode("latin-1")
        self.allow_headers = cors.allow_headers.encode("latin-1")
        self.expose_headers = cors.expose_headers.encode("latin-1")
        self.max_age = cors.max_age.encode("latin-1")
        self.credentials = cors.allow_credentials
        self.forward_unmatched = cors.unmatched_preflights != "IGNORE"

    def origin_allowed(self, origin: str) -> bool:
        return any(test(origin) for test in self.origin_tests)


PREFLIGHT_FORWARD = "forward"


def cors_preflight(policy: CompiledCors, method: bytes, origin: bytes | None, request_method: bytes | None) -> list[tuple[bytes, bytes]] | str | None:
    """For a preflight: the headers of the gateway's 200 answer, or PREFLIGHT_FORWARD. None: not a preflight."""
    if method != b"OPTIONS" or origin is None or request_method is None:
        return None
    if not policy.origin_allowed(origin.decode("latin-1")):
        return PREFLIGHT_FORWARD if policy.forward_unmatched else []
    out = [(b"access-control-allow-origin", origin)]
    if policy.allow_methods:
        out.append((b"access-control-allow-methods", policy.allow_methods))
    if policy.allow_headers:
        out.append((b"access-control-allow-headers", policy.allow_headers))
    if policy.max_age:
        out.append((b"access-control-max-age", policy.max_age))
    if policy.credentials:
        out.append((b"access-control-allow-credentials", b"true"))
    return out


def cors_response_headers(policy: CompiledCors, origin: bytes | None) -> list[tuple[bytes, bytes]]:
    """Headers added to an actual (non-preflight) response for a matching Origin."""
    if origin is None or not policy.origin_allowed(origin.decode("latin-1")):
        return []
    out = [(b"access-control-allow-origin", origin)]
    if policy.expose_headers:
        out.append((b"access-control-expose-headers", policy.expose_headers))
    if policy.credentials:
        out.append((b"access-control-allow-credentials", b"true"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Consistent-hash keys
# ---------------------------------------------------------------------------------------------------------


def _cookie(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    prefix = name + b"="
    for n, v in headers:
        if n == b"cookie":
            for part in v.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix) :]
    return None


def _query_param(query: str, name: str) -> str | None:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def hash_for_request(policy: HashPolicy, headers: Sequence[tuple[bytes, bytes]], query: str, peer_ip: bytes) -> tuple[int | None, bytes | None]:
    """(hash value or None, Set-Cookie value to add to the response or None)."""
    kind = policy.kind
    if kind == "header":
        name = policy.name.encode("latin-1")
        values = [v for n, v in headers if n == name]
        return (hash_key(b",".join(values)), None) if values else (None, None)
    if kind == "source_ip":
        return hash_key(peer_ip), None
    if kind == "query":
        value = _query_param(query, policy.name)
        return (hash_key(value.encode("latin-1")), None) if value is not None else (None, None)
    if kind == "cookie":
        name = policy.name.encode("latin-1")
        value = _cookie(headers, name)
        if value is not None:
            return hash_key(value), None
        if policy.cookie_ttl_s < 0:
            return None, None
        value = os.urandom(8).hex().encode()
        return hash_key(value), set_cookie_value(policy, value)
    return None, None


def set_cookie_value(policy: HashPolicy, value: bytes) -> bytes:
    parts = [policy.name.encode("latin-1") + b"=" + value]
    if policy.cookie_ttl_s > 0:
        parts.append(b"Max-Age=%d" % int(policy.cookie_ttl_s))
    if policy.cookie_path:
        parts.append(b"Path=" + policy.cookie_path.encode("latin-1"))
    for name, attr in policy.cookie_attributes:
        parts.append(name.encode("latin-1") + (b"=" + attr.encode("latin-1") if attr else b""))
    parts.append(b"HttpOnly")
    return b"; ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# gRPC
# ---------------------------------------------------------------------------------------------------------

GRPC_CONTENT_TYPE = b"application/grpc"
# Envoy's Grpc::Utility::httpToGrpcStatus (itself grpc's doc/http-grpc-status-mapping.md); anything else is 2.
HTTP_TO_GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2
# retryOn policies read from a response's grpc-status header (Envoy's x-envoy-retry-grpc-on values).
GRPC_RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}
# grpc-timeout units (gRPC over HTTP/2, "Timeout → TimeoutValue TimeoutUnit", at most 8 digits) in seconds.
GRPC_TIMEOUT_UNITS = {0x48: 3600.0, 0x4D: 60.0, 0x53: 1.0, 0x6D: 1e-3, 0x75: 1e-6, 0x6E: 1e-9}  # H M S m u n
GRPC_TIMEOUT_MAX_DIGITS = 8
# grpc-message percent-encoding (gRPC over HTTP/2): bytes outside 0x20..0x7E, and "%" itself, become %XX.
_GRPC_MESSAGE_SAFE = frozenset(range(0x20, 0x7F)) - {0x25}


def is_grpc(content_type: bytes | None) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: application/grpc, application/grpc+proto, application/grpc;…
    (grpc-web's application/grpc-web… is not gRPC here)."""
    if content_type is None or not content_type.startswith(GRPC_CONTENT_TYPE):
        return False
    rest = content_type[len(GRPC_CONTENT_TYPE) :]
    return not rest or rest[:1] in (b"+", b";")


def parse_grpc_timeout(value: bytes | None) -> float | None:
    """A grpc-timeout header in seconds; None when absent or malformed (then it is ignored, as Envoy does)."""
    if not value or len(value) < 2:
        return None
    digits, unit = value[:-1], value[-1]
    if len(digits) > GRPC_TIMEOUT_MAX_DIGITS or not digits.isdigit() or unit not in GRPC_TIMEOUT_UNITS:
        return None
    return int(digits) * GRPC_TIMEOUT_UNITS[unit]


def format_grpc_timeout(seconds: float) -> bytes:
    """A grpc-timeout value for `seconds` (> 0): milliseconds, rounded up, in the smallest unit whose value
    fits 8 digits (Envoy's Grpc::Common::toGrpcTimeout writes milliseconds the same way)."""
    ms = max(1, -int(-seconds * 1000 // 1))
    for unit, scale in ((b"m", 1), (b"S", 1000), (b"M", 60_000), (b"H", 3_600_000)):
        value = -(-ms // scale)
        if value < 10**GRPC_TIMEOUT_MAX_DIGITS:
            return b"%d" % value + unit
    return b"99999999H"


def grpc_timeout_s(route_timeout_s: float, header: bytes | None) -> float:
    """The timeout of a gRPC request (0 = none): Envoy's finalTimeout with max_grpc_timeout = the route timeout."""
    requested = parse_grpc_timeout(header) or 0.0
    if route_timeout_s > 0 and (requested <= 0 or requested > route_timeout_s):
        return route_timeout_s
    return requested


def grpc_status_of(headers) -> int:
    """The grpc-status of a header list, -1 when absent or not a number."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() and len(value) <= 3 else -1
    return -1


# grpc_metric_status's answers besides a status: the request was not gRPC (request_protocol "http", an empty
# grpc_response_status), or a gRPC request ended with no response code at all (protocol "grpc", empty status).
METRIC_NOT_GRPC = -1
METRIC_GRPC_NO_STATUS = -2


def grpc_metric_status(request, answered: int, http_status: int) -> int:
    """What Istio's stats filter (istio_stats.cc) labels a request with: for a gRPC request (isGrpcRequestHeaders),
    Envoy's Grpc::Common::getGrpcStatus(trailers, headers, info): the trailers' grpc-status, else the headers'
    (`answered`, -1 when neither had one), else httpToGrpcStatus of the response code when there is one;
    METRIC_NOT_GRPC for any other request."""
    if request is None or request.method != b"POST":
        return METRIC_NOT_GRPC
    for name, value in request.headers:
        if name == b"content-type":
            if not is_grpc(value):
                return METRIC_NOT_GRPC
            break
    else:
        return METRIC_NOT_GRPC
    if answered >= 0:
        return answered
    if http_status:
        return HTTP_TO_GRPC_STATUS.get(http_status, GRPC_UNKNOWN)
    return METRIC_GRPC_NO_STATUS


def grpc_status_retriable(code: int, retry_on) -> bool:
    """Whether a response's header grpc-status `code` is retried under `retry_on`."""
    if code <= 0:
        return False
    for policy in retry_on:
        if GRPC_RETRY_ON.get(policy) == code:
            return True
    return False


def percent_encode_grpc_message(message: bytes) -> bytes:
    if all(b in _GRPC_MESSAGE_SAFE for b in message):
        return message
    return b"".join(bytes((b,)) if b in _GRPC_MESSAGE_SAFE else b"%%%02X" % b for b in message)


def grpc_local_reply_headers(http_status: int, message: bytes, given: list | None = None) -> list[tuple[bytes, bytes]]:
    """The headers of a trailers-only gRPC local reply for an HTTP local reply `http_status` with body `message`;
    a grpc-status already among `given` (a fault abort's) is kept."""
    out = [(b"content-type", GRPC_CONTENT_TYPE)]
    kept = [h for h in given or () if h[0] not in (b"content-type", b"grpc-status", b"grpc-message")]
    status = grpc_status_of(given) if given else -1
    if status < 0:
        status = HTTP_TO_GRPC_STATUS.get(http_status, GRPC_UNKNOWN)
        if message:
            out.append((b"grpc-message", percent_encode_grpc_message(message)))
    else:
        message = next((v for n, v in given if n == b"grpc-message"), message)
        if message:
            out.append((b"grpc-message", percent_encode_grpc_message(message)))
    out.insert(1, (b"grpc-status", b"%d" % status))
    return out + kept
