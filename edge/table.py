# The compiled RoutingTable: what the supervisor publishes into shared memory and every worker serves.
#
# Rules:
# - Frozen msgspec Structs, encoded with msgpack. Everything a worker needs is here; workers never see YAML.
# - Everything that can be decided at compile time is decided here: Istio defaults applied, hosts lowercased,
#   routes ordered and merged, weights of 0 dropped, percentages turned into parts per million, durations in
#   seconds (0.0 = no limit), header names lowercased, clusters resolved (a missing cluster is the empty
#   name "" and answers 503 NC).
# - Workers build their per-table indexes (compiled regexes, lookup dicts) once per generation, never per
#   request (workers/router.py).
# - Deterministic: the same resources give byte-identical encodings (dicts are emitted with sorted keys).
# - Layout changes bump TABLE_LAYOUT_VERSION; a worker refuses a table whose version it does not know.
from __future__ import annotations

from typing import Any

import msgspec

TABLE_LAYOUT_VERSION = 3  # 2: authorization, jwt_rules, HeaderMatcher.claim (issue 15); 3: upstream HTTP/2 (issue 12)

# StringMatcher kinds (a table, not an enum, so that msgpack stays small and workers index by int).
MATCH_EXACT = 0
MATCH_PREFIX = 1
MATCH_REGEX = 2  # value is a Python `re` pattern (the compiler checked the RE2 and translated it); full match
MATCH_PRESENT = 3  # header/query present with any value ({} or regex "*")
# Envoy's path_separated_prefix: the path equals the value or continues it with "/" (`/foo` matches `/foo` and
# `/foo/x`, never `/foobar`); the value has no trailing "/". Istio uses it for the prefixes of VirtualServices it
# derives from Ingress and the Gateway API (route.go translateRouteMatch, UseIngressSemantics).
MATCH_PATH_PREFIX = 4

# Route actions.
ACTION_FORWARD = 0
ACTION_REDIRECT = 1
ACTION_DIRECT = 2

# Listener protocols as the worker dispatches on them (workers/listeners.py keeps the handler table).
PROTO_HTTP = "HTTP"  # plain HTTP/1.1 (Istio HTTP, HTTP2, GRPC, GRPC-WEB servers)
PROTO_HTTPS = "HTTPS"  # TLS terminated, then HTTP; filter chains chosen by SNI
PROTO_TLS = "TLS"  # passthrough by SNI (filter chains without TLS contexts) or terminated TCP
# A port where terminating HTTPS servers and passthrough servers meet (Istio allows it: both are TLS, told
# apart by SNI) is PROTO_TLS too; dispatch per chain: tls None → passthrough, tls + tcp → terminated TCP,
# tls + route_config → terminated HTTP. PROTO_HTTPS means every chain is terminated HTTP.
PROTO_TCP = "TCP"  # opaque TCP

UNLIMITED = 2**32 - 1  # Istio's default circuit-breaker thresholds

# Cluster.upstream_protocol values.
UPSTREAM_HTTP1 = "HTTP/1.1"
UPSTREAM_HTTP2 = "HTTP/2"
UPSTREAM_CLIENT = "CLIENT"  # useClientProtocol: HTTP/2 for HTTP/2 requests, HTTP/1.1 for the others


