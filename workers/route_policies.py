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
