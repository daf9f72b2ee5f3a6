# Listeners: one per listener plan, with its route configuration or filter chains
# (pilot/pkg/networking/core/gateway.go: buildGatewayListeners, buildGatewayHTTPRouteConfig,
# createGatewayHTTPFilterChainOpts / createGatewayTCPFilterChainOpts, buildGatewayNetworkFiltersFromTCPRoutes
# and FromTLSRoutes).
#
# Rules:
# - Plain HTTP servers on a port share one route configuration `http.<port>`; each HTTPS server has its own,
#   in a filter chain matched by SNI; TLS servers terminate and proxy tcp routes; passthrough servers get
#   one filter chain per matching tls route match, SNI = its sniHosts (the first claim of a name wins).
# - Virtual hosts: per server, domains = server hosts ∩ VirtualService hosts (the more specific name is kept;
#   `*.x` does not match `x`); the routes of every bound VirtualService appended in creation order;
#   catch-alls moved last (stable); domains with identical routes collapsed into one virtual host; no
#   virtual host at all → a `*` blackhole.
# - A TCP or TLS port nothing routes is not opened (Istio creates no listener), with a warning.
from __future__ import annotations

from edge import istio, table, wire
from edge.compiler.admission import valid_cipher
from edge.compiler.clusters import ClusterBuilder
from edge.compiler.hosts import host_matches, intersect_hosts, names_for_namespace
from edge.compiler.model import KIND_HTTPS, KIND_PASSTHROUGH, KIND_TLS_TERMINATE, GatewayServer, ListenerPlan, PreparedVirtualService, VHostBuild
from edge.compiler.report import Report, Where
from edge.compiler.routes import RouteBuilder
from edge.compiler.servers import sni_names
from edge.errors import WARNING


