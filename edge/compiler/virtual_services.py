# Binding VirtualServices: names resolved, delegates merged into their root, HTTP rules translated, and each
# root bound to the gateways it names (pilot/pkg/model/virtualservice.go: resolveVirtualServiceShortnames,
# mergeVirtualServices, mergeHTTPRoute).
#
# Rules:
# - Short names resolve in the VirtualService's namespace: `reviews` → reviews.<ns>.svc.<domain>, gateway
#   `gw` → `<ns>/gw`; `mesh` is never a gateway here.
# - A root's `delegate` rule is replaced by the delegate's rules, in their order, each merged with the root
#   rule (matches intersected, unset fields inherited); a delegate rule whose matches all conflict with the
#   root's is left out (warning), and so is a reference to a missing delegate.
# - Every VirtualService is validated first, in creation order (as written, before names are resolved);
#   then the roots' rules are translated, their delegates' merged in, then each delegate's on its own, as
#   Istio admits a delegate on its own. Only roots are bound to gateways.
from __future__ import annotations

from typing import Any

import msgspec

from edge import istio
from edge.compiler.admission import validate_virtual_service
from edge.compiler.hosts import resolve_gateway_name, resolve_shortname
from edge.compiler.http_rules import translate_rules
from edge.compiler.model import MESH_GATEWAY, PreparedVirtualService
from edge.compiler.report import Report, Where
from edge.errors import WARNING

OwnedRoutes = list[tuple[istio.Resource, str, istio.HTTPRoute]]  # (owner, `$.spec.http[i]` in it, route)


def prepare_virtual_services(
    report: Report, virtual_services: list[istio.Resource], domain: str
) -> tuple[list[PreparedVirtualService], dict[str, list[PreparedVirtualService]]]:
    """The roots in creation order, and per gateway key (`<ns>/<name>`) the roots bound to it."""
    delegates: dict[str, tuple[istio.Resource, istio.VirtualService]] = {}
    roots = []
    for res in virtual_services:
        spec = _resolve_virtual_service(res.spec, res.namespace, domain)
        validate_virtual_service(Where(report, res), res.spec)
        if not res.spec.hosts:
            delegates[res.key] = (res, spec)
        else:
            roots.append((res, spec))
    known = {res.key for res in virtual_services}
    prepared: list[PreparedVirtualService] = []
    bound: dict[str, list[PreparedVirtualService]] = {}
    for res, spec in roots:
        http = _merge_delegates(report, res, spec, delegates, known)
        gateways = tuple(dict.fromkeys(g for g in spec.gateways if g != MESH_GATEWAY))
        vs = PreparedVirtualService(res=res, spec=spec, gateways=gateways, http=http)
        vs.rules = translate_rules(report, vs)
        prepared.append(vs)
        for g in gateways:
            bound.setdefault(g, []).append(vs)
    for key, (res, spec) in delegates.items():
        # Delegates are validated and translated on their own too, as Istio admits them on their own.
        translate_rules(report, PreparedVirtualService(res=res, spec=spec, gateways=(), http=[(res, f"$.spec.http[{i}]", h) for i, h in enumerate(spec.http)]))
    return prepared, bound


def _merge_delegates(
    report: Report, res: istio.Resource, spec: istio.VirtualService, delegates: dict[str, tuple[istio.Resource, istio.VirtualService]], known: set[str]
) -> OwnedRoutes:
    """virtualservice_controller.go mergeVirtualServices + MergeHTTPRoutes (ISTIO-SEMANTICS 2.22)."""
    out = []
    for i, route in enumerate(spec.http):
        if route.delegate is None:
            out.append((res, f"$.spec.http[{i}]", route))
            continue
        ns = route.delegate.namespace or res.namespace
        key = f"{ns}/{route.delegate.name}"
        found = delegates.get(key)
        if found is None:
            why = "it has hosts, so it is a root VirtualService, not a delegate" if key in known else "not found"
            report.add(WARNING, res, f"$.spec.http[{i}].delegate", f"delegate VirtualService {key} {why}: this rule is left out")
            continue
        d_res, d_spec = found
        for j, sub in enumerate(d_spec.http):
            merged = _merge_http_route(route, sub)
            if merged is None:
                report.add(
                    WARNING, d_res, f"$.spec.http[{j}].match",
                    f"match conflicts with every match of root {res.ref} http[{i}] (a delegate match must be a subset of a root match): this rule is left out",
                )
                continue
            out.append((d_res, f"$.spec.http[{j}]", merged))
    return out


def _resolve_virtual_service(spec: istio.VirtualService, ns: str, domain: str) -> istio.VirtualService:
    """ResolveVirtualServiceShortnames: hosts and destinations to FQDN, gateway names to `<ns>/<name>`.
    Parts that need no change are shared with the input (it is frozen data), which keeps this cheap."""
    replace = msgspec.structs.replace

    def gateways(names: list[str]) -> list[str]:
        return [g if g == MESH_GATEWAY else resolve_gateway_name(g, ns) for g in names]

    def matches(items: list) -> list:
        if not any(m.gateways for m in items):
            return items
        return [replace(m, gateways=gateways(m.gateways)) if m.gateways else m for m in items]

    def destinations(items: list) -> list:
        out = None
        for i, r in enumerate(items):
            host = resolve_shortname(r.destination.host, ns, domain)
            if host != r.destination.host:
                if out is None:
                    out = list(items)
                out[i] = replace(r, destination=replace(r.destination, host=host))
        return items if out is None else out

    def dest(d: istio.Destination | None) -> istio.Destination | None:
        if d is None:
            return None
        host = resolve_shortname(d.host, ns, domain)
        return d if host == d.host else replace(d, host=host)

    http = []
    for h in spec.http:
        changes: dict[str, Any] = {}
        if (m := matches(h.match)) is not h.match:
            changes["match"] = m
        if (r := destinations(h.route)) is not h.route:
            changes["route"] = r
        if h.mirror is not None and (d := dest(h.mirror)) is not h.mirror:
            changes["mirror"] = d
        if h.mirrors and (ms := destinations(h.mirrors)) is not h.mirrors:
            changes["mirrors"] = ms
        http.append(replace(h, **changes) if changes else h)
    l4 = {}
    for name in ("tls", "tcp"):
        routes = []
        for t in getattr(spec, name):
            m, r = matches(t.match), destinations(t.route)
            routes.append(t if m is t.match and r is t.route else replace(t, match=m, route=r))
        l4[name] = routes
    return replace(
        spec,
        hosts=[resolve_shortname(h, ns, domain) for h in spec.hosts],
        gateways=gateways(spec.gateways),
        http=http,
        **l4,
    )


