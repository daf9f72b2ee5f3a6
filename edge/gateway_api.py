# The Kubernetes Gateway API (gateway.networking.k8s.io) as msgspec Structs: GatewayClass, Gateway, HTTPRoute, GRPCRoute,
# TLSRoute, TCPRoute and ReferenceGrant, the boundary where their YAML becomes trusted data.
#
# Rules:
# - Field for field from kubernetes-sigs/gateway-api apis/v1 (gateway_types.go, gatewayclass_types.go,
#   httproute_types.go, grpcroute_types.go, shared_types.go, object_reference_types.go, referencegrant_types.go,
#   tlsroute_types.go, tcproute_types.go; v1alpha2 TLSRoute/TCPRoute/GRPCRoute are the same rules), camelCase on
#   the wire, unknown fields rejected. Status is never read (it is what `edge check` reports, not an input).
# - GRPCRoute: a rule without matches matches every request (no default is filled in, unlike HTTPRoute);
#   sessionPersistence is decoded with its CEL rules so that the compiler can refuse it by name.
# - The CRD's `+kubebuilder:default` values are the Struct defaults (path match PathPrefix "/", header and
#   query match Exact, backend weight 1, backendRef kind Service, redirect 302, listener tls mode Terminate,
#   allowedRoutes from Same, a rule without matches matches PathPrefix "/"), so that the compiler never
#   guesses; defaults that depend on the object (a parentRef's namespace is the route's) stay None.
# - The CRD's OpenAPI patterns and limits (Hostname, PreciseHostname, SectionName, header names, durations,
#   ports, list sizes) are msgspec Meta constraints; the CEL rules that concern one object (filter one-of per
#   type, path values, redirect xor rewrite, listener tls/hostname per protocol) are __post_init__ checks. A
#   failed check is a ValidationError with the `$.…` path, which the loader maps to a line: the API server
#   would have refused the object.
# - Rules that need other objects (references, attachment, intersection) are the compiler's
#   (edge/compiler/gateway_api.py), reported as the status conditions the Gateway API defines.
from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta


API_GROUP = "gateway.networking.k8s.io"
# Versions per kind, as the CRDs of gateway-api v1.x serve them (and Istio still reads v1beta1/v1alpha2).
STANDARD_VERSIONS = ("v1", "v1beta1")
REFERENCE_GRANT_VERSIONS = ("v1", "v1beta1", "v1alpha2")
ROUTE_L4_VERSIONS = ("v1", "v1alpha2")
GRPC_ROUTE_VERSIONS = ("v1", "v1alpha2")  # v1 since gateway-api 1.1; Istio still reads v1alpha2

# shared_types.go patterns.
_HOSTNAME = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_PRECISE_HOSTNAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECTION_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_NAMESPACE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_GROUP = r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_KIND = r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$"
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
_GW_DURATION = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
_CONTROLLER = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$"
_PROTOCOL = r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9]+$"
# HTTPPathMatch: the characters an Exact/PathPrefix value may hold.
_PATH_CHARS = r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$"

Hostname = Annotated[str, Meta(min_length=1, max_length=253, pattern=_HOSTNAME)]
PreciseHostname = Annotated[str, Meta(min_length=1, max_length=253, pattern=_PRECISE_HOSTNAME)]
SectionName = Annotated[str, Meta(min_length=1, max_length=253, pattern=_SECTION_NAME)]
Namespace = Annotated[str, Meta(min_length=1, max_length=63, pattern=_NAMESPACE)]
Group = Annotated[str, Meta(max_length=253, pattern=_GROUP)]
KindName = Annotated[str, Meta(min_length=1, max_length=63, pattern=_KIND)]
ObjectName = Annotated[str, Meta(min_length=1, max_length=253)]
HeaderName = Annotated[str, Meta(min_length=1, max_length=256, pattern=_HEADER_NAME)]
PortNumber = Annotated[int, Meta(ge=1, le=65535)]
Weight = Annotated[int, Meta(ge=0, le=1_000_000)]
# GEP-2257 durations (1 to 4 `<number><h|m|s|ms>` parts), kept as text; the compiler reads them (gateway_duration).
GwDuration = Annotated[str, Meta(pattern=_GW_DURATION)]


