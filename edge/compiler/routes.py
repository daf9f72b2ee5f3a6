# Routes: the built Routes of one (VirtualService, gateway, port), from the rules http_rules.py translated
# (pilot/pkg/networking/core/route/route.go: BuildHTTPRoutesForVirtualService, translateRoute's action part,
# ApplyRedirect, sourceMatchHTTP).
#
# Rules:
# - A match block whose `port` differs from the server's, or whose `gateways` omit the gateway, is dropped;
#   `gateways` decides alone when given, else sourceLabels must hold for this gateway's labels and
#   sourceNamespace must be empty (a standalone gateway has no namespace).
# - Translation stops at the VirtualService's first catch-all; catch-alls are remembered so that the virtual
#   host can move them last.
# - Action: redirect, else direct response, else forward to the weighted clusters (clusters.py).
# - A Route object is built once per (rule, match block) and shared by every gateway and port it does not
#   depend on (only destinations without a port on a multi-port service, and redirect ports, do); identity
#   is what the virtual host stage uses to drop a VirtualService's routes bound twice.
from __future__ import annotations

import msgspec

from edge import istio, table
from edge.compiler.clusters import ClusterBuilder
from edge.compiler.hosts import selector_matches
from edge.compiler.model import CLUSTER_NOT_FOUND_500_ANNOTATION, DEFAULT_RETRY_CONSISTENT_HASH, MatchBlock, PreparedVirtualService, Rule
from edge.compiler.report import Report
from edge.errors import WARNING


