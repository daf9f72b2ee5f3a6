# Header rules of the proxy, as pure functions over h11-style header lists: [(lowercase name, value), …].
#
# Rules (RFC 9110 §7.6.1, RFC 9112, and what Envoy does at an Istio ingress gateway):
# - Hop-by-hop headers never cross the proxy, in either direction: Connection and every name it lists,
#   Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding and Upgrade; TE's `trailers` alone is sent on as
#   `te: trailers` (Envoy forwards it: gRPC requires it, RFC 9113 §8.2.2 allows it). Message framing is re-done by
#   the proxy on each side: a request goes upstream with the Content-Length or chunked coding the proxy
#   derived from the body it framed (never the client's header), and a Connection header cannot nominate away
#   Host, the framing or any header the proxy sets.
# - Requests going upstream are edge requests, as at an Istio gateway (Envoy's HCM with use_remote_address and,
#   since Envoy 1.33, no address counted internal): X-Forwarded-For gets the peer address appended (","),
#   X-Envoy-External-Address is the trusted client address, X-Forwarded-Proto is the downstream scheme (a
#   client's value is kept only with trusted proxies), X-Request-Id is replaced by a fresh UUID unless
#   --preserve-external-request-id, Envoy's control headers (x-envoy-retry-on, …-rq-timeout-ms, …) are
#   stripped, X-Envoy-Attempt-Count counts tries, Expect is dropped (the gateway answers 100-continue itself,
#   as Envoy does by default), the Host is the request's or the route's rewrite.
# - The trusted client address (gatewayTopology.numTrustedProxies = N, --num-trusted-proxies): with N = 0 the
#   peer; with N > 0 the N-th address from the right of the X-Forwarded-For the request arrived with, or the
#   peer when that entry is missing or not an IP address (Envoy's getLastAddressFromXFF).
# - Route header operations run after the proxy's own, route level first and destination level second, so
#   a destination `set` wins (Istio appends destination operations after the route's).
# - Responses going downstream: `server` is overwritten with the configured name, x-envoy-upstream-service-time
#   is added, then the route's response operations.
# - Header operations are compiled once per table into bytes (CompiledHeaderOps); nothing here lowercases
#   or encodes on the request path except values the request itself brings.
from __future__ import annotations

import ipaddress
import os
from typing import Iterable

