# `edge route`: which listener, filter chain, virtual host, VirtualService and route a request takes on a compiled
# RoutingTable, and why the routes before it did not match.
#
# Rules:
# - No I/O of its own: a table, the resources it was compiled from and the request in, lines of text out to the
#   stream it is given. edge/cli.py does the loading, compiling and exit codes (0 when explain() says routed, 1
#   otherwise).
# - HTTP matching is the workers' own (workers/router.Router.explain), so the answer is what a worker would do.
# - Before routing, as the workers' filter chain does: RequestAuthentication (edge/explain_jwt.py), then
#   AuthorizationPolicy (edge/explain_authz.py: the filters, rules and conditions, and the verdict).
# - Not routed is explained the way people ask: no listener on the port (and the ports served), no filter chain for
#   the SNI, 404 with hints on why no VirtualService serves the host here (not bound to a Gateway, a Gateway not
#   selected by this gateway's labels, no server on the port, a host the server does not expose).
from __future__ import annotations

import time
from typing import TextIO

from edge import explain_authz, istio, table
from edge.explain_protocols import PLAIN_HTTP, TCP, chain_protocols, cluster_protocol
from edge.explain_jwt import authenticate
from edge.flags import DEFAULT_GATEWAY_LABELS
from workers.router import Router, describe_matcher
from workers.tls.sni import SniIndex


class RouteRequest:
    """The request object workers/router.py matches (the attributes h11-based workers provide)."""

    def __init__(self, method: str, path: str, query: str, authority: str, scheme: str, headers: list[tuple[bytes, bytes]]):
        self.method = method
        self.path = path
        self.query = query
        self.authority = authority
        self.scheme = scheme
        self.headers = headers
        self.auth = None  # the verified JWT (edge/explain_jwt.py), for claim routes


def parse_route_request(method: str, host: str, path: str, header_items: list[str]) -> RouteRequest:
    """The request `edge route --method --host --path --header NAME=VALUE...` describes (the scheme is set by
    the listener it arrives on). ValueError for a header that is not NAME=VALUE (or NAME:VALUE)."""
    headers: list[tuple[bytes, bytes]] = []
    for item in header_items:
        name, sep, value = item.partition("=")
        if not sep:
            name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r} is not NAME=VALUE")
        headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
    path, _, query = path.partition("?")
    return RouteRequest(method.upper(), path or "/", query, host, "", headers)


