# The request checks, routing and route-level decisions of the HTTP proxy, pure: values in, values out. Every 4xx/5xx
# the gateway decides about a request before forwarding it is decided here, and named by its LOCAL_REPLIES entry
# (workers/http/replies.py); the connection loop (workers/http/server.py) only carries the decision out.
#
# Rules (the order of Envoy's connection manager and Istio's HTTP filter chain):
#   1. No table yet → 503 UH. The forwarded facts (X-Forwarded-For/-Proto, x-request-id, the client address) are
#      decided before routing: the scheme can come from a trusted proxy.
#   2. HTTP/1.0 where Istio's default (PILOT_HTTP10 unset) refuses it → 426; one without Host → 400 (Envoy's
#      missing_host_header). Header names with "_" → 400 (Envoy's edge default). CONNECT → 404 NR and a close (no
#      route takes it at an Istio gateway). A path that does not normalise (RFC 3986 dot segments, as Envoy's
#      normalize_path) → 400.
#   3. listener → filter chain → virtual host → route; a miss is 404 NR. httpsRedirect → 301 to https with the
#      Host as sent, the normalised path and the query (Envoy's createSslRedirectPath).
#   4. CORS preflight (answered, or forwarded when the origin is not ours), then redirect, direct response, fault
#      (delay and/or abort): decide_action returns what to do; the fault delay is the shell's to sleep.
from __future__ import annotations

from typing import NamedTuple

from edge.table import ACTION_DIRECT, ACTION_REDIRECT, Options, Route
from workers import headers as hdr
from workers.http.codec import Request
from workers.http.replies import LOCAL_REPLIES, LocalReply
from workers.paths import normalize_path, split_target
from workers.route_policies import FAULT_ABORT_BODY, PREFLIGHT_FORWARD, cors_preflight, cors_response_headers, decide_fault, grpc_abort_headers


class RequestInfo:
    """The request as the router, the forwarder and the log see it: decided once, from the codec's parsed head."""

    __slots__ = ("method", "path", "query", "authority", "authority_bytes", "scheme", "headers", "path_bytes", "query_bytes", "host", "port", "body_present", "chunked", "upgrade", "forwarded", "listener_port", "auth")


def read_request(request: Request, peer_ip: bytes, scheme: bytes, opts: Options, rng) -> tuple[RequestInfo, LocalReply | None]:
    """The request's facts, and the reply that refuses it, if one does (rules 1-2, after the table was found). The
    forwarded facts are decided first, so that a refused request is logged with them too."""
    head = request.head  # what the codec read from the fields, once (workers/http/framing.RequestHead)
    req = RequestInfo()
    req.method = request.method.decode("ascii")  # a token of KNOWN_METHODS
    req.headers = request.headers  # the list sent upstream: RequestAuthentication may replace it (workers/http/access.py)
    req.auth = None  # the verified JWT (workers/jwt.Auth), set by check_access
    upgrade = head.upgrade
    # WebSocket is the upgrade Istio's gateways enable (Envoy upgrade_configs); others are plain requests.
    req.upgrade = upgrade if upgrade is not None and upgrade.lower() == b"websocket" else None
    req.authority_bytes = authority = head.authority
    req.authority = authority.decode("ascii")  # parse_authority admits ASCII only
    req.forwarded = fwd = hdr.forwarded_for(
        head.xff,
        head.xfp,
        head.request_id,
        peer_ip=peer_ip,
        scheme=scheme,
        trusted_hops=opts.num_trusted_proxies,
        generate_request_id=opts.generate_request_id,
        preserve_request_id=opts.preserve_external_request_id,
        rng=rng,
    )
    req.scheme = fwd.scheme
    if request.http_version == b"1.0" and not opts.accept_http10:
        return req, LOCAL_REPLIES["http10_refused"]
    if not authority:
        # HTTP/1.0 may omit Host (the codecs require it of HTTP/1.1). Envoy then answers 400 missing_host_header: Istio
        # sets no default_host_for_http_10. Routed, the request would go upstream with an empty Host.
        return req, LOCAL_REPLIES["missing_host"]
    req.body_present = head.chunked or head.content_length > 0
    req.chunked = head.chunked
    if head.underscore and opts.reject_underscore_headers:
        return req, LOCAL_REPLIES["underscore_header"]
    if request.method == b"CONNECT":
        # Whatever the client sends after a CONNECT is a tunnel's bytes, so the connection closes after the answer.
        return req, LOCAL_REPLIES["connect_refused"]
    _, raw_path, raw_query = split_target(request.target)
    path = normalize_path(raw_path)
    if path is None:
        return req, LOCAL_REPLIES["path_normalization_failed"]
    req.path_bytes = path
    req.path = path.decode("latin-1")
    req.query_bytes = raw_query
    req.query = raw_query.decode("latin-1")
    req.port = head.port
    req.host = head.host.decode("ascii")
    return req, None


class Redirect(NamedTuple):
    """A local reply with a Location: the httpsRedirect of a virtual host, or a route's redirect."""

    reply: LocalReply
    location: bytes
    status: int = 0


