# What the stages hand each other: the compile's options and result, the constants more than one stage
# reads, and the intermediate records (a server of a selected Gateway, a listener plan, a translated rule
# and its match blocks, a prepared VirtualService, a merged DestinationRule, a ServiceEntry host).
#
# Rules:
# - Plain data: no stage logic here beyond a property that names a record; what a record means is said
#   where it is defined, with the Istio function it stands for.
# - A constant used by one stage only lives in that stage's module; here are the shared ones.
from __future__ import annotations

from dataclasses import dataclass, field

from edge import istio, table
from edge.errors import ERROR, WARNING, Diagnostic

DEFAULT_GATEWAY_LABELS = {"istio": "ingressgateway"}
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_GATEWAY_CLASSES = ("istio",)  # Istio's built-in GatewayClass
MESH_GATEWAY = "mesh"
PPM_PER_PERCENT = 10_000
JWT_CLAIM_PREFIX = "@request.auth.claims"
# A VirtualService a front stage derives from another API carries Istio's own marker of whose path semantics
# its routes keep (pkg/config/constants: InternalRouteSemantics): "ingress" and "gateway" prefixes are
# path-separated (route.go: PathSeparatedPrefix with one trailing "/" trimmed, "/" stays a plain prefix).
ROUTE_SEMANTICS_ANNOTATION = "internal.istio.io/route-semantics"
ROUTE_SEMANTICS_INGRESS = "ingress"
ROUTE_SEMANTICS_GATEWAY = "gateway"
PATH_SEPARATED_SEMANTICS = frozenset({ROUTE_SEMANTICS_INGRESS, ROUTE_SEMANTICS_GATEWAY})
# The other half of Istio's UseGatewaySemantics: a destination without a cluster answers 500, not 503 (route.go
# applyHTTPRouteDestination sets ClusterNotFoundResponseCode INTERNAL_SERVER_ERROR, as the Gateway API requires for
# invalid backendRefs). The gateway_api stage marks its VirtualServices with this (it writes its own path-separated
# variants, so it does not set route-semantics); routes.py reads it.
CLUSTER_NOT_FOUND_500_ANNOTATION = "internal.edge/cluster-not-found-500"

# Istio ≥1.24 default retry policy (retry.go cachedDefaultPolicy): no retriable status codes, so 503 is not retried.
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
DEFAULT_RETRY = table.RetryPolicy(attempts=2, retry_on=DEFAULT_RETRY_ON)
# With consistent hashing the previous-hosts predicate is left out (cachedDefaultConsistentHashPolicy).
DEFAULT_RETRY_CONSISTENT_HASH = table.RetryPolicy(attempts=2, retry_on=DEFAULT_RETRY_ON, ignore_previous_hosts=False)

# Gateway Server.port.protocol (case-insensitive, pkg/config/protocol) → the listener protocol it serves.
# Server kinds: what one server does on its port; groups: which kinds may share one (bind, port).
KIND_HTTP = "http"  # HTTP, HTTP2, GRPC, GRPC-WEB (plain text; tls only for httpsRedirect)
KIND_HTTPS = "https"  # HTTPS with SIMPLE/MUTUAL/OPTIONAL_MUTUAL: terminate, then HTTP routes
KIND_TLS_TERMINATE = "tls-terminate"  # TLS with SIMPLE/MUTUAL/OPTIONAL_MUTUAL: terminate, then tcp routes
KIND_PASSTHROUGH = "passthrough"  # HTTPS or TLS with PASSTHROUGH: SNI → tls routes, no termination
KIND_TCP = "tcp"  # TCP, MONGO, REDIS, MYSQL: opaque bytes, first matching tcp route

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
TCP_PROTOCOLS = frozenset({"TCP", "MONGO", "REDIS", "MYSQL"})
TERMINATING_MODES = frozenset({"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"})
KIND_GROUP = {KIND_HTTP: "http", KIND_HTTPS: "tls", KIND_TLS_TERMINATE: "tls", KIND_PASSTHROUGH: "tls", KIND_TCP: "tcp"}