class RouteBuilder:
    """Built routes, cached per (VS, gateway, port) and per (rule, match block); `catch_alls` tells the
    virtual host stage which routes to move last."""

    def __init__(self, report: Report, labels: dict[str, str], clusters: ClusterBuilder):
        self.report = report
        self.labels = labels
        self.clusters = clusters
        self.route_cache: dict[tuple, tuple[table.Route, ...]] = {}
        self.built_routes: dict[tuple, table.Route | None] = {}
        self.catch_alls: set[int] = set()  # id() of built routes that are catch-alls (SortVHostRoutes)

    def routes_for(self, vs: PreparedVirtualService, gw_key: str, port: int, is_tls: bool) -> tuple[table.Route, ...]:
        """BuildHTTPRoutesForVirtualService: blocks filtered by port and gateways, stop at the first catch-all."""
        key = (vs.key, gw_key, port, is_tls)
        cached = self.route_cache.get(key)
        if cached is not None:
            return cached
        out: list[table.Route] = []
        for rule in vs.rules or ():
            if rule.matches is None:
                route = self._route(vs, rule, None, -1, port, is_tls)
                if route is not None:
                    out.append(route)
                break
            stop = False
            for index, m in enumerate(rule.matches):
                if m.port and m.port != port:
                    continue
                if not self._source_matches(vs, rule, m, gw_key):
                    continue
                route = self._route(vs, rule, m, index, port, is_tls)
                if route is not None:
                    out.append(route)
                    if m.catch_all:
                        stop = True
                        break
            if stop:
                break
        result = tuple(out)
        self.route_cache[key] = result
        return result

    def _route(self, vs: PreparedVirtualService, rule: Rule, m: MatchBlock | None, index: int, port: int, is_tls: bool) -> table.Route | None:
        """One built Route per (rule, match block), shared by every gateway and port it does not depend on:
        the port only matters for destinations without a port on a multi-port service, and for redirect ports."""
        if rule.port_sensitive is None:
            rule.port_sensitive = self._port_sensitive(rule)
        key = (id(rule), index, (port, is_tls) if rule.port_sensitive else None)
        if key in self.built_routes:
            return self.built_routes[key]
        route = self._build_route(vs, rule, m, port, is_tls)
        self.built_routes[key] = route
        if route is not None and (m is None or m.catch_all):
            self.catch_alls.add(id(route))  # IsCatchAllRoute, known from the match block
        return route

    def _port_sensitive(self, rule: Rule) -> bool:
        h = rule.http
        if h.redirect is not None:
            return h.redirect.port is not None or h.redirect.derive_port is not None
        dests = [r.destination for r in h.route] + ([h.mirror] if h.mirror is not None else []) + [mp.destination for mp in h.mirrors]
        for d in dests:
            if d.port is None:
                service = self.clusters.services.get(d.host)
                if service is not None and len(service.spec.ports) != 1:
                    return True
        return False

    def _source_matches(self, vs: PreparedVirtualService, rule: Rule, m: MatchBlock, gw_key: str) -> bool:
        """sourceMatchHTTP: `gateways` decides alone when given; else sourceLabels ⊆ the gateway's labels and
        sourceNamespace (a standalone gateway has no namespace) must be empty."""
        if m.gateways:
            return gw_key in m.gateways
        if m.source_labels and not selector_matches(m.source_labels, self.labels):
            self.report.add(WARNING, rule.owner, m.path + ".sourceLabels", "sourceLabels do not match this gateway's labels (--gateway-labels): the match block is left out")
            return False
        if m.source_namespace:
            self.report.add(WARNING, rule.owner, m.path + ".sourceNamespace", "sourceNamespace never matches a standalone gateway (it has no namespace): the match block is left out")
            return False
        return True

    def _build_route(self, vs: PreparedVirtualService, rule: Rule, m: MatchBlock | None, port: int, is_tls: bool) -> table.Route | None:
        h = rule.http
        match = m.match if m is not None else table.RouteMatch()
        name = h.name + ("." + m.match.name if m is not None and m.match.name else "")
        if rule.needs_prefix and match.path is None:
            match = msgspec.structs.replace(match, path=table.StringMatcher(kind=table.MATCH_PREFIX, value="/"))
        common = dict(
            name=name,
            virtual_service=vs.key,
            rule_index=rule.index,
            match=match,
            headers=rule.headers,
            fault=rule.fault,
            cors=rule.cors,
            stat_prefix=m.stat_prefix if m is not None else "",
        )
        if h.redirect is not None:
            if not rule.redirect_supported:
                return None
            return table.Route(action=table.ACTION_REDIRECT, redirect=_redirect(h.redirect, port, is_tls), **common)
        if rule.direct is not None:
            return table.Route(action=table.ACTION_DIRECT, direct=rule.direct, **common)
        clusters, total, hashed = self.clusters.weighted_clusters(rule, port)
        retry = rule.retry
        if retry is None:
            retry = DEFAULT_RETRY_CONSISTENT_HASH if hashed else None
        elif retry.attempts and hashed and h.retries.retry_ignore_previous_hosts is None:
            retry = msgspec.structs.replace(retry, ignore_previous_hosts=False)
        return table.Route(
            action=table.ACTION_FORWARD,
            clusters=clusters,
            total_weight=total,
            rewrite=_route_rewrite(rule.rewrite, m),
            timeout_s=rule.timeout_s,
            retry=retry,
            mirrors=self.clusters.mirrors(rule, port) if h.mirror is not None or h.mirrors else (),
            cluster_not_found_status=500 if CLUSTER_NOT_FOUND_500_ANNOTATION in vs.res.annotations else 0,
            **common,
        )


def _route_rewrite(rewrite: table.Rewrite | None, m: MatchBlock | None) -> table.Rewrite | None:
    """`rewrite.uri` per route: prefix_rewrite replaces what the path matcher matched, which for an exact or a
    regex match is the whole path."""
    if rewrite is None or rewrite.prefix is None:
        return rewrite
    path = m.match.path if m is not None else None
    if path is not None and path.kind in (table.MATCH_EXACT, table.MATCH_REGEX):
        return msgspec.structs.replace(rewrite, prefix=None, full_path=rewrite.prefix)
    return rewrite


def _redirect(r: istio.HTTPRedirect, port: int, is_tls: bool) -> table.Redirect:
    """ApplyRedirect. An explicit or derived port of 80 with http, or 443 with https, is left out."""
    out_port = 0
    from_request = False
    if r.port is not None or r.derive_port is not None:
        if r.derive_port == "FROM_REQUEST_PORT":
            from_request = True
            out_port = 0
        elif r.port is not None:
            out_port = r.port
        scheme = r.scheme or ("https" if is_tls else "http")
        if (out_port == 80 and scheme == "http") or (out_port == 443 and scheme == "https"):
            out_port = 0
    return table.Redirect(
        code=r.redirect_code or 301,
        scheme=r.scheme,
        authority=r.authority,
        port=out_port,
        port_from_request=from_request,
        path=r.uri if not r.prefix_rewrite else "",
        prefix_rewrite=r.prefix_rewrite or None,
    )