class ListenerBuilder:
    """The listeners of the merged plans. Routes and clusters come from the builders given, which cache what
    several listeners share."""

    def __init__(self, report: Report, clusters: ClusterBuilder, routes: RouteBuilder, bound: dict[str, list[PreparedVirtualService]]):
        self.report = report
        self.clusters = clusters
        self.routes = routes
        self.bound = bound  # gateway key → the root VirtualServices bound to it, in creation order

    def build_listener(self, plan: ListenerPlan) -> table.Listener | None:
        """buildGatewayListeners for one (bind, port); None when nothing would be served on it."""
        bind = plan.bind or "0.0.0.0"
        name = f"{bind}_{plan.port}"
        gateways = tuple(dict.fromkeys(s.gw_key for s in plan.servers))
        if plan.group == "http":
            rc_name = f"http.{plan.port}" + (f".{plan.bind}" if plan.bind else "")
            rc = self._route_config(rc_name, plan.servers, plan.port)
            return table.Listener(name=name, port=plan.port, bind=bind, protocol=table.PROTO_HTTP, route_config=rc, gateways=gateways)
        if plan.group == "tcp":
            srv = plan.servers[0]
            l4 = self._tcp_route(srv)
            if l4 is None:
                self.report.add(WARNING, srv.gateway, srv.path, f"no VirtualService bound to Gateway {srv.gw_key} has a tcp route for port {srv.port}: the port is not opened (Istio creates no listener)")
                return None
            return table.Listener(name=name, port=plan.port, bind=bind, protocol=table.PROTO_TCP, tcp=l4, gateways=gateways)
        chains: list[table.FilterChain] = []
        # SNI name → who claimed it: terminating servers first, then passthrough matches (first wins).
        claimed: dict[str, str] = {n: s.describe() for s in plan.servers if s.kind != KIND_PASSTHROUGH for n in sni_names(s.hosts)}
        for srv in plan.servers:
            chains.extend(self._tls_chains(srv, plan, claimed))
        if not chains:
            srv = plan.servers[0]
            self.report.add(WARNING, srv.gateway, srv.path, f"no filter chain for port {plan.port}: no VirtualService bound to these servers has a matching tls/tcp route, so the port is not opened (Istio creates no listener)")
            return None
        proto = table.PROTO_HTTPS if all(c.route_config is not None for c in chains) else table.PROTO_TLS
        return table.Listener(name=name, port=plan.port, bind=bind, protocol=proto, filter_chains=tuple(chains), gateways=gateways)

    def _tls_chains(self, srv: GatewayServer, plan: ListenerPlan, claimed: dict[str, str]) -> list[table.FilterChain]:
        s = srv.server
        server_name = s.name or f"{srv.gw_key}/{s.port.name}"
        if srv.kind == KIND_HTTPS:
            gw = srv.gateway
            rc_name = f"https.{s.port.number}.{s.port.name}.{gw.name}.{gw.namespace}" + (f".{s.bind}" if s.bind else "")
            rc = self._route_config(rc_name, [srv], srv.port)
            return [table.FilterChain(server_names=sni_names(srv.hosts), server_name=server_name, gateway=srv.gw_key, tls=_server_tls(s.tls), route_config=rc)]
        if srv.kind == KIND_TLS_TERMINATE:
            l4 = self._tcp_route(srv)
            if l4 is None:
                self.report.add(WARNING, srv.gateway, srv.path, f"no VirtualService bound to Gateway {srv.gw_key} has a tcp route for this TLS server on port {srv.port}: it gets no filter chain")
                return []
            return [table.FilterChain(server_names=sni_names(srv.hosts), server_name=server_name, gateway=srv.gw_key, tls=_server_tls(s.tls), tcp=l4)]
        return self._passthrough_chains(srv, server_name, claimed)

    def _passthrough_chains(self, srv: GatewayServer, server_name: str, claimed: dict[str, str]) -> list[table.FilterChain]:
        """buildGatewayNetworkFiltersFromTLSRoutes: one chain per matching tls match, SNI = its sniHosts."""
        chains = []
        for vs in self.bound.get(srv.gw_key, ()):
            if not _pick_matching_hosts(srv.hosts, vs):
                continue
            for i, tls_route in enumerate(vs.spec.tls):
                if not tls_route.route:
                    continue
                for k, m in enumerate(tls_route.match):
                    if (m.port and m.port != srv.port) or (m.gateways and srv.gw_key not in m.gateways):
                        continue
                    path = f"$.spec.tls[{i}].match[{k}]"
                    names = [h.lower() for h in m.sni_hosts]
                    dups = [h for h in names if h in claimed]
                    if dups:
                        self.report.add(WARNING, vs.res, path + ".sniHosts", f"SNI host(s) {dups} on port {srv.port} are already routed by {claimed[dups[0]]}: this match is skipped (first wins)")
                        continue
                    for h in names:
                        claimed[h] = f"VirtualService {vs.res.key} tls[{i}]"
                    w = Where(self.report, vs.res, f"$.spec.tls[{i}]")
                    l4 = self._l4_route(w, vs, tls_route.route, srv.port)
                    server_names = () if "*" in names else tuple(sorted(set(names)))
                    chains.append(table.FilterChain(server_names=server_names, server_name=server_name, gateway=srv.gw_key, tcp=l4))
        if not chains:
            self.report.add(WARNING, srv.gateway, srv.path, f"no VirtualService bound to Gateway {srv.gw_key} has a tls route (sniHosts) for this passthrough server on port {srv.port}")
        return chains

    def _tcp_route(self, srv: GatewayServer) -> table.L4Route | None:
        """buildGatewayNetworkFiltersFromTCPRoutes: the first bound VS (creation order) whose hosts match the
        server's and that has a tcp route matching port and gateway supplies the single TCP proxy."""
        for vs in self.bound.get(srv.gw_key, ()):
            if not _pick_matching_hosts(srv.hosts, vs):
                continue
            for i, tcp in enumerate(vs.spec.tcp):
                if tcp.match and not any((not m.port or m.port == srv.port) and (not m.gateways or srv.gw_key in m.gateways) for m in tcp.match):
                    continue
                if not tcp.route:
                    continue
                return self._l4_route(Where(self.report, vs.res, f"$.spec.tcp[{i}]"), vs, tcp.route, srv.port)
        return None

    def _l4_route(self, w: Where, vs: PreparedVirtualService, dests: list[istio.RouteDestination], port: int) -> table.L4Route:
        single = len(dests) == 1
        clusters = []
        for j, d in enumerate(dests):
            if not single and d.weight == 0:
                continue
            cluster = self.clusters.cluster_for(w.res, f"{w.path}.route[{j}].destination", d.destination, port)
            clusters.append(table.WeightedCluster(cluster=cluster, weight=1 if single else d.weight, host=d.destination.host))
        return table.L4Route(virtual_service=vs.res.key, clusters=tuple(clusters), total_weight=sum(c.weight for c in clusters))

    def _route_config(self, name: str, servers: list[GatewayServer], port: int) -> table.RouteConfig:
        """buildGatewayHTTPRouteConfig."""
        vhosts: dict[str, VHostBuild] = {}
        for srv in servers:
            redirect = bool(srv.server.tls is not None and srv.server.tls.https_redirect)
            is_tls = srv.server.tls is not None
            visible: dict[str, list[str]] = {}  # VS namespace → server hosts it may bind
            for vs in self.bound.get(srv.gw_key, ()):
                hosts = visible.get(vs.res.namespace)
                if hosts is None:
                    hosts = visible[vs.res.namespace] = names_for_namespace(srv.hosts, vs.res.namespace)
                domains = intersect_hosts(hosts, vs.spec.hosts)
                if not domains:
                    continue
                routes = self.routes.routes_for(vs, srv.gw_key, port, is_tls)
                if not routes:
                    continue  # Istio: "no routes matched"; the VS contributes nothing, not even a vhost
                contributor = (vs.key, srv.gw_key)
                for domain in domains:
                    domain = domain.lower()
                    vh = vhosts.get(domain)
                    if vh is None:
                        vh = vhosts[domain] = VHostBuild()
                    if contributor not in vh.seen:
                        vh.seen.add(contributor)
                        # The same VS bound through several gateways gives the same Route objects again:
                        # Istio appends them twice; the copies could never match, so they are left out.
                        vh.routes.extend(r for r in routes if id(r) not in vh.route_ids)
                        vh.route_ids.update(map(id, routes))
                    if redirect:
                        vh.require_tls = True
            if redirect:
                # Every server host is redirected, also hosts no VirtualService covers.
                for h in srv.hosts:
                    domain = h.partition("/")[2].lower() if "/" in h else h.lower()
                    vhosts.setdefault(domain, VHostBuild()).require_tls = True
        if not vhosts:
            blackhole = table.VirtualHost(name=f"blackhole:{port}", domains=("*",))
            return table.RouteConfig(name=name, virtual_hosts=(blackhole,), wildcard_host=0)
        # collapseDuplicateRoutes: identical route lists share one vhost named after its first domain.
        groups: dict[tuple, list[str]] = {}
        for domain in sorted(vhosts):
            vh = vhosts[domain]
            key = (tuple(map(id, vh.routes)), vh.require_tls)
            groups.setdefault(key, []).append(domain)
        built = []
        for domains in groups.values():
            vh = vhosts[domains[0]]
            catch_alls = [r for r in vh.routes if id(r) in self.routes.catch_alls]
            ordered = [r for r in vh.routes if id(r) not in self.routes.catch_alls] + catch_alls if catch_alls else vh.routes
            built.append(table.VirtualHost(name=f"{domains[0]}:{port}", domains=tuple(domains), routes=tuple(ordered), require_tls=vh.require_tls))
        built.sort(key=lambda v: v.name)
        exact, suffix, wildcard = {}, {}, -1
        for index, vh in enumerate(built):
            for d in vh.domains:
                if d == "*":
                    wildcard = index
                elif d.startswith("*"):
                    suffix[d[1:]] = index
                else:
                    exact[d] = index
        return table.RouteConfig(name=name, virtual_hosts=tuple(built), exact_hosts=exact, suffix_hosts=suffix, wildcard_host=wildcard)