# gc=False: a table is a tree of immutable values (no reference cycles), so its Structs need no GC header and the
# cyclic collector never walks them (10,000 VirtualServices: ~70,000 fewer tracked objects per process, 1.3 MiB
# less and a 40 % faster decode in each worker).
class Frozen(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    pass


class StringMatcher(Frozen):
    kind: int
    value: str = ""
    ignore_case: bool = False


class HeaderMatcher(Frozen):
    # Lowercase header name; ":method", ":authority" and ":scheme" are the request's pseudo-headers.
    name: str
    matcher: StringMatcher
    invert: bool = False  # withoutHeaders
    # A JWT claim match (`@request.auth.claims.a.b` / `[a][b]`, Istio's gateway-only claim routing): the claim path
    # in the verified payload, `name` kept as written. Istio's metadata matcher: a string claim, or a list holding
    # a matching string; no verified token = no claim.
    claim: tuple[str, ...] = ()


class QueryMatcher(Frozen):
    name: str
    matcher: StringMatcher


class RouteMatch(Frozen):
    # None = any path. ignore_case of the path matcher carries ignoreUriCase. A route whose action replaces
    # the matched prefix (Rewrite.prefix, Redirect.prefix_rewrite) always has a path matcher ("/" if none).
    path: StringMatcher | None = None
    headers: tuple[HeaderMatcher, ...] = ()
    query: tuple[QueryMatcher, ...] = ()
    name: str = ""


class HeaderOps(Frozen):
    set: tuple[tuple[str, str], ...] = ()  # overwrite or add; lowercase names
    add: tuple[tuple[str, str], ...] = ()  # append
    remove: tuple[str, ...] = ()


class HeaderRules(Frozen):
    request: HeaderOps | None = None
    response: HeaderOps | None = None
    # `:authority`/`host` set or added through request headers: a host rewrite (Istio turns it into one).
    authority: str = ""


class WeightedCluster(Frozen):
    # Empty name: the destination does not resolve to a cluster (unknown host or subset) → 503 NC.
    cluster: str
    weight: int = 1
    headers: HeaderRules | None = None
    host: str = ""  # the destination host as written, for logs and explanations
    # Consistent-hash policy from the DestinationRule of this destination (per route in Envoy).
    hash_policy: HashPolicy | None = None


class HashPolicy(Frozen):
    kind: str  # "header" | "cookie" | "source_ip" | "query"
    name: str = ""
    cookie_path: str = ""
    cookie_ttl_s: float = -1.0  # < 0: never generate the cookie; 0: session cookie
    cookie_attributes: tuple[tuple[str, str], ...] = ()


class Redirect(Frozen):
    code: int = 301
    scheme: str = ""  # "" = keep the request's scheme
    authority: str = ""  # "" = keep the request's host
    port: int = 0  # 0 = as FROM_PROTOCOL_DEFAULT (no port unless the request's host had none to keep)
    port_from_request: bool = False  # derivePort: FROM_REQUEST_PORT (the listener port)
    path: str = ""  # uri: replaces the whole path
    prefix_rewrite: str | None = None  # replaces the matched prefix (route path match must be a prefix)


class DirectResponse(Frozen):
    status: int
    body: bytes = b""


class Rewrite(Frozen):
    prefix: str | None = None  # `uri` with a prefix match, or no uri match (Envoy's prefix "/"): replaces the matched prefix
    full_path: str | None = None  # `uri` with an exact/regex match: replaces the whole path
    regex: str | None = None  # uriRegexRewrite.match as a Python `re` pattern (translated from RE2), compiled by workers
    regex_substitution: str = ""  # with \1 converted to Python's \g<1>
    authority: str = ""


class RetryPolicy(Frozen):
    attempts: int = 0  # retries, not tries: at most 1 + attempts requests
    per_try_timeout_s: float = 0.0
    retry_on: tuple[str, ...] = ()
    retriable_status_codes: tuple[int, ...] = ()
    backoff_base_s: float = 0.025
    ignore_previous_hosts: bool = True


class Fault(Frozen):
    delay_s: float = 0.0
    delay_ppm: int = 0  # parts per million of requests delayed
    abort_status: int = 0
    abort_grpc_status: str = ""
    abort_ppm: int = 0


class Mirror(Frozen):
    cluster: str
    ppm: int = 1_000_000
    host: str = ""


class Cors(Frozen):
    allow_origins: tuple[StringMatcher, ...] = ()
    allow_methods: str = ""
    allow_headers: str = ""
    expose_headers: str = ""
    max_age: str = ""
    allow_credentials: bool = False
    unmatched_preflights: str = "FORWARD"


class Route(Frozen):
    name: str = ""  # Envoy route name: HTTPRoute.name (+ "." + match name)
    virtual_service: str = ""  # "namespace/name"
    rule_index: int = 0  # index of the HTTPRoute inside its VirtualService (after delegate expansion)
    match: RouteMatch = RouteMatch()
    action: int = ACTION_FORWARD
    clusters: tuple[WeightedCluster, ...] = ()
    total_weight: int = 0
    redirect: Redirect | None = None
    direct: DirectResponse | None = None
    rewrite: Rewrite | None = None
    headers: HeaderRules | None = None
    timeout_s: float = 0.0  # 0 = disabled (Istio's default)
    retry: RetryPolicy | None = None
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors: Cors | None = None
    stat_prefix: str = ""
    # Envoy's RouteAction.cluster_not_found_response_code for a destination without a cluster (NC): 0 = Envoy's
    # default 503; Istio sets 500 on routes from the Gateway API (route.go, UseGatewaySemantics).
    cluster_not_found_status: int = 0


class VirtualHost(Frozen):
    name: str  # "<domain>:<port>", like Istio's vhost names
    domains: tuple[str, ...]
    routes: tuple[Route, ...] = ()
    require_tls: bool = False  # Gateway tls.httpsRedirect: 301 to https before routing


class RouteConfig(Frozen):
    name: str  # "http.8080" or "https.443.https.my-gateway.default"
    virtual_hosts: tuple[VirtualHost, ...] = ()
    # Host lookup, Envoy's precedence: exact → longest "*.suffix" → "*". Keys are lowercase; suffix keys
    # keep their leading dot (".example.com" for "*.example.com"). Values index virtual_hosts.
    exact_hosts: dict[str, int] = {}
    suffix_hosts: dict[str, int] = {}
    wildcard_host: int = -1


class ServerTLS(Frozen):
    mode: str  # SIMPLE | MUTUAL | OPTIONAL_MUTUAL
    cert_chain_file: str = ""
    private_key_file: str = ""
    ca_file: str = ""
    crl_file: str = ""
    credential_name: str = ""  # resolved against --credentials-dir by the worker's TLS layer
    extra_certificates: tuple[tuple[str, str], ...] = ()  # (cert, key) of tlsCertificates/credentialNames
    subject_alt_names: tuple[str, ...] = ()
    verify_certificate_spki: tuple[str, ...] = ()
    verify_certificate_hash: tuple[str, ...] = ()
    min_version: str = "TLSV1_2"
    max_version: str = "TLS_AUTO"
    cipher_suites: tuple[str, ...] = ()
    ecdh_curves: tuple[str, ...] = ()
    insecure_skip_verify: bool = False


class L4Route(Frozen):
    virtual_service: str = ""
    clusters: tuple[WeightedCluster, ...] = ()
    total_weight: int = 0


class FilterChain(Frozen):
    # SNI names this chain answers (lowercase; "*.x" wildcards allowed); empty = any SNI, or none.
    server_names: tuple[str, ...] = ()
    server_name: str = ""  # Gateway Server.name / "<gateway>/<port name>" for stats
    gateway: str = ""  # "namespace/name"
    tls: ServerTLS | None = None  # None on passthrough chains
    route_config: RouteConfig | None = None  # HTTPS: terminated HTTP
    tcp: L4Route | None = None  # passthrough, or terminated non-HTTP (protocol TLS + SIMPLE)


class Listener(Frozen):
    name: str  # "<bind>_<port>", Istio's listener name, e.g. "0.0.0.0_80"
    port: int  # the Gateway port.number
    bind: str = "0.0.0.0"
    protocol: str = PROTO_HTTP
    route_config: RouteConfig | None = None  # PROTO_HTTP
    filter_chains: tuple[FilterChain, ...] = ()  # PROTO_HTTPS / PROTO_TLS
    tcp: L4Route | None = None  # PROTO_TCP
    gateways: tuple[str, ...] = ()  # "namespace/name" of the Gateways contributing servers


# RequestAuthentication, compiled (edge/compiler/authentication.py; verified by workers/jwt.py). One row per JWT
# rule of every RequestAuthentication applying to this gateway, sorted by issuer (Istio's policy_applier order).


class JwtLocation(Frozen):
    name: str  # lowercase header name
    prefix: str = ""


class JwtRule(Frozen):
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    # The JWKS document: inline `jwks`, or the last good answer of `jwks_uri` filled in by the supervisor
    # (edge/jwks.py); "" with a jwks_uri = never fetched: this issuer's tokens fail verification.
    jwks: str = ""
    jwks_uri: str = ""
    fetch_timeout_s: float = 5.0  # JWTRule.timeout (Istio's default 5 s)
    # No location at all = Envoy's defaults (Authorization "Bearer " and ?access_token=), applied by workers/jwt.py.
    from_headers: tuple[JwtLocation, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str = ""  # lowercase
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()  # (lowercase header, claim)
    space_delimited_claims: tuple[str, ...] = ("permission", "scope")
    policy: str = ""  # "namespace/name" of its RequestAuthentication


# AuthorizationPolicy, compiled (edge/compiler/authorization.py; evaluated by workers/authz.py). Istio turns each
# policy rule into one Envoy RBAC policy: (any of its `from` AND-groups) AND (any of its `to` AND-groups), the `when`
# conditions AND-ed into every group. A table holds the RBAC filters Istio would build for an HTTP and for a TCP
# filter chain (the TCP ones without HTTP-only conditions: removed from DENY/AUDIT rules, whole rules dropped from
# ALLOW), in Istio's order AUDIT, DENY, ALLOW.

# What an AuthzCondition tests (Istio's attribute names).
AUTHZ_SOURCE_IP = "source.ip"  # the direct peer (after PROXY protocol): ipBlocks
AUTHZ_REMOTE_IP = "remote.ip"  # the trusted client address (XFF hops / PROXY protocol): remoteIpBlocks
AUTHZ_DESTINATION_IP = "destination.ip"
AUTHZ_DESTINATION_PORT = "destination.port"
AUTHZ_SNI = "connection.sni"
AUTHZ_PRINCIPAL = "source.principal"  # the verified client certificate's URI SAN (principals, namespaces, …)
AUTHZ_HOST = "host"  # :authority, case-insensitive
AUTHZ_METHOD = "method"
AUTHZ_PATH = "path"  # without the query
AUTHZ_HEADER = "request.headers"  # `name`
AUTHZ_REQUEST_PRINCIPAL = "request.auth.principal"  # iss/sub of the verified JWT, matched separately
AUTHZ_CLAIM = "request.auth.claims"  # `claim` path (audiences = aud, presenter = azp)


class AuthzStrings(Frozen):
    """An OR of Istio string forms: exact, prefix (`x*`), suffix (`*x`), non-empty (`*`), present (a header's `*`)
    and regular expressions (path templates, principal namespace/service account/trust domain forms)."""

    exact: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()  # Python `re`, full match
    non_empty: bool = False
    present: bool = False
    ignore_case: bool = False  # hosts: values lowercased here, the request's lowercased once


class AuthzCidrs(Frozen):
    """IP ranges as merged, sorted, inclusive (first, last) integer pairs per family."""

    v4: tuple[tuple[int, int], ...] = ()
    v6: tuple[tuple[int, int], ...] = ()


class AuthzCondition(Frozen):
    attribute: str  # AUTHZ_*
    negate: bool = False  # a not* field / notValues: NOT(any of them)
    strings: AuthzStrings | None = None
    cidrs: AuthzCidrs | None = None
    ports: tuple[int, ...] = ()
    name: str = ""  # AUTHZ_HEADER: the lowercase header name
    claim: tuple[str, ...] = ()  # AUTHZ_CLAIM: the nested claim path
    pairs: tuple[tuple[AuthzStrings, AuthzStrings], ...] = ()  # AUTHZ_REQUEST_PRINCIPAL: (iss, sub) matchers, OR-ed
    source: str = ""  # the policy field it came from, for `edge route`: "from[0].source.ipBlocks"


class AuthzRule(Frozen):
    name: str  # Envoy's policy id: "ns[<ns>]-policy[<name>]-rule[<i>]"
    principals: tuple[tuple[AuthzCondition, ...], ...] = ((),)  # OR of AND-groups; () in a group = any
    permissions: tuple[tuple[AuthzCondition, ...], ...] = ((),)


class AuthzFilter(Frozen):
    action: str  # "AUDIT" | "DENY" | "ALLOW"
    rules: tuple[AuthzRule, ...] = ()  # an ALLOW filter with no rule (or none matching) denies
    policies: tuple[str, ...] = ()  # "namespace/name" of the policies it was built from


class Authorization(Frozen):
    http: tuple[AuthzFilter, ...] = ()
    tcp: tuple[AuthzFilter, ...] = ()


class Endpoint(Frozen):
    address: str  # IP literal (or a DNS name before the supervisor resolved it)
    port: int
    weight: int = 1
    labels: dict[str, str] = {}


class ConnectionPool(Frozen):
    max_connections: int = UNLIMITED
    connect_timeout_s: float = 10.0
    tcp_keepalive: tuple[int, float, float] | None = None  # (probes, time_s, interval_s); 0 = OS default
    max_connection_duration_s: float = 0.0
    tcp_idle_timeout_s: float = 3600.0
    http1_max_pending_requests: int = UNLIMITED
    http2_max_requests: int = UNLIMITED
    max_requests_per_connection: int = 0  # 0 = unlimited
    max_retries: int = UNLIMITED
    idle_timeout_s: float = 3600.0
    # HTTP/2 upstreams (workers/http2/client.py): streams per connection (0 = the peer's MAX_CONCURRENT_STREAMS
    # alone), and connectionPool.http.http2KeepAlive as (interval_s, timeout_s) PINGs, None = off.
    max_concurrent_streams: int = 0
    h2_keepalive: tuple[float, float] | None = None


class OutlierPolicy(Frozen):
    consecutive_5xx: int = 5  # 0 = off
    consecutive_gateway_errors: int = 0  # 0 = off
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    error_codes: tuple[int, ...] = ()  # empty = all 5xx


class UpstreamTLS(Frozen):
    mode: str  # SIMPLE | MUTUAL
    client_cert_file: str = ""
    private_key_file: str = ""
    ca_file: str = ""  # "" = the system trust store
    credential_name: str = ""
    subject_alt_names: tuple[str, ...] = ()
    sni: str = ""  # "" = the request's Host
    insecure_skip_verify: bool = False
    crl_file: str = ""


class Cluster(Frozen):
    name: str  # "outbound|<port>|<subset>|<host>"
    service: str  # the ServiceEntry host
    port: int
    subset: str = ""
    protocol: str = ""  # ServicePort.protocol (HTTP, HTTPS, TCP, …)
    # The protocol spoken to the endpoints, decided at compile time (edge/compiler/clusters.upstream_protocol):
    # UPSTREAM_HTTP1, UPSTREAM_HTTP2, or UPSTREAM_CLIENT (DestinationRule useClientProtocol: the request's own).
    upstream_protocol: str = "HTTP/1.1"
    resolution: str = "STATIC"  # STATIC | DNS | DNS_ROUND_ROBIN
    endpoints: tuple[Endpoint, ...] = ()
    lb_policy: str = "LEAST_REQUEST"  # ROUND_ROBIN | LEAST_REQUEST | RANDOM | PASSTHROUGH | CONSISTENT_HASH
    hash_policy: HashPolicy | None = None
    pool: ConnectionPool = ConnectionPool()
    outlier: OutlierPolicy | None = None
    tls: UpstreamTLS | None = None
    dns_refresh_s: float = 60.0


class Options(Frozen):
    """Process-wide behaviour switches; the supervisor fills them from flags and environment."""

    server_header: str = "istio-envoy"  # `server` on every response; "" = pass the upstream's through
    accept_http10: bool = True  # False reproduces Istio's 426 for HTTP/1.0 (PILOT_HTTP10 unset)
    shadow_host_suffix: bool = False  # True = Istio ≤1.27 `-shadow` Host on mirrored requests
    max_request_headers_bytes: int = 60 * 1024
    max_connections_per_worker: int = 10_000
    request_headers_timeout_s: float = 10.0
    stream_idle_timeout_s: float = 300.0  # Envoy's stream_idle_timeout: 408/504 when a request's bytes stop moving
    idle_timeout_s: float = 3600.0
    tls_handshake_timeout_s: float = 15.0
    reject_underscore_headers: bool = True
    generate_request_id: bool = True
    num_trusted_proxies: int = 0  # X-Forwarded-For entries from the right that trusted proxies appended
    preserve_external_request_id: bool = False  # keep a client's x-request-id (Envoy's option; Istio: off)
    proxy_protocol: bool = False  # every connection starts with a PROXY protocol header (gatewayTopology.proxyProtocol)
    cluster_domain: str = "cluster.local"
    workers: int = 1  # worker processes sharing per-gateway limits (circuit breakers are divided by it)
    # HTTP/2 from clients (workers/http2/limits.py): Envoy's edge best-practice values by default.
    http2_max_concurrent_streams: int = 100
    http2_initial_stream_window: int = 64 * 1024
    http2_initial_connection_window: int = 1024 * 1024
    http2_max_active_streams_per_worker: int = 10_000


class RoutingTable(Frozen):
    layout_version: int = TABLE_LAYOUT_VERSION
    options: Options = Options()
    listeners: tuple[Listener, ...] = ()
    clusters: dict[str, Cluster] = {}
    # Default retry policy applied to routes without `retries` (Istio ≥1.24).
    default_retry: RetryPolicy | None = None
    authorization: Authorization | None = None  # AuthorizationPolicies selecting this gateway; None = none
    jwt_rules: tuple[JwtRule, ...] = ()  # RequestAuthentications applying to this gateway


_encoder = msgspec.msgpack.Encoder(order="sorted")
_decoder = msgspec.msgpack.Decoder(RoutingTable)


# Workers decode a table lazily: the same wire, decoded into variants of RoutingTable, Listener, FilterChain and
# RouteConfig whose `virtual_hosts` stay msgspec.Raw (zero-copy slices of the payload, which they keep alive);
# a worker decodes a virtual host with decode_virtual_host the first time a request names it (workers/router.py).
# With 10,000 VirtualServices that is the difference between ~17 MiB of decoded hosts per worker and the 4.5 MiB
# payload plus the hosts actually served. The variants are built from the fields of the classes above (only the
# listed fields change type), so they cannot drift from them; the payload's checksum was verified by the reader.
def _variant(cls: type, **types: Any) -> type:
    fields = []
    for f in msgspec.structs.fields(cls):
        tp = types.get(f.name, f.type)
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, tp, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, tp))
    return msgspec.defstruct("Lazy" + cls.__name__, fields, bases=(Frozen,), module=__name__)