class Object(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True, omit_defaults=True):
    """Base of every Gateway API struct."""


_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_DURATION_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def gateway_duration(text: str) -> float:
    """A checked GEP-2257 duration ("1m30s", "500ms") in seconds."""
    return sum(int(n) * _DURATION_UNIT_S[u] for n, u in _DURATION_PART.findall(text))


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------------------
# References (object_reference_types.go, shared_types.go)
# ---------------------------------------------------------------------------------------------------------


class ParentReference(Object, kw_only=True):
    group: Group = API_GROUP
    kind: KindName = "Gateway"
    namespace: Namespace | None = None  # the route's namespace
    name: ObjectName
    section_name: SectionName | None = None
    port: PortNumber | None = None


class BackendObjectReference(Object, kw_only=True):
    group: Group = ""
    kind: KindName = "Service"
    name: ObjectName
    namespace: Namespace | None = None  # the route's namespace
    port: PortNumber | None = None

    def __post_init__(self) -> None:
        _require(not (self.group == "" and self.kind == "Service" and self.port is None), "Must have port for Service reference")


class SecretObjectReference(Object, kw_only=True):
    group: Group = ""
    kind: KindName = "Secret"
    name: ObjectName
    namespace: Namespace | None = None  # the Gateway's namespace


class LocalObjectReference(Object, kw_only=True):
    group: Group
    kind: KindName
    name: ObjectName


class BackendRef(BackendObjectReference, kw_only=True):
    weight: Weight = 1


# ---------------------------------------------------------------------------------------------------------
# GatewayClass (gatewayclass_types.go)
# ---------------------------------------------------------------------------------------------------------


class ParametersReference(Object, kw_only=True):
    group: Group
    kind: KindName
    name: ObjectName
    namespace: Namespace | None = None


class GatewayClassSpec(Object, kw_only=True):
    controller_name: Annotated[str, Meta(min_length=1, max_length=253, pattern=_CONTROLLER)]
    parameters_ref: ParametersReference | None = None
    description: Annotated[str, Meta(max_length=64)] | None = None


# ---------------------------------------------------------------------------------------------------------
# Gateway (gateway_types.go)
# ---------------------------------------------------------------------------------------------------------

TLSMode = Literal["Terminate", "Passthrough"]


class ListenerTLSConfig(Object, kw_only=True):
    mode: TLSMode = "Terminate"
    certificate_refs: Annotated[list[SecretObjectReference], Meta(max_length=64)] = []
    options: Annotated[dict[str, Annotated[str, Meta(max_length=4096)]], Meta(max_length=16)] = {}

    def __post_init__(self) -> None:
        _require(self.mode != "Terminate" or bool(self.certificate_refs) or bool(self.options), "certificateRefs or options must be specified when mode is Terminate")


class LabelSelectorRequirement(Object, kw_only=True):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = []


class LabelSelector(Object, kw_only=True):
    match_labels: dict[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []


class RouteNamespaces(Object, kw_only=True):
    from_: Literal["All", "Selector", "Same"] = msgspec.field(default="Same", name="from")
    selector: LabelSelector | None = None

    def __post_init__(self) -> None:
        _require(self.from_ != "Selector" or self.selector is not None, "selector must be specified when from is Selector")


class RouteGroupKind(Object, kw_only=True):
    group: Group = API_GROUP
    kind: KindName


class AllowedRoutes(Object, kw_only=True):
    namespaces: RouteNamespaces = msgspec.field(default_factory=RouteNamespaces)
    kinds: Annotated[list[RouteGroupKind], Meta(max_length=8)] = []


class Listener(Object, kw_only=True):
    name: SectionName
    hostname: Hostname | None = None
    port: PortNumber
    protocol: Annotated[str, Meta(min_length=1, max_length=255, pattern=_PROTOCOL)]
    tls: ListenerTLSConfig | None = None
    allowed_routes: AllowedRoutes = msgspec.field(default_factory=AllowedRoutes)


class GatewaySpecAddress(Object, kw_only=True):
    type: str = "IPAddress"
    value: Annotated[str, Meta(max_length=253)] = ""


class GatewayInfrastructure(Object, kw_only=True):
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    parameters_ref: LocalObjectReference | None = None


class GatewaySpec(Object, kw_only=True):
    gateway_class_name: ObjectName
    listeners: Annotated[list[Listener], Meta(min_length=1, max_length=64)]
    addresses: Annotated[list[GatewaySpecAddress], Meta(max_length=16)] = []
    infrastructure: GatewayInfrastructure | None = None

    def __post_init__(self) -> None:
        # The listeners' CEL rules (gateway_types.go GatewaySpec.Listeners).
        names: set[str] = set()
        combos: set[tuple[int, str, str]] = set()
        for lis in self.listeners:
            proto = lis.protocol
            _require(not (proto in ("HTTP", "TCP", "UDP") and lis.tls is not None), "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']")
            _require(not (proto == "HTTPS" and lis.tls is not None and lis.tls.mode != "Terminate"), "tls mode must be Terminate for protocol HTTPS")
            _require(not (proto == "TLS" and lis.tls is None), "tls mode must be set for protocol TLS")
            _require(not (proto in ("TCP", "UDP") and lis.hostname), "hostname must not be specified for protocols ['TCP', 'UDP']")
            _require(lis.name not in names, "Listener name must be unique within the Gateway")
            names.add(lis.name)
            combo = (lis.port, proto, lis.hostname or "")
            _require(combo not in combos, "Combination of port, protocol and hostname must be unique for each listener")
            combos.add(combo)


# ---------------------------------------------------------------------------------------------------------
# HTTPRoute (httproute_types.go)
# ---------------------------------------------------------------------------------------------------------

PathMatchType = Literal["Exact", "PathPrefix", "RegularExpression"]
HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
_BAD_PATH_PARTS = ("//", "/./", "/../", "%2f", "%2F", "#")


def path_value_problem(kind: str, value: str) -> str | None:
    """HTTPPathMatch's CEL rules for Exact and PathPrefix values (also used for path modifiers' values)."""
    if kind not in ("Exact", "PathPrefix"):
        return None
    if not value.startswith("/"):
        return "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']"
    for part in _BAD_PATH_PARTS:
        if part in value:
            return f"must not contain {part!r} when type one of ['Exact', 'PathPrefix']"
    for end in ("/..", "/."):
        if value.endswith(end):
            return f"must not end with {end!r} when type one of ['Exact', 'PathPrefix']"
    if not _PATH_CHARS_RE.fullmatch(value):
        return "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types ['Exact', 'PathPrefix']"
    return None


_PATH_CHARS_RE = re.compile(_PATH_CHARS)


class HTTPPathMatch(Object, kw_only=True):
    type: PathMatchType = "PathPrefix"
    value: Annotated[str, Meta(max_length=1024)] = "/"

    def __post_init__(self) -> None:
        problem = path_value_problem(self.type, self.value)
        _require(problem is None, problem or "")


class HTTPHeaderMatch(Object, kw_only=True):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Meta(min_length=1, max_length=4096)]


class HTTPQueryParamMatch(Object, kw_only=True):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Meta(min_length=1, max_length=1024)]


def _unique_names(owner: str, names: list[str]) -> None:
    lowered = [n.lower() for n in names]
    dup = next((n for n in lowered if lowered.count(n) > 1), None)
    _require(dup is None, f"{owner}: {dup!r} appears more than once (names are case-insensitive)")


class HTTPRouteMatch(Object, kw_only=True):
    path: HTTPPathMatch = msgspec.field(default_factory=HTTPPathMatch)
    headers: Annotated[list[HTTPHeaderMatch], Meta(max_length=16)] = []
    query_params: Annotated[list[HTTPQueryParamMatch], Meta(max_length=16)] = []
    method: HTTPMethod | None = None