class RouteExplainer:
    """Writes the explanation of one request to `out`; explain() is True when the request is routed. `args` are
    the `edge route` arguments it reads: port, scheme, sni, cluster_domain, gateway_labels."""

    def __init__(self, routing: table.RoutingTable, resources: list[istio.Resource], args, out: TextIO):
        self.table = routing
        self.resources = resources
        self.by_ref = {(r.kind, r.key): r for r in resources}
        self.args = args
        self.out = out

    def say(self, text: str = "", indent: int = 0) -> None:
        print("  " * indent + text, file=self.out)

    def where(self, kind: str, key: str, index: int = 0) -> str:
        res = self.by_ref.get((kind, key))
        if res is None and kind in ("VirtualService", "Gateway"):
            return self._from_ingress(kind, key, index)
        return f" ({res.file}:{res.line})" if res is not None else ""

    def _from_ingress(self, kind: str, key: str, index: int) -> str:
        """A Gateway or VirtualService derived from an Ingress (edge/compiler/ingress.py): the Ingress path it came from."""
        from edge.compiler.ingress import derive
        from edge.compiler.report import Report

        of = lambda k: [r for r in self.resources if r.kind == k]  # noqa: E731
        derived = derive(Report(), of("Ingress"), of("IngressClass"), of("ServiceEntry"), getattr(self.args, "cluster_domain", "cluster.local"))
        origin = derived.origin(kind, key, index)
        return f" (from Ingress {origin[0].namespace}/{origin[0].name} {origin[1]}, {origin[0].file}:{origin[0].line})" if origin else ""

    def explain(self, request: RouteRequest) -> bool:
        port = self.args.port
        listeners = [l for l in self.table.listeners if l.port == port]
        if not listeners:
            served = ", ".join(str(p) for p in sorted({l.port for l in self.table.listeners})) or "none"
            self.say(f"no listener on port {port} (connection refused); Gateway ports served: {served}")
            self._hints(port, request.authority)
            return False
        listener = listeners[0]
        extra = f" (also binds: {', '.join(l.bind for l in listeners[1:])})" if len(listeners) > 1 else ""
        self.say(f"listener {listener.name}: {listener.protocol}, from {', '.join(listener.gateways)}{extra}")
        if listener.protocol == table.PROTO_HTTP:
            self.say(f"clients may speak {PLAIN_HTTP}", 1)
            request.scheme = self.args.scheme or "http"
            return self._http(listener.route_config, request, port)
        if listener.protocol == table.PROTO_TCP:
            if not explain_authz.explain_tcp(self.table, self.args, port, "", lambda text, extra=0: self.say(text, 1 + extra)):
                return False
            self.say(f"TCP proxy ({TCP}, no HTTP routing):", 1)
            self._l4(listener.tcp, 2)
            return True
        sni = (self.args.sni if self.args.sni is not None else _host_only(request.authority)).lower()
        chain = select_filter_chain(listener.filter_chains, sni)
        if chain is None:
            names = sorted({n for c in listener.filter_chains for n in c.server_names}) or ["(any)"]
            self.say(f"no filter chain for SNI {sni or '(none)'}: the TLS handshake is reset (filter_chain_not_found); server names here: {', '.join(names)}", 1)
            return False
        names = ", ".join(chain.server_names) or "any SNI"
        self.say(f"filter chain {chain.server_name} of Gateway {chain.gateway}{self.where('Gateway', chain.gateway)}: server names {names}", 1)
        self.say(f"clients may speak {chain_protocols(chain)}", 2)
        if chain.tls is not None:
            cert = chain.tls.credential_name and f"credentialName {chain.tls.credential_name}" or chain.tls.cert_chain_file or "(no certificate)"
            self.say(f"TLS {chain.tls.mode}: terminated with {cert}, minimum {chain.tls.min_version}", 2)
        else:
            self.say("TLS passthrough: the ClientHello and everything after it go to the upstream unchanged", 2)
        if chain.route_config is not None:
            request.scheme = self.args.scheme or "https"
            return self._http(chain.route_config, request, port, indent=2, sni=sni)
        if not explain_authz.explain_tcp(self.table, self.args, port, sni, lambda text, extra=0: self.say(text, 2 + extra)):
            return False
        self.say("TCP proxy:", 2)
        self._l4(chain.tcp, 3)
        return True

    def _http(self, rc: table.RouteConfig, request: RouteRequest, port: int, indent: int = 1, sni: str = "") -> bool:
        say = lambda text, extra=0: self.say(text, indent + extra)  # noqa: E731
        if not authenticate(self.table, request, getattr(self.args, "jwt", None), time.time(), say):
            return False
        if not explain_authz.explain_http(self.table, request, self.args, port, sni, say):
            return False  # Envoy's rbac filter runs before the router: a denied request is never routed
        router = Router(rc)
        ex = router.explain(request.authority, request)
        self.say(f"route config {rc.name}", indent)
        if ex.virtual_host is None:
            self.say(f"404 Not Found (NR route_not_found): {ex.host_reason}", indent)
            self._hints(port, ex.host)
            return False
        vh = ex.virtual_host
        if vh.name.startswith("blackhole:"):
            self.say("404 Not Found (NR route_not_found): no VirtualService is bound to the servers of this port, so every request gets 404", indent)
            self._hints(port, ex.host)
            return False
        self.say(f"virtual host {vh.name} (domains {', '.join(vh.domains)}) by {ex.host_reason}", indent)
        if vh.require_tls and request.scheme == "http":
            self.say(f"301 Moved Permanently to https://{ex.host}{request.path}{'?' + request.query if request.query else ''} (tls.httpsRedirect)", indent + 1)
            return True
        for route, why in ex.tried:
            self.say(f"skipped {self._route_label(route)}: {why}", indent + 1)
        if ex.route is None:
            self.say(f"404 Not Found (NR route_not_found): no route of virtual host {vh.name} matches (there is no fallback to other hosts)", indent + 1)
            return False
        self._route(ex.route, request, indent + 1)
        return True

    def _route_label(self, route: table.Route) -> str:
        name = f" {route.name!r}" if route.name else ""
        origin = _http_route_origin(route)
        if origin is not None:  # generated from a Gateway API HTTPRoute or GRPCRoute: name it, and the rule and match
            key, rule, match = origin
            return f"{self._route_kind(key)} {key} rules[{rule}].matches[{match}] (as VirtualService {route.virtual_service} http[{route.rule_index}])"
        return f"VirtualService {route.virtual_service} http[{route.rule_index}]{name}"

    def _route_kind(self, key: str) -> str:
        """HTTPRoute or GRPCRoute: the kind loaded under that name (both share the generated route names)."""
        kinds = [k for k in ("HTTPRoute", "GRPCRoute") if (k, key) in self.by_ref]
        return "/".join(kinds) or "HTTPRoute"

    def _route(self, route: table.Route, request: RouteRequest, indent: int) -> None:
        origin = _http_route_origin(route)
        where = self.where(self._route_kind(origin[0]).split("/")[0], origin[0]) if origin is not None else self.where("VirtualService", route.virtual_service, route.rule_index)
        self.say(f"matched {self._route_label(route)}{where}", indent)
        self.say(f"match: {_describe_match(route.match)}", indent + 1)
        i = indent + 1
        if route.action == table.ACTION_REDIRECT:
            r = route.redirect
            path = r.path or (r.prefix_rewrite + request.path[len(route.match.path.value) :] if r.prefix_rewrite is not None and route.match.path else request.path)
            port = f":{r.port}" if r.port else (":<request port>" if r.port_from_request else "")
            self.say(f"redirect {r.code} to {r.scheme or request.scheme}://{r.authority or _host_only(request.authority)}{port}{path}{'?' + request.query if request.query else ''}", i)
        elif route.action == table.ACTION_DIRECT:
            body = route.direct.body
            preview = body[:60].decode("utf-8", "replace") + ("…" if len(body) > 60 else "")
            self.say(f"direct response {route.direct.status}, body {len(body)} bytes{': ' + repr(preview) if body else ''}", i)
        else:
            self.say("forward to:", i)
            for wc in route.clusters:
                share = f"{100 * wc.weight / route.total_weight:.0f}% " if route.total_weight and len(route.clusters) > 1 else ""
                self._cluster(wc, share, i + 1)
        if route.rewrite is not None:
            rw = route.rewrite
            if rw.prefix is not None:
                self.say(f"rewrite: prefix {route.match.path.value if route.match.path else '/'} → {rw.prefix}", i)
            if rw.full_path is not None:
                self.say(f"rewrite: path → {rw.full_path}", i)
            if rw.regex is not None:
                self.say(f"rewrite: regex {rw.regex} → {rw.regex_substitution}", i)
            if rw.authority:
                self.say(f"rewrite: authority → {rw.authority}", i)
        if route.headers is not None:
            self.say(f"headers: {_describe_headers(route.headers)}", i)
        if route.action == table.ACTION_FORWARD:
            self.say(f"timeout: {f'{route.timeout_s:g}s' if route.timeout_s else 'none (Istio default: disabled)'}", i)
            retry = route.retry if route.retry is not None else self.table.default_retry
            origin = "" if route.retry is not None else " (Istio default)"
            if retry is None or retry.attempts == 0:
                self.say("retries: none", i)
            else:
                codes = f", status codes {list(retry.retriable_status_codes)}" if retry.retriable_status_codes else ""
                per_try = f", per try {retry.per_try_timeout_s:g}s" if retry.per_try_timeout_s else ""
                self.say(f"retries: {retry.attempts} on {','.join(retry.retry_on)}{codes}{per_try}{origin}", i)
        if route.fault is not None:
            f = route.fault
            parts = []
            if f.delay_s:
                parts.append(f"delay {f.delay_s:g}s for {f.delay_ppm / 10_000:g}% of requests")
            if f.abort_status or f.abort_grpc_status:
                parts.append(f"abort {f.abort_status or f.abort_grpc_status} for {f.abort_ppm / 10_000:g}% of requests")
            self.say(f"fault: {'; '.join(parts)}", i)
        for m in route.mirrors:
            self.say(f"mirror: {m.ppm / 10_000:g}% to {m.cluster}", i)
        if route.cors is not None:
            c = route.cors
            origins = ", ".join(_describe_string_matcher(o) for o in c.allow_origins) or "none"
            self.say(f"CORS: origins {origins}; methods {c.allow_methods or '-'}; headers {c.allow_headers or '-'}; max age {c.max_age or '-'}", i)

    def _cluster(self, wc: table.WeightedCluster, share: str, indent: int) -> None:
        if not wc.cluster:
            self.say(f"{share}{wc.host}: no such cluster → 503 (NC): no ServiceEntry host, port or subset for it", indent)
            return
        cluster = self.table.clusters.get(wc.cluster)
        if cluster is None:
            self.say(f"{share}{wc.cluster}: missing → 503 (NC)", indent)
            return
        hashing = f", consistent hash on {wc.hash_policy.kind} {wc.hash_policy.name}".rstrip() if wc.hash_policy else ""
        self.say(f"{share}{cluster.name} ({cluster.resolution}, {cluster.lb_policy}{hashing})", indent)
        spoken, why = cluster_protocol(cluster)
        self.say(f"upstream protocol {spoken} ({why})", indent + 1)
        if not cluster.endpoints:
            self.say("no endpoints → 503 (UH)", indent + 1)
        for ep in cluster.endpoints:
            labels = ",".join(f"{k}={v}" for k, v in ep.labels.items())
            self.say(f"endpoint {ep.address}:{ep.port} weight {ep.weight}{' ' + labels if labels else ''}", indent + 1)
        if cluster.tls is not None:
            self.say(f"upstream TLS {cluster.tls.mode}{' sni ' + cluster.tls.sni if cluster.tls.sni else ''}", indent + 1)

    def _l4(self, l4: table.L4Route, indent: int) -> None:
        self.say(f"VirtualService {l4.virtual_service}{self.where('VirtualService', l4.virtual_service)}", indent)
        for wc in l4.clusters:
            share = f"{100 * wc.weight / l4.total_weight:.0f}% " if l4.total_weight and len(l4.clusters) > 1 else ""
            self._cluster(wc, share, indent + 1)

    def _hints(self, port: int, host: str) -> None:
        """Why no VirtualService serves this host here: the questions people ask when they get 404."""
        from edge.compiler import host_matches, names_for_namespace, resolve_gateway_name, resolve_shortname, sanitize_server_hosts, selector_matches

        host = _host_only(host).lower()
        gateways = {r.key: r for r in self.resources if r.kind == "Gateway"}
        labels = self._labels()
        for res in self.resources:
            if res.kind != "VirtualService" or not res.spec.hosts:
                continue
            vs_hosts = [resolve_shortname(h, res.namespace, self.args.cluster_domain) for h in res.spec.hosts]
            if not any(host_matches(h.lower(), host) for h in vs_hosts):
                continue
            where = f"{res.file}:{res.line}"
            names = [resolve_gateway_name(g, res.namespace) for g in res.spec.gateways if g != "mesh"]
            if not names:
                self.say(f"hint: VirtualService {res.key} ({where}) has host {host} but is not bound to any Gateway (gateways: is empty, so it applies to the mesh only)", 1)
                continue
            for name in names:
                gw = gateways.get(name)
                if gw is None:
                    self.say(f"hint: VirtualService {res.key} ({where}) is bound to gateway {name}, which does not exist", 1)
                    continue
                if not selector_matches(gw.spec.selector, labels):
                    self.say(f"hint: Gateway {name} ({gw.file}:{gw.line}) is not selected by this gateway's labels; VirtualService {res.key} is bound to it", 1)
                    continue
                servers = [s for s in gw.spec.servers if s.port.number == port]
                if not servers:
                    ports = ", ".join(str(s.port.number) for s in gw.spec.servers)
                    self.say(f"hint: VirtualService {res.key} ({where}) is bound to Gateway {name}, which has no server on port {port} (its ports: {ports})", 1)
                    continue
                for s in servers:
                    visible = names_for_namespace(sanitize_server_hosts(s.hosts, gw.namespace), res.namespace)
                    if not any(host_matches(h.lower(), host) for h in visible):
                        self.say(f"hint: Gateway {name} server {s.port.name} on port {port} exposes hosts {', '.join(s.hosts)} (as seen from namespace {res.namespace}), not {host}", 1)

    def _labels(self) -> dict[str, str]:
        from edge.settings import parse_labels

        return parse_labels(self.args.gateway_labels if self.args.gateway_labels is not None else DEFAULT_GATEWAY_LABELS)