def find_route(snapshot, listener_key: str, chain_index: int, req: RequestInfo):
    """listener → filter chain → virtual host → route (rule 3): the route's runtime (workers/tableview.RouteRuntime),
    a Redirect or a LocalReply. The listener's port is noted on `req` (a redirect may need it)."""
    router = None
    listener_rt = snapshot.listeners.get(listener_key)
    if listener_rt is not None:
        if chain_index >= 0:
            if chain_index < len(listener_rt.chains):
                router = listener_rt.chains[chain_index].router
        else:
            router = listener_rt.router
    vhost = router.find_virtual_host(req.host) if router is not None else None
    if vhost is None:
        return LOCAL_REPLIES["route_not_found"]
    if vhost.require_tls and req.scheme == "http":
        query = req.query_bytes
        location = b"https://" + req.authority_bytes + req.path_bytes + (b"?" + query if query else b"")
        return Redirect(LOCAL_REPLIES["https_redirect"], location)
    route = router.match(vhost, req)
    if route is None:
        return LOCAL_REPLIES["route_not_found"]
    req.listener_port = listener_rt.listener.port
    return snapshot.route_runtime(route)


class Answer(NamedTuple):
    """A route-level local reply (rule 4): the entry, its status and body when the route sets them, and headers."""

    reply: LocalReply
    status: int
    body: bytes
    headers: list
    content_type: bytes | None = b"text/plain"
    delay_s: float = 0.0


class Forward(NamedTuple):
    """Forward upstream, after `delay_s` (a fault delay), adding `cors_headers` to the response."""

    cors_headers: list | tuple
    delay_s: float = 0.0


FORWARD = Forward(())  # the common case, without an allocation per request


def decide_action(rt, method: bytes, req: RequestInfo, rng) -> Answer | Forward:
    """CORS, then the route's action, then fault: the order of Istio's HTTP filter chain (rule 4)."""
    route = rt.route
    extra: list = []
    if rt.cors is not None:
        origin = hdr.header_value(req.headers, b"origin")
        preflight = cors_preflight(rt.cors, method, origin, hdr.header_value(req.headers, b"access-control-request-method"))
        if preflight is not None and preflight != PREFLIGHT_FORWARD:
            return Answer(LOCAL_REPLIES["cors_preflight"], 200, b"", preflight)
        if preflight is None:
            extra = cors_response_headers(rt.cors, origin)
    if route.action == ACTION_REDIRECT:
        location = redirect_location(route, req, req.listener_port)
        return Answer(LOCAL_REPLIES["redirect"], route.redirect.code, b"", [(b"location", location), *extra])
    if route.action == ACTION_DIRECT:
        direct = route.direct
        return Answer(LOCAL_REPLIES["direct_response"], direct.status, direct.body, extra, content_type=None)
    if route.fault is not None:
        delay_s, abort_status, grpc_status = decide_fault(route.fault, rng)
        if abort_status:
            return Answer(LOCAL_REPLIES["fault_abort"], abort_status, FAULT_ABORT_BODY, extra, delay_s=delay_s)
        if grpc_status:
            return Answer(LOCAL_REPLIES["fault_abort"], 200, b"", grpc_abort_headers(grpc_status) + extra, delay_s=delay_s)
        return Forward(extra, delay_s) if extra or delay_s else FORWARD
    return Forward(extra) if extra else FORWARD


def redirect_location(route: Route, req: RequestInfo, listener_port: int) -> bytes:
    """The Location of a route's redirect (Istio's HTTPRedirect, as Envoy's RedirectAction builds it)."""
    r = route.redirect
    scheme = r.scheme or req.scheme
    host = r.authority or req.host
    port = 0
    if r.port:
        port = r.port
    elif r.port_from_request:
        port = req.port or listener_port
    elif not r.authority and not r.scheme and req.port:
        port = req.port  # same scheme and host: keep the port the client used
    if (scheme == "http" and port == 80) or (scheme == "https" and port == 443):
        port = 0
    path = req.path
    query = req.query
    if r.path:
        path = r.path
        if "?" in path:
            path, query = path.split("?", 1)
    elif r.prefix_rewrite is not None:
        prefix = route.match.path.value if route.match.path is not None else "/"
        path = r.prefix_rewrite + path[len(prefix) :]
    location = f"{scheme}://{host}{':' + str(port) if port else ''}{path}{'?' + query if query else ''}"
    return location.encode("latin-1")


def upstream_host(req: RequestInfo, route: Route, dest) -> bytes:
    """The Host sent upstream: the route's authority rewrite, the destination's, the route's headers, else the
    client's."""
    if route.rewrite is not None and route.rewrite.authority:
        return route.rewrite.authority.encode("latin-1")
    if dest.host_rewrite:
        return dest.host_rewrite
    if route.headers is not None and route.headers.authority:
        return route.headers.authority.encode("latin-1")
    return req.authority_bytes


def upstream_target(rt, req: RequestInfo) -> tuple[bytes, bytes | None]:
    """The request target sent upstream, and the original path when it was rewritten."""
    route = rt.route
    path = req.path_bytes
    original = None  # x-envoy-original-path: only when the route rewrites (Envoy's finalizePathHeader)
    rewrite = route.rewrite
    if rewrite is not None:
        new_path = None
        if rewrite.prefix is not None and route.match.path is not None:
            new_path = rewrite.prefix + req.path[len(route.match.path.value) :]
        elif rewrite.full_path is not None:
            new_path = rewrite.full_path
        elif rt.regex_rewrite is not None:
            new_path = rt.regex_rewrite.sub(rewrite.regex_substitution, req.path)
        if new_path is not None:
            original = req.path_bytes + (b"?" + req.query_bytes if req.query_bytes else b"")
            path = new_path.encode("latin-1")
    if req.query_bytes:
        return path + b"?" + req.query_bytes, original
    return path, original