class HTTPHeader(Object, kw_only=True):
    name: HeaderName
    value: Annotated[str, Meta(min_length=1, max_length=4096)]


class HTTPHeaderFilter(Object, kw_only=True):
    set: Annotated[list[HTTPHeader], Meta(max_length=16)] = []
    add: Annotated[list[HTTPHeader], Meta(max_length=16)] = []
    remove: Annotated[list[HeaderName], Meta(max_length=16)] = []

    def __post_init__(self) -> None:
        _unique_names("set", [h.name for h in self.set])
        _unique_names("add", [h.name for h in self.add])
        _unique_names("remove", list(self.remove))


class HTTPPathModifier(Object, kw_only=True):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: Annotated[str, Meta(max_length=1024)] | None = None
    replace_prefix_match: Annotated[str, Meta(max_length=1024)] | None = None

    def __post_init__(self) -> None:
        full, prefix = self.type == "ReplaceFullPath", self.type == "ReplacePrefixMatch"
        _require(not full or self.replace_full_path is not None, "replaceFullPath must be specified when type is set to 'ReplaceFullPath'")
        _require(self.replace_full_path is None or full, "type must be 'ReplaceFullPath' when replaceFullPath is set")
        _require(not prefix or self.replace_prefix_match is not None, "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'")
        _require(self.replace_prefix_match is None or prefix, "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set")


class HTTPRequestRedirectFilter(Object, kw_only=True):
    scheme: Literal["http", "https"] | None = None
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(Object, kw_only=True):
    hostname: PreciseHostname | None = None
    path: HTTPPathModifier | None = None


class Fraction(Object, kw_only=True):
    numerator: Annotated[int, Meta(ge=0)]
    denominator: Annotated[int, Meta(ge=1)] = 100

    def __post_init__(self) -> None:
        _require(self.numerator <= self.denominator, "numerator must be less than or equal to denominator")


class HTTPRequestMirrorFilter(Object, kw_only=True):
    backend_ref: BackendObjectReference
    percent: Annotated[int, Meta(ge=0, le=100)] | None = None
    fraction: Fraction | None = None

    def __post_init__(self) -> None:
        _require(self.percent is None or self.fraction is None, "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter")


class HTTPCORSFilter(Object, kw_only=True):
    allow_origins: Annotated[list[str], Meta(max_length=64)] = []
    allow_credentials: bool | None = None
    allow_methods: Annotated[list[str], Meta(max_length=9)] = []
    allow_headers: Annotated[list[HeaderName], Meta(max_length=64)] = []
    expose_headers: Annotated[list[HeaderName], Meta(max_length=64)] = []
    max_age: Annotated[int, Meta(ge=1)] = 5


FilterType = Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect", "URLRewrite", "ExtensionRef", "CORS"]
# HTTPRouteFilter: type → the field that must be set for it (and only for it).
FILTER_FIELDS: dict[str, str] = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestMirror": "request_mirror",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "ExtensionRef": "extension_ref",
    "CORS": "cors",
}
_WIRE_NAMES = {
    "request_header_modifier": "requestHeaderModifier",
    "response_header_modifier": "responseHeaderModifier",
    "request_mirror": "requestMirror",
    "request_redirect": "requestRedirect",
    "url_rewrite": "urlRewrite",
    "extension_ref": "extensionRef",
    "cors": "cors",
}


class HTTPRouteFilter(Object, kw_only=True):
    type: FilterType
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = msgspec.field(default=None, name="urlRewrite")
    cors: HTTPCORSFilter | None = None
    extension_ref: LocalObjectReference | None = None

    def __post_init__(self) -> None:
        wanted = FILTER_FIELDS[self.type]
        for attr, wire in _WIRE_NAMES.items():
            given = getattr(self, attr) is not None
            _require(not (given and attr != wanted), f"filter.{wire} must be nil if the filter.type is not {_type_of(attr)}")
            _require(not (not given and attr == wanted), f"filter.{wire} must be specified for {self.type} filter.type")