def _http_route_origin(route: table.Route) -> tuple[str, str, str] | None:
    """(namespace/name, rule, match) of a route the Gateway API stage generated (edge/compiler/gateway_api.py
    names them `<ns>.<name>.<rule>.<match>` in VirtualServices named `…-istio-autogenerated-k8s-gateway`)."""
    if not route.virtual_service.endswith("-istio-autogenerated-k8s-gateway") or route.name.count(".") < 3:
        return None
    ns, _, rest = route.name.partition(".")
    name, rule, match = rest.rsplit(".", 2)
    return f"{ns}/{name}", rule, match


def select_filter_chain(chains: tuple[table.FilterChain, ...], sni: str) -> table.FilterChain | None:
    """The chain a TLS connection with this SNI takes, by the worker's own rule (workers/tls/sni.SniIndex)."""
    index = SniIndex(chains).select(sni or None)
    return chains[index] if index is not None else None


def _host_only(authority: str) -> str:
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end > 0 else authority
    head, sep, port = authority.rpartition(":")
    return head if sep and port.isdigit() else authority


def _describe_string_matcher(m: table.StringMatcher) -> str:
    return describe_matcher(m)


def _describe_match(m: table.RouteMatch) -> str:
    parts = [f"path {_describe_string_matcher(m.path)}" if m.path is not None else "any path"]
    for h in m.headers:
        parts.append(f"{'without ' if h.invert else ''}header {h.name} {_describe_string_matcher(h.matcher)}")
    for q in m.query:
        parts.append(f"query {q.name} {_describe_string_matcher(q.matcher)}")
    return ", ".join(parts)


def _describe_headers(h: table.HeaderRules) -> str:
    parts = []
    for side, ops in (("request", h.request), ("response", h.response)):
        if ops is None:
            continue
        parts += [f"{side} set {k}: {v}" for k, v in ops.set]
        parts += [f"{side} add {k}: {v}" for k, v in ops.add]
        parts += [f"{side} remove {k}" for k in ops.remove]
    if h.authority:
        parts.append(f"authority → {h.authority}")
    return "; ".join(parts)