# Delegate merging (pilot/pkg/model/virtualservice.go).

_INHERITED_FIELDS = (
    "rewrite", "direct_response", "timeout", "retries", "fault", "mirror", "mirror_percent", "mirror_percentage",
    "cors_policy", "headers",
)


def _merge_http_route(root: istio.HTTPRoute, delegate: istio.HTTPRoute) -> istio.HTTPRoute | None:
    """mergeHTTPRoute: matches merged (None on conflict), names joined with "-", unset fields inherited."""
    merged_matches = _merge_match_requests(root.match, delegate.match)
    if merged_matches is None:
        return None
    changes: dict[str, Any] = {"match": merged_matches}
    if not delegate.name:
        changes["name"] = root.name
    elif root.name:
        changes["name"] = f"{root.name}-{delegate.name}"
    for name in _INHERITED_FIELDS:
        if getattr(delegate, name) is None and getattr(root, name) is not None:
            changes[name] = getattr(root, name)
    if not delegate.mirrors and root.mirrors:
        changes["mirrors"] = root.mirrors
    # Combinations the resource model rejects; Istio's translation ignores the inherited part anyway
    # (a redirect or direct response never forwards, so it is neither rewritten nor mirrored).
    if delegate.redirect is not None or delegate.direct_response is not None:
        for name in ("rewrite", "mirror", "mirrors", "mirror_percent", "mirror_percentage"):
            changes.pop(name, None)
        if delegate.direct_response is not None:
            changes.pop("fault", None)
    if delegate.mirrors:
        changes.pop("mirror", None)
    elif delegate.mirror is not None:
        changes.pop("mirrors", None)
    return msgspec.structs.replace(delegate, **changes)


def _merge_match_requests(root: list[istio.HTTPMatchRequest], delegate: list[istio.HTTPMatchRequest]):
    if not root:
        return delegate
    if not delegate:
        return root
    out = []
    for sub in delegate:
        found = False
        for r in root:
            if _match_conflict(r, sub):
                continue
            out.append(_merge_match(r, sub))
            found = True
        if not found:
            return None
    return out or None


def _merge_match(root: istio.HTTPMatchRequest, leaf: istio.HTTPMatchRequest) -> istio.HTTPMatchRequest:
    name = leaf.name or root.name
    if leaf.name and root.name:
        name = f"{root.name}-{leaf.name}"
    return msgspec.structs.replace(
        leaf,
        name=name,
        uri=leaf.uri if leaf.uri is not None else root.uri,
        scheme=leaf.scheme if leaf.scheme is not None else root.scheme,
        method=leaf.method if leaf.method is not None else root.method,
        authority=leaf.authority if leaf.authority is not None else root.authority,
        headers={**root.headers, **leaf.headers},
        without_headers={**root.without_headers, **leaf.without_headers},
        query_params={**root.query_params, **leaf.query_params},
        port=leaf.port or root.port,
        source_labels={**root.source_labels, **leaf.source_labels},
        source_namespace=leaf.source_namespace or root.source_namespace,
        gateways=leaf.gateways or root.gateways,
        stat_prefix=leaf.stat_prefix or root.stat_prefix,
    )


def _match_conflict(root: istio.HTTPMatchRequest, leaf: istio.HTTPMatchRequest) -> bool:
    for a, b in ((root.uri, leaf.uri), (root.scheme, leaf.scheme), (root.method, leaf.method), (root.authority, leaf.authority)):
        if _string_match_conflict(a, b):
            return True
    for mine, theirs in ((root.headers, leaf.headers), (root.without_headers, leaf.without_headers), (root.query_params, leaf.query_params)):
        for key, value in theirs.items():
            if _string_match_conflict(mine.get(key), value):
                return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    for key, value in leaf.source_labels.items():
        if key in root.source_labels and root.source_labels[key] != value:
            return True
    if root.gateways and leaf.gateways:
        if len(root.gateways) < len(leaf.gateways) or not set(leaf.gateways) <= set(root.gateways):
            return True
    return False


def _string_match_conflict(root: istio.StringMatch | None, leaf: istio.StringMatch | None) -> bool:
    """stringMatchConflict: the leaf must be a subset of the root."""
    if root is None or leaf is None:
        return False
    if root.regex:
        if leaf.regex or leaf.prefix or leaf.exact:
            return True
    if leaf.regex:
        if root.regex or root.prefix or root.exact:
            return True
    if root.exact:
        if leaf.prefix:
            return True
        return leaf.exact != root.exact
    if root.prefix:
        if leaf.prefix:
            return not leaf.prefix.startswith(root.prefix)
        if leaf.exact:
            return not leaf.exact.startswith(root.prefix)
    return True