def _pick_matching_hosts(server_hosts: list[str], vs: PreparedVirtualService) -> bool:
    """pickMatchingGatewayHosts: any VS host overlaps a server host visible to the VS's namespace."""
    for vh in vs.spec.hosts:
        for sh in server_hosts:
            ns, sep, name = sh.partition("/")
            if sep:
                if ns != vs.res.namespace:
                    continue
                sh = name
            if host_matches(sh, vh):
                return True
    return False


def _server_tls(tls: istio.ServerTLSSettings) -> table.ServerTLS:
    """A server's TLS as the table carries it: the first tlsCertificates pair is the main one; invalid and
    repeated cipher suites left out (admission warned); TLS_AUTO → at least TLSV1_2."""
    cert, key = tls.server_certificate, tls.private_key
    extra: tuple[tuple[str, str], ...] = ()
    if tls.tls_certificates:
        cert, key = tls.tls_certificates[0].server_certificate, tls.tls_certificates[0].private_key
        extra = tuple((c.server_certificate, c.private_key) for c in tls.tls_certificates[1:])
    seen: set[str] = set()
    ciphers = []
    for c in tls.cipher_suites:
        if valid_cipher(c) and c not in seen:
            seen.add(c)
            ciphers.append(c)
    return table.ServerTLS(
        mode=tls.mode,
        cert_chain_file=cert,
        private_key_file=key,
        ca_file=tls.ca_certificates,
        crl_file=tls.ca_crl,
        credential_name=wire.credential_folder(tls.credential_name or (tls.credential_names[0] if tls.credential_names else "")),
        extra_certificates=extra,
        subject_alt_names=tuple(tls.subject_alt_names),
        verify_certificate_spki=tuple(tls.verify_certificate_spki),
        verify_certificate_hash=tuple(tls.verify_certificate_hash),
        min_version="TLSV1_2" if tls.min_protocol_version == "TLS_AUTO" else tls.min_protocol_version,
        max_version=tls.max_protocol_version,
        cipher_suites=tuple(ciphers),
        ecdh_curves=tuple(tls.ecdh_curves),
        insecure_skip_verify=bool(tls.insecure_skip_verify),
    )