def _type_of(attr: str) -> str:
    return next(t for t, a in FILTER_FIELDS.items() if a == attr)


def check_filters(filters: list[HTTPRouteFilter]) -> None:
    """HTTPRouteRule.Filters / HTTPBackendRef.Filters CEL rules: no redirect with a rewrite, no repeats."""
    types = [f.type for f in filters]
    _require(not ("RequestRedirect" in types and "URLRewrite" in types), "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both")
    for t in ("CORS", "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"):
        _require(types.count(t) <= 1, f"{t} filter cannot be repeated")


class HTTPBackendRef(BackendRef, kw_only=True):
    filters: Annotated[list[HTTPRouteFilter], Meta(max_length=16)] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        check_filters(self.filters)


class HTTPRouteTimeouts(Object, kw_only=True):
    request: GwDuration | None = None
    backend_request: GwDuration | None = None

    def __post_init__(self) -> None:
        r = gateway_duration(self.request) if self.request is not None else None
        b = gateway_duration(self.backend_request) if self.backend_request is not None else None
        _require(not (r is not None and b is not None and r != 0 and b > r), "backendRequest timeout cannot be longer than request timeout")


class HTTPRouteRetry(Object, kw_only=True):
    codes: list[Annotated[int, Meta(ge=400, le=599)]] = []
    attempts: Annotated[int, Meta(ge=1)] | None = None
    backoff: GwDuration | None = None


class HTTPRouteRule(Object, kw_only=True):
    name: SectionName | None = None
    matches: Annotated[list[HTTPRouteMatch], Meta(max_length=64)] = msgspec.field(default_factory=lambda: [HTTPRouteMatch()])
    filters: Annotated[list[HTTPRouteFilter], Meta(max_length=16)] = []
    backend_refs: Annotated[list[HTTPBackendRef], Meta(max_length=16)] = []
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None

    def __post_init__(self) -> None:
        check_filters(self.filters)
        if self.backend_refs:
            _require(all(f.request_redirect is None for f in self.filters), "RequestRedirect filter must not be used together with backendRefs")
        prefix_rewrites = [
            f for f in self.filters
            if (f.request_redirect and f.request_redirect.path and f.request_redirect.path.type == "ReplacePrefixMatch")
            or (f.url_rewrite and f.url_rewrite.path and f.url_rewrite.path.type == "ReplacePrefixMatch")
        ]  # fmt: skip
        if prefix_rewrites:
            ok = len(self.matches) == 1 and self.matches[0].path.type == "PathPrefix"
            _require(ok, "When using RequestRedirect or URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified")


class HTTPRouteSpec(Object, kw_only=True):
    parent_refs: Annotated[list[ParentReference], Meta(max_length=32)] = []
    hostnames: Annotated[list[Hostname], Meta(max_length=16)] = []
    rules: Annotated[list[HTTPRouteRule], Meta(min_length=1, max_length=16)] = msgspec.field(default_factory=lambda: [HTTPRouteRule()])

    def __post_init__(self) -> None:
        _require(sum(len(r.matches) for r in self.rules) <= 128, "the total number of matches across all rules in a route must be less than 128")
        _check_parent_refs(self.parent_refs)


def _check_parent_refs(refs: list[ParentReference]) -> None:
    """CommonRouteSpec.ParentRefs: two references to one parent need distinct sectionNames."""
    seen: dict[tuple, list[str | None]] = {}
    for p in refs:
        seen.setdefault((p.group, p.kind, p.namespace or "", p.name), []).append(p.section_name)
    for sections in seen.values():
        if len(sections) > 1:
            _require(all(s is not None for s in sections), "sectionName must be specified when parentRefs includes 2 or more references to the same parent")
            _require(len(set(sections)) == len(sections), "sectionName must be unique when parentRefs includes 2 or more references to the same parent")


# ---------------------------------------------------------------------------------------------------------
# GRPCRoute (grpcroute_types.go; SessionPersistence from shared_types.go)
# ---------------------------------------------------------------------------------------------------------

