# The protocols a compiled table speaks, described for people (`edge check --listeners`, `edge route`): per
# listener and filter chain what clients may speak to it, per cluster what edge speaks to its endpoints and why.
# Pure: a RoutingTable in, rows and lines out.
#
# Rules (what the workers do, stated once here for the explanations):
# - Plain HTTP listeners (Istio HTTP, HTTP2, GRPC, GRPC-WEB servers) serve HTTP/1.1 and HTTP/2 with prior knowledge
#   (h2c: the 24-byte preface is sniffed) on the same port; no `Upgrade: h2c` (Envoy strips it).
# - TLS-terminating HTTP chains offer ALPN h2,http/1.1 (workers/tls/listener.SERVER_ALPN): HTTP/2 when the client
#   chooses h2, else HTTP/1.1. Passthrough chains forward the TLS bytes by SNI (TCP); terminated TCP chains are TCP.
# - A cluster's upstream protocol was decided at compile time (edge/compiler/clusters.upstream_protocol, in Istio's
#   cluster_builder order): an HTTP2/GRPC/GRPC-WEB port is HTTP/2 whatever the DestinationRule says; else
#   useClientProtocol follows the client; else h2UpgradePolicy UPGRADE is HTTP/2; else HTTP/1.1. On other ports
#   (TCP, TLS, HTTPS, MONGO…) TCP and TLS routes forward bytes; the protocol applies only to HTTP routes there.
from __future__ import annotations

from edge import table

PLAIN_HTTP = "HTTP/1.1 + HTTP/2 (h2c, prior knowledge)"
TLS_HTTP = "HTTPS: HTTP/1.1 + HTTP/2 (ALPN h2,http/1.1)"
PASSTHROUGH = "TLS passthrough by SNI (TCP)"
TLS_TCP = "TLS terminated, then TCP"
TCP = "TCP (opaque bytes)"
H2_PORT_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})  # as edge/compiler/clusters.H2_PORT_PROTOCOLS
HTTP_PORT_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", ""})


def chain_protocols(chain: table.FilterChain) -> str:
    if chain.tls is None:
        return PASSTHROUGH
    return TLS_HTTP if chain.route_config is not None else TLS_TCP


def listener_rows(listener: table.Listener) -> list[tuple[str, str, str]]:
    """(listener, server names or "-", protocols) for a listener: one row, or one per filter chain."""
    if listener.protocol == table.PROTO_HTTP:
        return [(listener.name, "-", PLAIN_HTTP)]
    if listener.protocol == table.PROTO_TCP:
        return [(listener.name, "-", TCP)]
    return [(listener.name, ",".join(chain.server_names) or "(any)", chain_protocols(chain)) for chain in listener.filter_chains]


def cluster_protocol(cluster: table.Cluster) -> tuple[str, str]:
    """(what edge speaks to the cluster's endpoints, why)."""
    port = cluster.protocol.upper()
    if port not in HTTP_PORT_PROTOCOLS:  # TCP, TLS, HTTPS, MONGO…: TCP routes forward bytes; an HTTP route speaks HTTP/1.1
        return cluster.upstream_protocol, f"port protocol {port}: TCP and TLS routes to it forward bytes"
    if cluster.upstream_protocol == table.UPSTREAM_HTTP2:
        if port in H2_PORT_PROTOCOLS:
            return "HTTP/2", f"port protocol {port}"
        return "HTTP/2", f"port protocol {port or '(none)'}, DestinationRule h2UpgradePolicy: UPGRADE"
    if cluster.upstream_protocol == table.UPSTREAM_CLIENT:
        return "the client's (HTTP/2 for HTTP/2 requests, else HTTP/1.1)", f"port protocol {port or '(none)'}, DestinationRule useClientProtocol: true"
    return "HTTP/1.1", f"port protocol {port or '(none)'}, no h2UpgradePolicy: UPGRADE"


def protocol_tables(routing: table.RoutingTable) -> list[str]:
    """The listeners and clusters as two aligned text tables."""
    listeners = [row for listener in routing.listeners for row in listener_rows(listener)]
    clusters = [(name, *cluster_protocol(routing.clusters[name])) for name in sorted(routing.clusters)]
    return [*_aligned(("LISTENER", "SERVER NAMES", "CLIENTS MAY SPEAK"), listeners), "", *_aligned(("CLUSTER", "UPSTREAM PROTOCOL", "WHY"), clusters)]


def _aligned(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