LazyRouteConfig = _variant(RouteConfig, virtual_hosts=tuple[msgspec.Raw, ...])
LazyFilterChain = _variant(FilterChain, route_config=LazyRouteConfig | None)
LazyListener = _variant(Listener, route_config=LazyRouteConfig | None, filter_chains=tuple[LazyFilterChain, ...])
LazyRoutingTable = _variant(RoutingTable, listeners=tuple[LazyListener, ...])
_lazy_decoder = msgspec.msgpack.Decoder(LazyRoutingTable)
_vhost_decoder = msgspec.msgpack.Decoder(VirtualHost)


def encode_table(table: RoutingTable) -> bytes:
    return _encoder.encode(table)


def decode_table(payload: bytes | memoryview) -> RoutingTable:
    table = _decoder.decode(payload)
    if table.layout_version != TABLE_LAYOUT_VERSION:
        raise ValueError(f"table layout {table.layout_version} is not {TABLE_LAYOUT_VERSION}")
    return table


def decode_table_lazy(payload: bytes) -> Any:
    """A LazyRoutingTable: a RoutingTable whose route configs hold their virtual hosts still encoded."""
    table = _lazy_decoder.decode(payload)
    if table.layout_version != TABLE_LAYOUT_VERSION:
        raise ValueError(f"table layout {table.layout_version} is not {TABLE_LAYOUT_VERSION}")
    return table


def decode_virtual_host(host: VirtualHost | msgspec.Raw) -> VirtualHost:
    """A virtual host of a route config: as it is, or decoded from a lazy table's Raw."""
    return _vhost_decoder.decode(host) if type(host) is msgspec.Raw else host


def to_builtins(table: RoutingTable) -> Any:
    """JSON-ready form for `edge dump` and the admin `/config_dump`."""
    return msgspec.to_builtins(table, order="sorted")