# GRPCMethodMatch's CEL patterns for Exact values.
_GRPC_SERVICE_RE = re.compile(r"^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$", re.IGNORECASE)
_GRPC_METHOD_RE = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")


class GRPCMethodMatch(Object, kw_only=True):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: Annotated[str, Meta(max_length=1024)] | None = None
    method: Annotated[str, Meta(max_length=1024)] | None = None

    def __post_init__(self) -> None:
        _require(self.service is not None or self.method is not None, "One or both of 'service' or 'method' must be specified")
        if self.type == "Exact":
            _require(self.service is None or bool(_GRPC_SERVICE_RE.match(self.service)), "service must only contain valid characters (matching ^(?i)\\.?[a-z_][a-z_0-9]*(\\.[a-z_][a-z_0-9]*)*$)")
            _require(self.method is None or bool(_GRPC_METHOD_RE.match(self.method)), "method must only contain valid characters (matching ^[A-Za-z_][A-Za-z_0-9]*$)")


class GRPCHeaderMatch(Object, kw_only=True):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Meta(min_length=1, max_length=4096)]


class GRPCRouteMatch(Object, kw_only=True):
    method: GRPCMethodMatch | None = None
    headers: Annotated[list[GRPCHeaderMatch], Meta(max_length=16)] = []

    def __post_init__(self) -> None:
        # +listType=map, +listMapKey=name: the API server refuses two entries with one name.
        names = [h.name for h in self.headers]
        dup = next((n for n in names if names.count(n) > 1), None)
        _require(dup is None, f"headers: duplicate entries for key [name={dup!r}]")


