# GRPCRoute rules → VirtualService HTTP routes, as Istio's pilot/pkg/config/kube/gateway does (conversion.go
# convertGRPCRoute, createGRPCURIMatch, createGRPCHeadersMatch, buildGRPCDestination; route_collections.go
# GRPCRouteCollection); a helper of the gateway_api stage beside gateway_api_http.py.
#
# Rules:
# - One VirtualService route per GRPCRouteMatch (Istio splits a rule so that each route has at most one match);
#   a rule without matches is one route without a match: every request.
# - A method match becomes a `:path` match, gRPC's path being /<service>/<method> (createGRPCURIMatch):
#   Exact service+method → exact `/S/M`; Exact service only → prefix `/S/`; Exact method only → regex
#   `/[^/]+/M`; RegularExpression → regex `/S/M`, `/S/.+` (service only) or `/[^/]+/M` (method only). No method
#   match → no path condition. Header matches: Exact or regex, names lowercased (Envoy compares names without
#   case; the CRD refuses duplicate names).
# - Precedence: Istio merges GRPCRoute and HTTPRoute routes of one listener and hostname into one VirtualService
#   (controller.go "HTTPAndGRPCMerged": the spec says not to merge the two kinds; Istio does) and sorts them all
#   with sortHTTPRoutes, on the translated matches: exact > prefix > regex > no path condition, then the longer
#   path value, then more header matches; routes with no match at all last. sort_key gives the same order as the
#   HTTP keys (gateway_api_http.sort_key), so one stable sort over both keeps creation order on ties. This is
#   the spec's GRPCRoute order (service length, then method length, then headers) in the common cases, not in
#   all: a RegularExpression match on service S and method M (regex, rank 1) loses to an Exact match on service S
#   alone (prefix `/S/`), where the spec would rank the one with a method first. Istio's order is what edge
#   serves (and what tests/edge/test_gateway_api_grpc.py pins).
# - Filters: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror as for HTTPRoute; ExtensionRef and
#   sessionPersistence are not supported: the route is not served (Accepted=False, UnsupportedValue). (Istio
#   answers InvalidFilter for ExtensionRef and ignores sessionPersistence on GRPCRoutes; edge refuses it rather
#   than silently dropping affinity.) No backends with weight > 0 → a direct 500, as Istio.
# - Backends: Services resolved as for HTTPRoute. The upstream protocol is the ServiceEntry port's, never the
#   route kind's (Istio's cluster_builder setUpstreamProtocol looks only at the port; gateways do not sniff):
#   a GRPCRoute backend on an HTTP/1.1 port gets HTTP/1.1, which gRPC servers refuse, so edge check warns.
from __future__ import annotations

from edge import gateway_api as gw
from edge import istio
from edge.compiler.clusters import H2_PORT_PROTOCOLS
from edge.compiler.gateway_api_http import BackendCheck, Entry, destinations, filter_headers, mirror_policy
from edge.compiler.report import Where

_URI_RANK = {"exact": 3, "prefix": 2, "regex": 1}
NO_PATH_RANK = -1  # getURIRank of a match without a uri
NO_MATCH_RANK = -2  # sortHTTPRoutes: a route without matches sorts after every route with one


def method_uri(m: gw.GRPCMethodMatch | None) -> istio.StringMatch | None:
    """createGRPCURIMatch: the :path match of a method match (None: no path condition)."""
    if m is None:
        return None
    if m.type == "Exact":
        if m.method is None:
            return istio.StringMatch(prefix=f"/{m.service}/")
        if m.service is None:
            return istio.StringMatch(regex=f"/[^/]+/{m.method}")
        return istio.StringMatch(exact=f"/{m.service}/{m.method}")
    if m.method is None:
        return istio.StringMatch(regex=f"/{m.service}/.+")
    if m.service is None:
        return istio.StringMatch(regex=f"/[^/]+/{m.method}")
    return istio.StringMatch(regex=f"/{m.service}/{m.method}")


