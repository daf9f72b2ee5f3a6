# Servers: which Gateways this gateway serves, and their servers merged into listener plans keyed
# (bind, port), as pilot/pkg/model/gateway.go MergeGateways does; then istioctl analyze's checks of the
# VirtualServices' bindings to them.
#
# Rules:
# - A Gateway is served when its selector ⊆ the gateway labels (--gateway-labels; empty selector = all).
# - Server hosts are sanitised (`./h` → `<gw-ns>/h`, `*/h` → `h`).
# - Plain HTTP servers share one (bind, port); TLS servers (HTTPS, TLS) share one and are told apart by SNI,
#   so a host already served with TLS there is a duplicate; any other mix on one (bind, port), or a second
#   TCP server, is a conflict: an error, and the later server (creation order) is skipped.
# - A server admission refused is not merged at all, so it cannot cause a conflict.
from __future__ import annotations

from edge import istio
from edge.compiler.hosts import host_matches, names_for_namespace, sanitize_server_hosts, selector_matches
from edge.compiler.model import (
    HTTP_PROTOCOLS,
    KIND_GROUP,
    KIND_HTTP,
    KIND_HTTPS,
    KIND_PASSTHROUGH,
    KIND_TCP,
    KIND_TLS_TERMINATE,
    MESH_GATEWAY,
    TCP_PROTOCOLS,
    TERMINATING_MODES,
    TLS_PROTOCOLS,
    GatewayServer,
    ListenerPlan,
    PreparedVirtualService,
)
from edge.compiler.report import Report, Where
from edge.errors import NOTE, WARNING

def select_gateways(report: Report, gateways: list[istio.Resource], labels: dict[str, str]) -> list[istio.Resource]:
    """The Gateways this gateway serves: selector ⊆ its labels (an empty selector selects every gateway)."""
    selected = []
    shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"
    for res in gateways:
        if selector_matches(res.spec.selector, labels):
            selected.append(res)
        else:
            wanted = ",".join(f"{k}={v}" for k, v in sorted(res.spec.selector.items()))
            report.add(WARNING, res, "$.spec.selector", f"selector {wanted} does not match this gateway's labels {shown} (--gateway-labels): the Gateway is not served here")
    return selected


def merge_servers(report: Report, gateways: list[istio.Resource], invalid_servers: set[tuple[str, int]]) -> list[ListenerPlan]:
    """mergeGateways: servers keyed by (bind, port), in creation order; a server that conflicts with the
    first one on its key is an error and skipped. `invalid_servers`: (gateway, index) admission refused."""
    plans: dict[tuple[str, int], ListenerPlan] = {}
    for gw in gateways:
        for i, s in enumerate(gw.spec.servers):
            if (gw.key, i) in invalid_servers:
                continue
            w = Where(report, gw, f"$.spec.servers[{i}]")
            kind = _server_kind(s)
            if kind is None:
                if s.tls is not None and s.tls.mode == "ISTIO_MUTUAL":
                    w.warn("ISTIO_MUTUAL needs Istio workload certificates and mesh clients: the server is skipped", ".tls.mode")
                continue
            srv = GatewayServer(gateway=gw, index=i, server=s, hosts=sanitize_server_hosts(s.hosts, gw.namespace), kind=kind)
            key = (s.bind, s.port.number)
            plan = plans.get(key)
            group = KIND_GROUP[kind]
            if plan is None:
                plans[key] = ListenerPlan(bind=s.bind, port=s.port.number, group=group, servers=[srv])
                continue
            other = plan.servers[0]
            if group != plan.group or group == "tcp":
                reason = "only one TCP server can use a port" if group == plan.group else "plain HTTP, TLS (HTTPS/TLS) and TCP servers cannot share a port and bind"
                w.error(f"conflicts with {other.describe()} on port {s.port.number}{' bind ' + s.bind if s.bind else ''}: {reason}; this server is skipped")
                continue
            if s.tls is not None and _duplicate_tls_hosts(w, srv, plan):
                continue
            plan.servers.append(srv)
    return list(plans.values())


def _duplicate_tls_hosts(w: Where, srv: GatewayServer, plan: ListenerPlan) -> bool:
    """model.CheckDuplicates: a host already served with TLS on this (bind, port) would be an identical
    SNI filter-chain match."""
    def names(s: GatewayServer) -> set[str]:
        # TLS servers: SNI names ("*" when any SNI); httpsRedirect HTTP servers: the hosts as written.
        return set(s.hosts) if s.kind == KIND_HTTP else (set(sni_names(s.hosts)) or {"*"})

    mine = names(srv)
    for other in plan.servers:
        if other.server.tls is None:
            continue
        both = sorted(mine & names(other))
        if both:
            w.error(f"duplicate TLS host names {both} on port {srv.port}: already served by {other.describe()}; this server is skipped")
            return True
    return False


def _server_kind(s: istio.Server) -> str | None:
    """What the server does on its port (model.py KIND_*), or None when it is not served here."""
    proto = s.port.protocol.upper()
    mode = s.tls.mode if s.tls is not None else None
    if proto in HTTP_PROTOCOLS:
        return KIND_HTTP
    if proto in TCP_PROTOCOLS:
        return KIND_TCP
    if proto in TLS_PROTOCOLS:
        if mode == "PASSTHROUGH":
            return KIND_PASSTHROUGH
        if mode in TERMINATING_MODES:
            return KIND_HTTPS if proto == "HTTPS" else KIND_TLS_TERMINATE
    return None  # ISTIO_MUTUAL, AUTO_PASSTHROUGH, unknown protocols: reported elsewhere


def sni_names(hosts: list[str]) -> tuple[str, ...]:
    """GetSNIHostsForServer + toFilterChainMatch: host parts, lowercased, sorted; `*` means any SNI."""
    names = {(h.partition("/")[2] if "/" in h else h).lower() for h in hosts}
    return () if "*" in names else tuple(sorted(names))


def check_bindings(
    report: Report, roots: list[PreparedVirtualService], gateway_by_key: dict[str, istio.Resource], selected_gateways: list[istio.Resource]
) -> None:
    """istioctl analyze's gateway checks, once everything is bound: gateways a VirtualService names that do
    not exist or are not selected here, and hosts no server of its gateways exposes."""
    selected = {g.key for g in selected_gateways}
    for vs in roots:
        for j, g in enumerate(vs.spec.gateways):
            if g == MESH_GATEWAY:
                continue
            if g not in gateway_by_key:
                report.add(WARNING, vs.res, f"$.spec.gateways[{j}]", f"gateway {g} is not defined by any Gateway: the VirtualService is not served through it")
            elif g not in selected:
                report.add(NOTE, vs.res, f"$.spec.gateways[{j}]", f"gateway {g} is not selected by this gateway's labels")
        servers = [
            (gateway_by_key[g], s) for g in vs.gateways if g in selected for s in gateway_by_key[g].spec.servers
        ]
        if not servers:
            continue
        for j, h in enumerate(vs.spec.hosts):
            exposed = any(
                host_matches(sh, h) for gw, s in servers for sh in names_for_namespace(sanitize_server_hosts(s.hosts, gw.namespace), vs.res.namespace)
            )
            if not exposed:
                names = ", ".join(vs.gateways)
                report.add(WARNING, vs.res, f"$.spec.hosts[{j}]", f"host {h} is not exposed by any server of gateway(s) {names}: no traffic reaches it")