from edge.table import HeaderOps, HeaderRules

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Request headers the proxy sets itself, so a client's copy is dropped first.
PROXY_SET_REQUEST = frozenset({b"host", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id", b"x-envoy-attempt-count", b"x-envoy-expected-rq-timeout-ms", b"x-envoy-original-path", b"x-envoy-internal", b"x-envoy-external-address", b"x-forwarded-client-cert"})
# Envoy's control headers, which an edge request may not carry (Envoy's cleanInternalHeaders).
EDGE_STRIPPED_REQUEST = frozenset({
    b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster", b"x-envoy-downstream-service-node",
    b"x-envoy-retriable-status-codes", b"x-envoy-retriable-header-names", b"x-envoy-retry-on", b"x-envoy-retry-grpc-on",
    b"x-envoy-max-retries", b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-upstream-rq-timeout-alt-response",
    b"x-envoy-force-trace", b"x-envoy-ip-tags", b"x-envoy-original-url", b"x-envoy-hedge-on-per-try-timeout",
})  # fmt: skip
# The client's framing never crosses the proxy: the codec framed the body, the proxy re-frames it upstream.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_DROPPED_REQUEST = PROXY_SET_REQUEST | EDGE_STRIPPED_REQUEST | FRAMING
# What the proxy keeps even when a client's Connection header nominates it (names the proxy has already
# decided or sets itself); Envoy refuses a request nominating x-forwarded-* (workers/http/framing.py).
_NEVER_NOMINATED = PROXY_SET_REQUEST | FRAMING
PROXY_SET_RESPONSE = frozenset({b"x-envoy-upstream-service-time"})

_EMPTY: frozenset[bytes] = frozenset()
# Connection values that nominate nothing (most responses carry one of them): no token parsing needed.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


class CompiledHeaderOps:
    """HeaderOps with bytes names/values and the set of names it touches, built once per table."""

    __slots__ = ("set", "add", "remove", "drop")

    def __init__(self, ops: HeaderOps):
        # Names are tokens (ASCII) and values hold no control bytes: edge/wire.py checked both at load. Values
        # go out as UTF-8, as Envoy sends them.
        self.set = tuple((k.lower().encode("ascii"), v.encode("utf-8")) for k, v in ops.set)
        self.add = tuple((k.lower().encode("ascii"), v.encode("utf-8")) for k, v in ops.add)
        self.remove = frozenset(k.lower().encode("ascii") for k in ops.remove)
        self.drop = self.remove | frozenset(k for k, _ in self.set)

    def apply(self, headers: list[Header]) -> list[Header]:
        if self.drop:
            headers = [h for h in headers if h[0] not in self.drop]
        if self.set:
            headers.extend(self.set)
        if self.add:
            headers.extend(self.add)
        return headers


def compile_rules(rules: HeaderRules | None) -> tuple[CompiledHeaderOps | None, CompiledHeaderOps | None]:
    if rules is None:
        return None, None
    request = CompiledHeaderOps(rules.request) if rules.request is not None else None
    response = CompiledHeaderOps(rules.response) if rules.response is not None else None
    return request, response


def connection_tokens(headers: Iterable[Header]) -> frozenset[bytes]:
    """Names listed in Connection headers (lowercase), which are hop-by-hop for this message."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return frozenset(tokens) if tokens else _EMPTY


_UUID4_MASK = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_BITS = (0x4 << 76) | (0x2 << 62)


def new_request_id(rng=None) -> bytes:
    """A random UUID4 in its canonical text form (what Envoy generates). With `rng` (a random.Random) no
    system call is made; request ids need to be unique, not secret."""
    n = (rng.getrandbits(128) if rng is not None else int.from_bytes(os.urandom(16), "big")) & _UUID4_MASK | _UUID4_BITS
    h = b"%032x" % n
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


class Forwarded:
    """Where a request came from, as the gateway tells the upstream and the access log; decided once per request
    by forwarded_for()."""

    __slots__ = ("client_ip", "client_from_xff", "xff", "proto", "scheme", "request_id")

    client_ip: bytes  # the trusted client address: x-envoy-external-address, consistent hashing by source IP
    client_from_xff: bool  # client_ip was taken from X-Forwarded-For (then it has no port: Envoy logs "ip:0")
    xff: bytes  # X-Forwarded-For sent upstream
    proto: bytes  # X-Forwarded-Proto sent upstream
    scheme: str  # the request's scheme for routing and redirects ("http" or "https")
    request_id: bytes | None  # X-Request-Id sent upstream (None: generation disabled and the client sent none)


def trusted_client_address(xff: bytes, trusted_hops: int) -> bytes | None:
    """The `trusted_hops`-th address from the right of an X-Forwarded-For value, normalised, or None when the
    list is shorter or that entry is not an IP address."""
    parts = xff.split(b",")
    if trusted_hops < 1 or len(parts) < trusted_hops:
        return None
    candidate = parts[-trusted_hops].strip()
    try:
        address = ipaddress.ip_address(candidate.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if getattr(address, "scope_id", None):  # inet_pton, which Envoy uses, takes no "%zone"
        return None
    return address.compressed.encode()


def forwarded_for(
    client_xff: bytes | None,
    client_xfp: bytes | None,
    client_request_id: bytes | None,
    *,
    peer_ip: bytes,
    scheme: bytes,
    trusted_hops: int = 0,
    generate_request_id: bool = True,
    preserve_request_id: bool = False,
    rng=None,
) -> Forwarded:
    """The edge-request decisions for one request (see the module comment), from the client's own
    X-Forwarded-For / X-Forwarded-Proto / X-Request-Id values (repeated headers joined with ",")."""
    out = Forwarded()
    client_ip = trusted_client_address(client_xff, trusted_hops) if trusted_hops and client_xff is not None else None
    out.client_from_xff = client_ip is not None
    out.client_ip = client_ip if client_ip is not None else peer_ip
    out.xff = peer_ip if client_xff is None else client_xff + b"," + peer_ip
    # Only a trusted proxy's X-Forwarded-Proto survives; the scheme follows it when it names one.
    proto = client_xfp if trusted_hops and client_xfp is not None else scheme
    out.proto = proto
    lowered = proto.lower()
    out.scheme = "https" if lowered == b"https" else "http" if lowered == b"http" else scheme.decode("ascii")
    if not generate_request_id or (preserve_request_id and client_request_id is not None):
        out.request_id = client_request_id
    else:
        out.request_id = new_request_id(rng)
    return out


def upstream_request_headers(
    headers: list[Header],
    *,
    host: bytes,
    forwarded: Forwarded,
    attempt: int = 1,
    timeout_ms: int = 0,
    original_path: bytes | None = None,
    chunked: bool = False,
    content_length: int | None = None,
    nominated: frozenset[bytes] = _EMPTY,
    client_cert: bytes | None = None,
    route_ops: CompiledHeaderOps | None = None,
    destination_ops: CompiledHeaderOps | None = None,
) -> list[Header]:
    """The header list sent upstream for one try; `headers` is the client's list (not modified).
    `client_cert` is the x-forwarded-client-cert of a verified client certificate (workers/tls/xfcc.py); a client's
    own x-forwarded-client-cert is always dropped (SANITIZE_SET).

    Framing is the proxy's own: the client's Content-Length and Transfer-Encoding never cross; `chunked` or
    `content_length` (the body as the codec framed it) decide what the upstream is told. `nominated` are the
    names the client's Connection header listed (workers/http/framing.RequestHead.nominated): they are dropped as
    hop-by-hop, except names the proxy sets itself, which a client cannot nominate away."""
    out: list[Header] = [(b"host", host)]
    dropped = _DROPPED_REQUEST
    if nominated:
        dropped = dropped | (nominated - _NEVER_NOMINATED)
    te_trailers = False
    for name, value in headers:
        if name in HOP_BY_HOP or name in dropped:
            if name == b"te" and b"trailers" in value.lower():
                te_trailers = any(part.split(b";")[0].strip() == b"trailers" for part in value.lower().split(b","))
            continue
        out.append((name, value))
    if te_trailers:  # the one TE value that crosses (Envoy forwards `te: trailers` and strips any other)
        out.append((b"te", b"trailers"))
    out.append((b"x-forwarded-for", forwarded.xff))
    out.append((b"x-forwarded-proto", forwarded.proto))
    out.append((b"x-envoy-external-address", forwarded.client_ip))
    if client_cert is not None:
        out.append((b"x-forwarded-client-cert", client_cert))
    if forwarded.request_id is not None:
        out.append((b"x-request-id", forwarded.request_id))
    if attempt:
        out.append((b"x-envoy-attempt-count", str(attempt).encode()))
    if timeout_ms:
        out.append((b"x-envoy-expected-rq-timeout-ms", str(timeout_ms).encode()))
    if original_path is not None:
        out.append((b"x-envoy-original-path", original_path))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    elif content_length is not None:
        out.append((b"content-length", b"%d" % content_length))
    if route_ops is not None:
        out = route_ops.apply(out)
    if destination_ops is not None:
        out = destination_ops.apply(out)
    return out


def downstream_response_headers(
    headers: Iterable[Header],
    *,
    server: bytes,
    service_time_ms: int | None = None,
    route_ops: CompiledHeaderOps | None = None,
    destination_ops: CompiledHeaderOps | None = None,
    extra: Iterable[Header] = (),
) -> list[Header]:
    """The header list sent to the client for an upstream response (framing headers are the codec's)."""
    out: list[Header] = []
    connection: list[bytes] | None = None
    for name, value in headers:
        if name in HOP_BY_HOP or name in PROXY_SET_RESPONSE:
            if name == b"connection":
                (connection := connection or []).append(value)
            continue
        if server and name == b"server":
            continue
        out.append((name, value))
    if connection is not None and any(v.lower() not in _PLAIN_CONNECTION for v in connection):
        listed = connection_tokens((b"connection", v) for v in connection) - HOP_BY_HOP
        if listed:  # names the upstream marked hop-by-hop beyond the standard ones
            out = [h for h in out if h[0] not in listed]
    if server:
        out.append((b"server", server))
    if service_time_ms is not None:
        out.append((b"x-envoy-upstream-service-time", str(service_time_ms).encode()))
    out.extend(extra)
    if route_ops is not None:
        out = route_ops.apply(out)
    if destination_ops is not None:
        out = destination_ops.apply(out)
    return out


def header_value(headers: Iterable[Header], name: bytes) -> bytes | None:
    """All values of `name` joined with ", " (None if absent)."""
    found: list[bytes] = []
    for n, v in headers:
        if n == name:
            found.append(v)
    if not found:
        return None
    return found[0] if len(found) == 1 else b", ".join(found)


def has_underscore_name(headers: Iterable[Header]) -> bytes | None:

    """The first header name with an underscore (Envoy's edge default rejects such requests)."""
    for name, _ in headers:
        if b"_" in name:
            return name
    return None
