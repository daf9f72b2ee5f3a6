# What an HTTP/2 upstream connection decides, as pure functions: the request head mapped onto HTTP/2 fields, the
# response head mapped back, and how many streams a connection may carry. The I/O is workers/http2/client.py.
#
# Rules (RFC 9113 §8.2.2, §8.3; Envoy's HTTP/2 codec; DestinationRule connectionPool.http):
# - A request goes upstream as :method, :scheme, :authority (the Host the proxy decided), :path, then its fields
#   without the connection-specific ones (Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade)
#   and without Host (it became :authority). TE goes only as "te: trailers" (the one value HTTP/2 allows, and
#   what Envoy forwards). Content-Length is kept: it is the length the proxy framed. Cookies go as the one
#   field they arrive in (RFC 9113 §8.2.3 allows either form).
# - A response's :status is the status; other pseudo-fields and connection-specific fields are dropped (h2
#   refuses them on receipt already); a response to an HTTP/1.1 client is framed by the HTTP/1.1 codec.
# - Stream slots: a connection opens a new stream while its open streams stay below both the peer's
#   SETTINGS_MAX_CONCURRENT_STREAMS and the DestinationRule's maxConcurrentStreams, it has not received GOAWAY,
#   and the streams it has carried stay below maxRequestsPerConnection. Before the peer's SETTINGS arrive a
#   connection is assumed to take PEER_STREAMS_BEFORE_SETTINGS (RFC 9113 §6.5.2 advises 100 at least).
from __future__ import annotations

from workers.http2.request import CONNECTION_SPECIFIC as _FORBIDDEN

# Not carried over to an h2 upstream: RFC 9113 §8.2.2's connection-specific fields, Host (it becomes :authority)
# and te (only "te: trailers" is sent, decided apart).
CONNECTION_SPECIFIC = _FORBIDDEN | {b"host", b"te"}
PEER_STREAMS_BEFORE_SETTINGS = 100


def te_trailers(headers) -> bool:
    """Whether a request's TE lists `trailers` (the only TE that crosses: Envoy forwards `te: trailers`)."""
    for name, value in headers:
        if name == b"te" and any(part.strip().lower().split(b";")[0] == b"trailers" for part in value.split(b",")):
            return True
    return False


def h2_request_headers(method: bytes, scheme: bytes, authority: bytes, path: bytes, headers) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header block of a request the proxy built as an HTTP/1.1 field list."""
    out = [(b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", path)]
    trailers = False
    for name, value in headers:
        if name in CONNECTION_SPECIFIC:
            if name == b"te" and not trailers:
                trailers = te_trailers(((name, value),))
            continue
        if name[:1] == b":":
            continue
        out.append((name, value))
    if trailers:
        out.append((b"te", b"trailers"))
    return out


def response_head(headers) -> tuple[int, list[tuple[bytes, bytes]]]:
    """(:status, the regular fields) of an HTTP/2 response or trailer block; status 0 when absent or invalid."""
    status = 0
    out = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":status" and value.isdigit() and len(value) == 3:
                status = int(value)
            continue
        if name in CONNECTION_SPECIFIC:
            continue
        out.append((name, value))
    return status, out


class StreamSlots:
    """How many streams one upstream connection may carry now (see the module rules)."""

    __slots__ = ("peer_max", "local_max", "max_requests", "active", "opened", "goaway")

    def __init__(self, local_max: int = 0, max_requests: int = 0):
        self.peer_max = PEER_STREAMS_BEFORE_SETTINGS
        self.local_max = local_max  # DestinationRule maxConcurrentStreams, 0 = the peer's alone
        self.max_requests = max_requests  # maxRequestsPerConnection, 0 = unlimited
        self.active = 0
        self.opened = 0
        self.goaway = False

    @property
    def limit(self) -> int:
        return min(self.peer_max, self.local_max) if self.local_max > 0 else self.peer_max

    def free(self) -> int:
        """Streams that may open now."""
        if self.goaway:
            return 0
        free = self.limit - self.active
        if self.max_requests > 0:
            free = min(free, self.max_requests - self.opened)
        return max(0, free)

    def take(self) -> bool:
        if self.free() <= 0:
            return False
        self.active += 1
        self.opened += 1
        return True

    def give_back(self) -> None:
        if self.active > 0:
            self.active -= 1

    @property
    def spent(self) -> bool:
        """No stream will ever open again (GOAWAY received, or maxRequestsPerConnection reached)."""
        return self.goaway or (self.max_requests > 0 and self.opened >= self.max_requests)
