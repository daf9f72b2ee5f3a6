# One HTTP request's record, for the access log and the metrics (workers/access_log.py, workers/stats.py).
#
# Rules:
# - The request path sets only what it learns (status, flags, upstream, bytes); descriptive fields are derived
#   from the request and its connection when a line is written, so a request nobody logs never decodes them.
# - Forwarded facts (X-Forwarded-For, x-request-id, the authority, the remote address) are logged as the gateway
#   forwarded them, as Envoy's access log reads the request headers after its connection manager changed them.
from __future__ import annotations

from workers import headers as hdr
from workers.http.codec import Request
from workers.paths import split_target


class ClientGone(Exception):
    """The downstream client closed or reset while its request was in flight."""


class RequestLog:
    """One access-log / stats record. The request path sets only what it learns (status, flags, upstream,
    bytes); the descriptive fields (method, path, authority, user agent, …) are derived from the request and
    the connection when a log line is written, so a request that is not logged never decodes them."""

    status = 0
    flags = "-"
    details = "-"
    bytes_received = 0
    bytes_sent = 0
    upstream_host = "-"
    upstream_cluster = "-"
    route_name = "-"
    service_time_ms = -1
    attempts = 0
    duration_ms = 0
    forwarded: "hdr.Forwarded | None" = None  # once the request got that far: what went upstream
    upstream_authority: bytes | None = None  # the Host sent upstream (after rewrites), once routed to one
    upstream_local = "-"  # our end of the upstream connection that carried the last try
    upstream_path: bytes | None = None  # the request target sent upstream (after rewrites)
    upstream_original_path: bytes | None = None  # x-envoy-original-path, when the route rewrote the path
    response_headers: list | None = None  # the response head sent to the client (custom log templates read it)
    grpc_status = -1  # the gRPC status answered (trailers, trailers-only headers, or a gRPC local reply); -1 = none
    rbac = None  # workers/authz.RbacCounts of the AuthorizationPolicy filters this request went through (None: none)

    def __init__(self, start: float, down=None, request: Request | None = None):
        self.start = start
        self.down = down
        self.request = request

    def _header(self, name: bytes) -> str:
        if self.request is not None:
            value = hdr.header_value(self.request.headers, name)
            if value is not None:
                return value.decode("latin-1")
        return "-"

    @property
    def method(self) -> str:
        return self.request.method.decode("latin-1") if self.request is not None else "-"

    @property
    def path(self) -> str:
        return self.request.target.decode("latin-1") if self.request is not None else "-"

    @property
    def protocol(self) -> str:
        version = self.request.http_version if self.request is not None else b""
        return "HTTP/1.0" if version == b"1.0" else "HTTP/2" if version == b"2" else "HTTP/1.1"

    @property
    def authority(self) -> str:
        if self.upstream_authority is not None:
            return self.upstream_authority.decode("latin-1")
        if self.request is None:
            return "-"
        from_target = split_target(self.request.target)[0]
        return from_target.decode("latin-1") if from_target else self._header(b"host")

    @property
    def user_agent(self) -> str:
        return self._header(b"user-agent")

    # X-Forwarded-For, X-Request-Id, the authority and the remote address are logged as the gateway forwarded
    # them (Envoy's access log reads the request headers after its connection manager and router changed them;
    # the path stays the original, as the default format's %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% does).
    @property
    def request_id(self) -> str:
        fwd = self.forwarded
        if fwd is None:
            return self._header(b"x-request-id")
        return fwd.request_id.decode("latin-1") if fwd.request_id is not None else "-"

    @property
    def x_forwarded_for(self) -> str:
        fwd = self.forwarded
        return fwd.xff.decode("latin-1") if fwd is not None else self._header(b"x-forwarded-for")

    @property
    def downstream_remote(self) -> str:
        fwd = self.forwarded
        if fwd is not None and fwd.client_from_xff:
            ip = fwd.client_ip.decode("latin-1")
            return f"[{ip}]:0" if ":" in ip else f"{ip}:0"
        down = self.down
        return f"{down.peer[0]}:{down.peer[1]}" if down is not None and down.peer else "-"

    @property
    def downstream_local(self) -> str:
        down = self.down
        return f"{down.local[0]}:{down.local[1]}" if down is not None and down.local else "-"

    @property
    def access_log_hint(self) -> bool | None:
        """Envoy's %DYNAMIC_METADATA(envoy.common:access_log_hint)%: set by the AUDIT (LOG) filter, true when one of
        its rules matched; None when no AUDIT policy applies."""
        rbac = self.rbac
        if rbac is None or not (rbac.logged or rbac.not_logged):
            return None
        return rbac.logged > 0

    @property
    def listener(self) -> str:
        return self.down.listener_key if self.down is not None else "-"

    @property
    def sni(self) -> str:
        return (self.down.sni or "-") if self.down is not None else "-"


class ResponseAborted(Exception):
    """The response broke after it had started (the upstream truncated it or sent garbage): the client connection
    closes, so that it never sees a partial body as complete. The request's log says why (UPE)."""
