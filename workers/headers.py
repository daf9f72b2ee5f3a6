# Header rules of the proxy, as pure functions over h11-style header lists: [(lowercase name, value), …].
#
# Rules (RFC 9110 §7.6.1, RFC 9112, and what Envoy does at an Istio ingress gateway):
# - Hop-by-hop headers never cross the proxy, in either direction: Connection and every name it lists,
#   Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding and Upgrade. Message framing is re-done by
#   the codec on each side (Content-Length is kept and checked by the codec; chunked is re-chunked).
# - Requests going upstream: X-Forwarded-For gets the peer address appended, X-Forwarded-Proto is set to the
#   downstream scheme, X-Request-Id is generated when absent, X-Envoy-Attempt-Count counts tries, Expect is
#   dropped (the gateway answers 100-continue itself, as Envoy does by default), the Host is the request's
#   or the route's rewrite.
# - Route header operations run after the proxy's own, route level first and destination level second, so
#   a destination `set` wins (Istio appends destination operations after the route's).
# - Responses going downstream: `server` is overwritten with the configured name, x-envoy-upstream-service-time
#   is added, then the route's response operations.
# - Header operations are compiled once per table into bytes (CompiledHeaderOps); nothing here lowercases
#   or encodes on the request path except values the request itself brings.
from __future__ import annotations

import os
from typing import Iterable

from edge.table import HeaderOps, HeaderRules

Header = tuple[bytes, bytes]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Request headers the proxy sets itself, so a client's copy is dropped first.
PROXY_SET_REQUEST = frozenset({b"host", b"expect", b"x-forwarded-proto", b"x-envoy-attempt-count", b"x-envoy-expected-rq-timeout-ms", b"x-envoy-original-path", b"x-envoy-internal", b"x-envoy-external-address", b"x-forwarded-client-cert"})
PROXY_SET_RESPONSE = frozenset({b"x-envoy-upstream-service-time"})

_EMPTY: frozenset[bytes] = frozenset()


class CompiledHeaderOps:
    """HeaderOps with bytes names/values and the set of names it touches, built once per table."""

    __slots__ = ("set", "add", "remove", "drop")

    def __init__(self, ops: HeaderOps):
        self.set = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in ops.set)
        self.add = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in ops.add)
        self.remove = frozenset(k.lower().encode("latin-1") for k in ops.remove)
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


def upstream_request_headers(
    headers: list[Header],
    *,
    host: bytes,
    peer_ip: bytes,
    scheme: bytes,
    attempt: int = 1,
    timeout_ms: int = 0,
    original_path: bytes | None = None,
    chunked: bool = False,
    content_length: int | None = None,
    generate_request_id: bool = True,
    rng=None,

    route_ops: CompiledHeaderOps | None = None,
    destination_ops: CompiledHeaderOps | None = None,
) -> list[Header]:
    """The header list sent upstream for one try; `headers` is the client's list (not modified)."""
    out: list[Header] = [(b"host", host)]
    xff: bytes | None = None
    has_request_id = False
    connection: list[bytes] | None = None
    for name, value in headers:
        if name in HOP_BY_HOP or name in PROXY_SET_REQUEST:
            if name == b"connection":
                (connection := connection or []).append(value)
            continue
        if name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
            continue
        if name == b"x-request-id":
            has_request_id = True
        out.append((name, value))
    if connection is not None:
        listed = connection_tokens((b"connection", v) for v in connection) - HOP_BY_HOP
        if listed:  # names the client marked hop-by-hop (usually only keep-alive, which is one anyway)
            out = [h for h in out if h[0] not in listed]
    out.append((b"x-forwarded-for", peer_ip if xff is None else xff + b", " + peer_ip))
    out.append((b"x-forwarded-proto", scheme))
    if not has_request_id and generate_request_id:
        out.append((b"x-request-id", new_request_id(rng)))
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
    if connection is not None:
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


def has_connection_token(headers: Iterable[Header], token: bytes) -> bool:
    """Whether a Connection header lists `token` (lowercase)."""
    for name, value in headers:
        if name == b"connection":
            for part in value.split(b","):
                if part.strip().lower() == token:
                    return True
    return False


def has_conflicting_framing(headers: Iterable[Header]) -> bool:
    """Content-Length together with Transfer-Encoding: a smuggling risk that Envoy rejects (RFC 9112 §6.3
    lets a server reject it and requires it to close the connection anyway)."""
    length = chunked = False
    for name, _ in headers:
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            chunked = True
    return length and chunked


def has_underscore_name(headers: Iterable[Header]) -> bytes | None:

    """The first header name with an underscore (Envoy's edge default rejects such requests)."""
    for name, _ in headers:
        if b"_" in name:
            return name
    return None