@dataclass(frozen=True)
class CompileOptions:
    gateway_labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GATEWAY_LABELS))
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    table_options: table.Options = table.Options()
    gateway_classes: tuple[str, ...] = DEFAULT_GATEWAY_CLASSES  # Gateway API classes served (--gateway-class)
    # Where AuthorizationPolicies apply (edge/compiler/authorization.py): the gateway workload's namespace and
    # Istio's root namespace (meshConfig.rootNamespace), both istio-system by default.
    gateway_namespace: str = "istio-system"
    root_namespace: str = "istio-system"
    # Istio's mesh config ingressClass and ingressControllerMode (defaults "istio", STRICT): which Ingresses are served.
    ingress_class: str = "istio"
    ingress_controller_mode: str = "STRICT"


@dataclass
class CompileResult:
    table: table.RoutingTable | None
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return self.table is not None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == WARNING]


def ppm(p: istio.Percent) -> int:
    """A percentage (fault, mirror) as parts per million, the precision the table keeps."""
    return int(p.value * PPM_PER_PERCENT)


@dataclass
class GatewayServer:
    """One server of a selected Gateway, with its hosts sanitised and what it does on its port (KIND_*)."""

    gateway: istio.Resource
    index: int
    server: istio.Server
    hosts: list[str]  # sanitised: "h", "*", or "ns/h"
    kind: str

    @property
    def gw_key(self) -> str:
        return self.gateway.key

    @property
    def path(self) -> str:
        return f"$.spec.servers[{self.index}]"

    @property
    def port(self) -> int:
        return self.server.port.number

    def describe(self) -> str:
        return f"Gateway {self.gateway.key} server {self.server.port.name or self.index} ({self.server.port.protocol} {self.port})"


@dataclass
class ListenerPlan:
    """The servers merged onto one (bind, port), as mergeGateways keys them; `group` says which kinds."""

    bind: str
    port: int
    group: str
    servers: list[GatewayServer] = field(default_factory=list)


@dataclass
class MatchBlock:
    """One HTTPMatchRequest of a rule, translated; `port` and `gateways` are filtered per server later."""

    match: table.RouteMatch
    port: int
    gateways: tuple[str, ...]
    source_labels: dict[str, str]
    source_namespace: str
    catch_all: bool
    path: str
    stat_prefix: str


@dataclass
class Rule:
    """One HTTPRoute, translated as far as it goes without knowing the gateway and port."""

    owner: istio.Resource  # the VirtualService the rule is written in (a delegate for merged rules)
    path: str
    index: int
    http: istio.HTTPRoute
    matches: list[MatchBlock] | None  # None: no match blocks (a catch-all)
    headers: table.HeaderRules | None
    timeout_s: float
    retry: table.RetryPolicy | None
    fault: table.Fault | None
    cors: table.Cors | None
    direct: table.DirectResponse | None
    rewrite: table.Rewrite | None
    redirect_supported: bool
    needs_prefix: bool  # the action replaces the matched prefix: a path matcher must exist
    dest_headers: list[table.HeaderRules | None]  # per route destination
    port_sensitive: bool | None = None  # computed on first use (routes.py)


@dataclass
class PreparedVirtualService:
    """A VirtualService with names resolved, its delegates merged in and its rules translated."""

    res: istio.Resource
    spec: istio.VirtualService  # hosts, gateways and destinations resolved
    gateways: tuple[str, ...]
    http: list[tuple[istio.Resource, str, istio.HTTPRoute]]  # (owner, path, route) after delegate merging
    rules: list[Rule] | None = None
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.res.key


@dataclass
class VHostBuild:
    """One domain's routes while a route configuration is being built (listeners.py)."""

    routes: list[table.Route] = field(default_factory=list)
    require_tls: bool = False
    seen: set[tuple[str, str]] = field(default_factory=set)  # (VirtualService, gateway) already appended
    route_ids: set[int] = field(default_factory=set)


@dataclass
class MergedDR:
    """The DestinationRules of one host merged (mergeDestinationRule): first policy, subsets concatenated."""

    res: istio.Resource
    host: str
    traffic_policy: istio.TrafficPolicy | None
    subsets: dict[str, istio.Subset]


@dataclass
class Service:
    """One ServiceEntry host: the registry entry a destination host resolves to."""

    res: istio.Resource
    spec: istio.ServiceEntry
    host: str