def sort_key(m: gw.GRPCRouteMatch | None) -> tuple:
    """sortHTTPRoutes' comparison of the translated match, as a key comparable with HTTPRoute entries' keys."""
    if m is None:
        return (-NO_MATCH_RANK, 0, 1, 0, 0)
    uri = method_uri(m.method)
    if uri is None:
        rank, length = NO_PATH_RANK, 0
    else:
        kind, value = next((k, v) for k, v in (("exact", uri.exact), ("prefix", uri.prefix), ("regex", uri.regex)) if v is not None)
        rank, length = _URI_RANK[kind], len(value)
    return (-rank, -length, 1, -len(m.headers), 0)


def match_request(m: gw.GRPCRouteMatch) -> istio.HTTPMatchRequest:
    headers = {h.name.lower(): istio.StringMatch(exact=h.value) if h.type == "Exact" else istio.StringMatch(regex=h.value) for h in m.headers}
    return istio.HTTPMatchRequest(uri=method_uri(m.method), headers=headers)


def grpc_rule_entries(check: BackendCheck, route: istio.Resource, r: int, rule: gw.GRPCRouteRule, w: Where) -> list[Entry] | None:
    """Every match of one rule as an Entry (named `<ns>.<route>.<rule>.<match>`), or None when the rule cannot
    be served (the reason is reported; the route is then not served)."""
    if rule.session_persistence is not None:
        w.warn("Accepted=False (UnsupportedValue): sessionPersistence is not supported by edge; the route is not served", ".sessionPersistence")
        return None
    mirrors = []
    for k, f in enumerate(rule.filters):
        if f.type == "ExtensionRef":
            w.warn("Accepted=False (UnsupportedValue): ExtensionRef filters are not supported by edge; the route is not served", f".filters[{k}]")
            return None
        if f.request_mirror is not None:
            mirror = mirror_policy(check, route, f.request_mirror, w.at(f".filters[{k}].requestMirror.backendRef"))
            if mirror is not None:
                mirrors.append(mirror)
    routes = destinations(check, route, rule, w)
    direct = None if routes else istio.HTTPDirectResponse(status=500)
    _check_protocols(check, route, rule, w)
    headers = filter_headers(rule.filters)
    matches: list[gw.GRPCRouteMatch | None] = list(rule.matches) or [None]
    entries = []
    for j, m in enumerate(matches):
        http = istio.HTTPRoute(
            name=f"{route.namespace}.{route.name}.{r}.{j}",
            match=[match_request(m)] if m is not None else [],
            route=routes,
            direct_response=direct,
            mirrors=mirrors if direct is None else [],
            headers=headers,
        )
        path = f"$.spec.rules[{r}].matches[{j}]" if m is not None else f"$.spec.rules[{r}]"
        entries.append(Entry(key=sort_key(m), routes=[http], path=path))
    return entries


def _check_protocols(check: BackendCheck, route: istio.Resource, rule: gw.GRPCRouteRule, w: Where) -> None:
    """Warn about backends whose ServiceEntry port does not speak HTTP/2 (see the module rules)."""
    for k, b in enumerate(rule.backend_refs):
        if b.group != "" or b.kind != "Service" or b.port is None:
            continue
        host = f"{b.name}.{b.namespace or route.namespace}.svc.{check.domain}"
        protocol = check.ports.get(host, {}).get(b.port)
        if protocol is not None and protocol.upper() not in H2_PORT_PROTOCOLS:
            w.warn(
                f"backend {host}:{b.port} has protocol {protocol}: edge (as Istio) speaks HTTP/1.1 to it, which gRPC servers "
                "refuse; give the ServiceEntry port protocol GRPC or HTTP2 (in Kubernetes: appProtocol grpc or kubernetes.io/h2c, or a grpc- port name)",
                f".backendRefs[{k}].port",
            )