GRPCFilterType = Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"]
_GRPC_FILTER_FIELDS = {k: FILTER_FIELDS[k] for k in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef")}


class GRPCRouteFilter(Object, kw_only=True):
    type: GRPCFilterType
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    extension_ref: LocalObjectReference | None = None

    def __post_init__(self) -> None:
        wanted = _GRPC_FILTER_FIELDS[self.type]
        for attr in _GRPC_FILTER_FIELDS.values():
            given = getattr(self, attr) is not None
            _require(not (given and attr != wanted), f"filter.{_WIRE_NAMES[attr]} must be nil if the filter.type is not {_type_of(attr)}")
            _require(not (not given and attr == wanted), f"filter.{_WIRE_NAMES[attr]} must be specified for {self.type} filter.type")


def _check_grpc_filters(filters: list[GRPCRouteFilter]) -> None:
    types = [f.type for f in filters]
    for t in ("RequestHeaderModifier", "ResponseHeaderModifier"):
        _require(types.count(t) <= 1, f"{t} filter cannot be repeated")


class GRPCBackendRef(BackendRef, kw_only=True):
    filters: Annotated[list[GRPCRouteFilter], Meta(max_length=16)] = []

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_grpc_filters(self.filters)


CookieName = Annotated[str, Meta(min_length=1, max_length=256, pattern=_HEADER_NAME)]


class CookieConfig(Object, kw_only=True):
    name: CookieName | None = None
    path: Annotated[str, Meta(max_length=1024)] = "/"
    lifetime_type: Literal["Permanent", "Session"] | None = None


class HeaderConfig(Object, kw_only=True):
    name: HeaderName


class SessionPersistence(Object, kw_only=True):
    """Decoded so that its rules are checked and the compiler can name it; edge does not serve it."""

    absolute_timeout: GwDuration | None = None
    type: Literal["Cookie", "Header"] = "Cookie"
    cookie: CookieConfig | None = None
    header: HeaderConfig | None = None

    def __post_init__(self) -> None:
        permanent = self.cookie is not None and self.cookie.lifetime_type == "Permanent"
        _require(not permanent or self.absolute_timeout is not None, "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent")
        _require(self.cookie is None or self.type == "Cookie", "cookie must be nil if type is not Cookie")
        _require(self.type != "Cookie" or self.cookie is not None, "cookie must be specified for Cookie type")
        _require(self.header is None or self.type == "Header", "header must be nil if type is not Header")
        _require(self.type != "Header" or self.header is not None, "header must be specified for Header type")


class GRPCRouteRule(Object, kw_only=True):
    name: SectionName | None = None
    matches: Annotated[list[GRPCRouteMatch], Meta(max_length=64)] = []  # none: every gRPC request
    filters: Annotated[list[GRPCRouteFilter], Meta(max_length=16)] = []
    backend_refs: Annotated[list[GRPCBackendRef], Meta(max_length=16)] = []
    session_persistence: SessionPersistence | None = None

    def __post_init__(self) -> None:
        _check_grpc_filters(self.filters)


class GRPCRouteSpec(Object, kw_only=True):
    parent_refs: Annotated[list[ParentReference], Meta(max_length=32)] = []
    hostnames: Annotated[list[Hostname], Meta(max_length=16)] = []
    rules: Annotated[list[GRPCRouteRule], Meta(max_length=16)] = []

    def __post_init__(self) -> None:
        _require(sum(len(r.matches) for r in self.rules) <= 128, "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128")
        names = [r.name for r in self.rules if r.name is not None]
        _require(len(set(names)) == len(names), "Rule name must be unique within the route")
        _check_parent_refs(self.parent_refs)


# ---------------------------------------------------------------------------------------------------------
# TLSRoute, TCPRoute (tlsroute_types.go, tcproute_types.go)
# ---------------------------------------------------------------------------------------------------------


class L4RouteRule(Object, kw_only=True):
    name: SectionName | None = None
    backend_refs: Annotated[list[BackendRef], Meta(min_length=1, max_length=16)]


class TLSRouteSpec(Object, kw_only=True):
    parent_refs: Annotated[list[ParentReference], Meta(max_length=32)] = []
    hostnames: Annotated[list[Hostname], Meta(max_length=1024)] = []
    rules: Annotated[list[L4RouteRule], Meta(min_length=1, max_length=16)]

    def __post_init__(self) -> None:
        _check_parent_refs(self.parent_refs)


class TCPRouteSpec(Object, kw_only=True):
    parent_refs: Annotated[list[ParentReference], Meta(max_length=32)] = []
    rules: Annotated[list[L4RouteRule], Meta(min_length=1, max_length=16)]

    def __post_init__(self) -> None:
        _check_parent_refs(self.parent_refs)


# ---------------------------------------------------------------------------------------------------------
# ReferenceGrant (referencegrant_types.go)
# ---------------------------------------------------------------------------------------------------------


class ReferenceGrantFrom(Object, kw_only=True):
    group: Group
    kind: KindName
    namespace: Namespace


class ReferenceGrantTo(Object, kw_only=True):
    group: Group
    kind: KindName
    name: ObjectName | None = None


class ReferenceGrantSpec(Object, kw_only=True):
    from_: Annotated[list[ReferenceGrantFrom], Meta(min_length=1, max_length=16)] = msgspec.field(name="from")
    to: Annotated[list[ReferenceGrantTo], Meta(min_length=1, max_length=16)]


# kind → (versions, spec Struct, the compiler's key). The Gateway's key is Istio's gvk name for it.
KINDS: dict[str, tuple[tuple[str, ...], type, str]] = {
    "GatewayClass": (STANDARD_VERSIONS, GatewayClassSpec, "GatewayClass"),
    "Gateway": (STANDARD_VERSIONS, GatewaySpec, "KubernetesGateway"),
    "HTTPRoute": (STANDARD_VERSIONS, HTTPRouteSpec, "HTTPRoute"),
    "GRPCRoute": (GRPC_ROUTE_VERSIONS, GRPCRouteSpec, "GRPCRoute"),
    "TLSRoute": (ROUTE_L4_VERSIONS, TLSRouteSpec, "TLSRoute"),
    "TCPRoute": (ROUTE_L4_VERSIONS, TCPRouteSpec, "TCPRoute"),
    "ReferenceGrant": (REFERENCE_GRANT_VERSIONS, ReferenceGrantSpec, "ReferenceGrant"),
}
