# The `edge` command: check, dump, route (pure: load + compile + explain) and run (the supervisor).
#
# Rules:
# - check: every error and warning as a `file:line: …` line on stderr, one summary line on stdout;
#   exit 0 when there is no error (warnings allowed), 1 otherwise. Notes (skipped kinds…) only with -v.
# - dump: the compiled RoutingTable as indented JSON with sorted keys on stdout; exit 1 (and the errors on
#   stderr) when the configuration does not compile.
# - route: explain which listener, filter chain, virtual host, VirtualService and route a request takes, and
#   why the routes before it did not match; exit 0 when the request is routed, 1 when the gateway would
#   answer 404 / refuse the connection, or the configuration does not compile.
# - run: flags and EDGE_* variables → edge.settings.RunSettings → edge.supervisor.run(settings).
# - Usage errors exit 2 (argparse).
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from edge import istio, table
from edge.errors import ERROR, NOTE, WARNING, Diagnostic

EXIT_OK = 0
EXIT_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description="An Istio-compatible gateway: Gateway, VirtualService, DestinationRule and ServiceEntry YAML, served.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("paths", nargs="+", metavar="PATH", help="YAML/JSON files or directories (walked recursively)")
        p.add_argument("--gateway-labels", default=None, metavar="K=V,...", help="this gateway's labels, matched against Gateway.selector (default istio=ingressgateway)")
        p.add_argument("--cluster-domain", default="cluster.local", help="domain of short host names (default cluster.local)")

    p = sub.add_parser("check", help="validate configuration without serving it")
    config_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="also print notes (skipped objects and the like)")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("dump", help="print the compiled routing table as JSON")
    config_args(p)
    p.set_defaults(handler=cmd_dump)

    p = sub.add_parser("route", help="explain how a request would be routed")
    config_args(p)
    p.add_argument("--port", type=int, required=True, help="Gateway port (port.number) the request arrives on")
    p.add_argument("--host", required=True, help="Host header (a port in it is ignored for host matching)")
    p.add_argument("--path", default="/", help="request path, optionally with ?query (default /)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="request header (repeatable)")
    p.add_argument("--method", default="GET")
    p.add_argument("--scheme", choices=("http", "https"), default=None, help="default: https on TLS listeners, else http")
    p.add_argument("--sni", default=None, help="TLS server name (default: the host, on TLS listeners)")
    p.set_defaults(handler=cmd_route)

    p = sub.add_parser("run", help="serve the configuration (supervisor and workers)")
    p.add_argument("--config", action="append", default=None, metavar="PATH", help="configuration file or directory, repeatable (default /etc/edge; EDGE_CONFIG, ':'-separated)")
    p.add_argument("--workers", default=None, metavar="N", help="worker processes (default: one per CPU)")
    p.add_argument("--port-map", default=None, metavar="80=8080,...", help="bind Gateway port P on port Q instead")
    p.add_argument("--status-port", default=None, metavar="PORT", help="readiness: GET /healthz/ready (default 15021)")
    p.add_argument("--metrics-port", default=None, metavar="PORT", help="GET /stats/prometheus (default 15090)")
    p.add_argument("--admin-port", default=None, metavar="PORT", help="admin endpoints (default 15000)")
    p.add_argument("--admin-bind", default=None, metavar="ADDR", help="admin address (default 127.0.0.1)")
    p.add_argument("--gateway-labels", default=None, metavar="K=V,...", help="matched against Gateway.selector (default istio=ingressgateway)")
    p.add_argument("--credentials-dir", default=None, metavar="DIR", help="one folder per credentialName with tls.crt, tls.key, ca.crt (default /etc/edge/credentials)")
    p.add_argument("--access-log", default=None, metavar="-|PATH|off", help="access log destination (default off)")
    p.add_argument("--access-log-format", default=None, choices=("text", "json"), help="Istio's TEXT format or JSON (default text)")
    p.add_argument("--access-log-template", default=None, metavar="FORMAT", help="Istio's meshConfig.accessLogFormat: an Envoy format string of %%COMMAND%% operators, or with --access-log-format json a JSON object of key: format string")
    p.add_argument("--drain-timeout", default=None, metavar="SECONDS", help="graceful drain limit on SIGTERM (default 5)")
    p.add_argument("--drain-delay", default=None, metavar="SECONDS", help="keep accepting this long after SIGTERM before draining (default 0)")
    p.add_argument("--http10", default=None, choices=("accept", "reject"), help="HTTP/1.0 requests: accept (default) or reject with 426 as Istio does")
    p.add_argument("--shadow-host-suffix", action="store_true", default=None, help="append -shadow to the Host of mirrored requests (Istio <= 1.27)")
    p.add_argument("--server-header", default=None, metavar="NAME", help="server response header (default istio-envoy)")
    p.add_argument("--cluster-domain", default=None, help="domain of short host names (default cluster.local)")
    p.add_argument("--request-headers-timeout", default=None, metavar="SECONDS", help="a request head must arrive within this time once it started (default 10; 408 after)")
    p.add_argument("--stream-idle-timeout", default=None, metavar="SECONDS", help="a request in flight whose bytes stop moving for this long is ended: 408 while its body was arriving, 504 after (Envoy's stream_idle_timeout; default 300, 0 = off)")
    p.add_argument("--idle-timeout", default=None, metavar="SECONDS", help="close client connections idle this long (default 3600, Envoy's)")
    p.add_argument("--max-connections-per-worker", default=None, metavar="N", help="stop accepting above this many client connections per worker (default 10000)")
    p.add_argument("--http-codec", default=None, choices=("h11", "httptools"), help="HTTP/1.1 engine: h11 (default, the reference) or httptools (faster; pip install 'edge[fast]')")
    p.add_argument("--num-trusted-proxies", default=None, metavar="N", help="proxies in front of edge whose X-Forwarded-For entries are trusted (Istio's gatewayTopology.numTrustedProxies; default 0)")
    p.add_argument("--preserve-external-request-id", action="store_true", default=None, help="keep a client's x-request-id instead of replacing it (Envoy's preserve_external_request_id)")
    p.add_argument("--dns-refresh-rate", default=None, metavar="SECONDS", help="how often ServiceEntry DNS names are resolved again (Istio's meshConfig.dnsRefreshRate; default 60)")
    p.add_argument("--proxy-protocol", action="store_true", default=None, help="every connection starts with a PROXY protocol v1/v2 header, as from AWS NLB (Istio's gatewayTopology.proxyProtocol)")
    p.set_defaults(handler=cmd_run)
    return parser


# ---------------------------------------------------------------------------------------------------------
# check / dump
# ---------------------------------------------------------------------------------------------------------


def _compile(args):
    from edge.compiler import CompileOptions, load_and_compile
    from edge.settings import DEFAULT_GATEWAY_LABELS, SettingsError, parse_labels

    try:
        labels = parse_labels(args.gateway_labels if args.gateway_labels is not None else DEFAULT_GATEWAY_LABELS)
    except SettingsError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return None, None
    options = CompileOptions(gateway_labels=labels, cluster_domain=args.cluster_domain)
    return load_and_compile(args.paths, options)


def _print_diagnostics(diagnostics: list[Diagnostic], out: TextIO, notes: bool = False) -> None:
    for d in diagnostics:
        if d.severity == NOTE and not notes:
            continue
        print(str(d) if d.severity != NOTE else f"{d.file}:{d.line}: note: {d.message}", file=out)


def cmd_check(args) -> int:
    loaded, result = _compile(args)
    if loaded is None:
        return 2
    diagnostics = loaded.diagnostics + result.diagnostics
    _print_diagnostics(diagnostics, sys.stderr, notes=args.verbose)
    errors = sum(d.severity == ERROR for d in diagnostics)
    warnings = sum(d.severity == WARNING for d in diagnostics)
    counts = {kind: 0 for kind in istio.SPEC_TYPES}
    for res in loaded.resources:
        counts[res.kind] += 1
    parts = [f"{n} {_plural(kind, n)}" for kind, n in counts.items()]
    summary = f"{' '.join(args.paths)}: {len(loaded.files)} file{'s' if len(loaded.files) != 1 else ''}, {', '.join(parts)}"
    if result.table is not None:
        summary += f"; {len(result.table.listeners)} listener{'s' if len(result.table.listeners) != 1 else ''}, {len(result.table.clusters)} cluster{'s' if len(result.table.clusters) != 1 else ''}"
    verdict = "ok" if errors == 0 else "FAILED"
    summary += f"; {errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}: {verdict}"
    print(summary)
    return EXIT_OK if errors == 0 else EXIT_FAILED


def _plural(word: str, n: int) -> str:
    if n == 1:
        return word
    return word[:-1] + "ies" if word.endswith("ry") else word + "s"


def cmd_dump(args) -> int:
    import orjson

    loaded, result = _compile(args)
    if loaded is None:
        return 2
    diagnostics = loaded.diagnostics + result.diagnostics
    if result.table is None:
        _print_diagnostics([d for d in diagnostics if d.severity == ERROR], sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(orjson.dumps(table.to_builtins(result.table), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    sys.stdout.write("\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# route
# ---------------------------------------------------------------------------------------------------------


class RouteRequest:
    """The request object workers/router.py matches (the attributes h11-based workers provide)."""

    def __init__(self, method: str, path: str, query: str, authority: str, scheme: str, headers: list[tuple[bytes, bytes]]):
        self.method = method
        self.path = path
        self.query = query
        self.authority = authority
        self.scheme = scheme
        self.headers = headers


def cmd_route(args) -> int:
    loaded, result = _compile(args)
    if loaded is None:
        return 2
    diagnostics = loaded.diagnostics + result.diagnostics
    if result.table is None:
        print("the configuration does not compile:", file=sys.stderr)
        _print_diagnostics([d for d in diagnostics if d.severity == ERROR], sys.stderr)
        return EXIT_FAILED
    headers: list[tuple[bytes, bytes]] = []
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep:
            name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"edge route: --header {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
    path, _, query = args.path.partition("?")
    explainer = _RouteExplainer(result.table, loaded.resources, args, sys.stdout)
    return explainer.explain(RouteRequest(args.method.upper(), path or "/", query, args.host, "", headers))


class _RouteExplainer:
    def __init__(self, routing: table.RoutingTable, resources: list[istio.Resource], args, out: TextIO):
        self.table = routing
        self.resources = resources
        self.by_ref = {(r.kind, r.key): r for r in resources}
        self.args = args
        self.out = out

    def say(self, text: str = "", indent: int = 0) -> None:
        print("  " * indent + text, file=self.out)

    def where(self, kind: str, key: str) -> str:
        res = self.by_ref.get((kind, key))
        return f" ({res.file}:{res.line})" if res is not None else ""

    def explain(self, request: RouteRequest) -> int:
        port = self.args.port
        listeners = [l for l in self.table.listeners if l.port == port]
        if not listeners:
            served = ", ".join(str(p) for p in sorted({l.port for l in self.table.listeners})) or "none"
            self.say(f"no listener on port {port} (connection refused); Gateway ports served: {served}")
            self._hints(port, request.authority)
            return EXIT_FAILED
        listener = listeners[0]
        extra = f" (also binds: {', '.join(l.bind for l in listeners[1:])})" if len(listeners) > 1 else ""
        self.say(f"listener {listener.name}: {listener.protocol}, from {', '.join(listener.gateways)}{extra}")
        if listener.protocol == table.PROTO_HTTP:
            request.scheme = self.args.scheme or "http"
            return self._http(listener.route_config, request, port)
        if listener.protocol == table.PROTO_TCP:
            self.say("TCP proxy (opaque bytes, no HTTP routing):", 1)
            self._l4(listener.tcp, 2)
            return EXIT_OK
        sni = (self.args.sni if self.args.sni is not None else _host_only(request.authority)).lower()
        chain = select_filter_chain(listener.filter_chains, sni)
        if chain is None:
            names = sorted({n for c in listener.filter_chains for n in c.server_names}) or ["(any)"]
            self.say(f"no filter chain for SNI {sni or '(none)'}: the TLS handshake is reset (filter_chain_not_found); server names here: {', '.join(names)}", 1)
            return EXIT_FAILED
        names = ", ".join(chain.server_names) or "any SNI"
        self.say(f"filter chain {chain.server_name} of Gateway {chain.gateway}{self.where('Gateway', chain.gateway)}: server names {names}", 1)
        if chain.tls is not None:
            cert = chain.tls.credential_name and f"credentialName {chain.tls.credential_name}" or chain.tls.cert_chain_file or "(no certificate)"
            self.say(f"TLS {chain.tls.mode}: terminated with {cert}, minimum {chain.tls.min_version}", 2)
        else:
            self.say("TLS passthrough: the ClientHello and everything after it go to the upstream unchanged", 2)
        if chain.route_config is not None:
            request.scheme = self.args.scheme or "https"
            return self._http(chain.route_config, request, port, indent=2)
        self.say("TCP proxy:", 2)
        self._l4(chain.tcp, 3)
        return EXIT_OK

    def _http(self, rc: table.RouteConfig, request: RouteRequest, port: int, indent: int = 1) -> int:
        from workers.router import Router

        router = Router(rc)
        ex = router.explain(request.authority, request)
        self.say(f"route config {rc.name}", indent)
        if ex.virtual_host is None:
            self.say(f"404 Not Found (NR route_not_found): {ex.host_reason}", indent)
            self._hints(port, ex.host)
            return EXIT_FAILED
        vh = ex.virtual_host
        if vh.name.startswith("blackhole:"):
            self.say("404 Not Found (NR route_not_found): no VirtualService is bound to the servers of this port, so every request gets 404", indent)
            self._hints(port, ex.host)
            return EXIT_FAILED
        self.say(f"virtual host {vh.name} (domains {', '.join(vh.domains)}) by {ex.host_reason}", indent)
        if vh.require_tls and request.scheme == "http":
            self.say(f"301 Moved Permanently to https://{ex.host}{request.path}{'?' + request.query if request.query else ''} (tls.httpsRedirect)", indent + 1)
            return EXIT_OK
        for route, why in ex.tried:
            self.say(f"skipped {self._route_label(route)}: {why}", indent + 1)
        if ex.route is None:
            self.say(f"404 Not Found (NR route_not_found): no route of virtual host {vh.name} matches (there is no fallback to other hosts)", indent + 1)
            return EXIT_FAILED
        self._route(ex.route, request, indent + 1)
        return EXIT_OK

    def _route_label(self, route: table.Route) -> str:
        name = f" {route.name!r}" if route.name else ""
        return f"VirtualService {route.virtual_service} http[{route.rule_index}]{name}"

    def _route(self, route: table.Route, request: RouteRequest, indent: int) -> None:
        self.say(f"matched {self._route_label(route)}{self.where('VirtualService', route.virtual_service)}", indent)
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
        from edge.settings import DEFAULT_GATEWAY_LABELS, parse_labels

        return parse_labels(self.args.gateway_labels if self.args.gateway_labels is not None else DEFAULT_GATEWAY_LABELS)


def select_filter_chain(chains: tuple[table.FilterChain, ...], sni: str) -> table.FilterChain | None:
    """Envoy's server_names choice: exact name, then the longest `*.suffix`, then a chain without names."""
    for chain in chains:
        if sni and sni in chain.server_names:
            return chain
    best = None
    best_len = -1
    for chain in chains:
        for name in chain.server_names:
            if name.startswith("*") and sni.endswith(name[1:]) and len(sni) > len(name) - 1 and len(name) > best_len:
                best, best_len = chain, len(name)
    if best is not None:
        return best
    for chain in chains:
        if not chain.server_names:
            return chain
    return None


def _host_only(authority: str) -> str:
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end > 0 else authority
    head, sep, port = authority.rpartition(":")
    return head if sep and port.isdigit() else authority


def _describe_string_matcher(m: table.StringMatcher) -> str:
    from workers.router import describe_matcher

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


# ---------------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------------


def cmd_run(args) -> int:
    from edge.settings import SettingsError, build_settings

    flags: dict[str, Any] = {
        "config": args.config,
        "workers": args.workers,
        "port_map": args.port_map,
        "status_port": args.status_port,
        "metrics_port": args.metrics_port,
        "admin_port": args.admin_port,
        "admin_bind": args.admin_bind,
        "gateway_labels": args.gateway_labels,
        "credentials_dir": args.credentials_dir,
        "access_log": args.access_log,
        "access_log_format": args.access_log_format,
        "access_log_template": args.access_log_template,
        "drain_timeout": args.drain_timeout,
        "drain_delay": args.drain_delay,
        "http10": args.http10,
        "shadow_host_suffix": args.shadow_host_suffix,
        "server_header": args.server_header,
        "cluster_domain": args.cluster_domain,
        "request_headers_timeout": args.request_headers_timeout,
        "stream_idle_timeout": args.stream_idle_timeout,
        "idle_timeout": args.idle_timeout,
        "max_connections_per_worker": args.max_connections_per_worker,
        "http_codec": args.http_codec,
        "num_trusted_proxies": args.num_trusted_proxies,
        "preserve_external_request_id": args.preserve_external_request_id,
        "proxy_protocol": args.proxy_protocol,
        "dns_refresh_rate": args.dns_refresh_rate,

    }

    try:
        settings = build_settings(flags, os.environ)
    except SettingsError as exc:
        print(f"edge run: {exc}", file=sys.stderr)
        return 2
    from edge.supervisor import run

    return run(settings)
