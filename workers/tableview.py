# A worker's view of the routing table: one cheap generation check per request, a rebuild when it moved.
#
# Rules:
# - `current()` reads the generation word of the shared segment (a few hundred ns); only when it changed does
#   it copy, verify and decode the new table and build a `TableSnapshot` snapshot. The snapshot is swapped in with
#   one reference assignment: a request keeps the snapshot it started with until it ends.
# - Everything derived from the table that a request would otherwise recompute lives in the snapshot:
#   routers (compiled regexes, host dicts), per-route header operations as bytes, balancers.
# - The table is decoded lazily (edge/table.decode_table_lazy): virtual hosts stay encoded until a request names
#   one; its router plans and its routes' runtimes are built on that first use and kept for the generation, so
#   a worker's memory grows with the hosts it serves, not with the table (10,000 VirtualServices: ~25 MiB less).
# - Balancer state (active requests, outlier ejections) carries over to the next snapshot for clusters
#   whose endpoints are unchanged, keyed by cluster name and endpoint address.
# - A table that fails to decode is logged and skipped; the worker keeps serving the snapshot it has.
from __future__ import annotations

import sys
from typing import Callable

from edge.control import listener_key
from edge.table import (
    Cluster,
    FilterChain,
    Listener,
    Mirror,
    Route,
    RoutingTable,
    WeightedCluster,
    decode_table_lazy,
)
from workers.authz import Authorizer
from workers.balance import Balancer
from workers.headers import compile_rules
from workers.jwt import Authenticator
from workers.regex import Regex
from workers.route_policies import CompiledCors
from workers.router import Router
from workers.upstream import Circuit


class RouteRuntime:
    """What the proxy needs about one route, precomputed per table."""

    __slots__ = ("route", "request_ops", "response_ops", "destinations", "cumulative", "total_weight", "regex_rewrite", "timeout_ms", "cors", "mirrors")

    def __init__(self, route: Route):
        self.route = route
        self.request_ops, self.response_ops = compile_rules(route.headers)
        self.destinations = tuple(DestinationRuntime(wc) for wc in route.clusters)
        cumulative = []
        total = 0
        for wc in route.clusters:
            total += max(0, wc.weight)
            cumulative.append(total)
        self.cumulative = tuple(cumulative)
        self.total_weight = total
        rw = route.rewrite
        self.regex_rewrite = Regex(rw.regex) if rw is not None and rw.regex is not None else None
        self.timeout_ms = int(route.timeout_s * 1000)
        self.cors = CompiledCors(route.cors) if route.cors is not None else None
        self.mirrors: tuple[tuple[Mirror, "ClusterRuntime | None"], ...] = ()  # bound by TableSnapshot


class DestinationRuntime:
    __slots__ = ("wc", "request_ops", "response_ops", "host_rewrite", "cluster_runtime")

    def __init__(self, wc: WeightedCluster):
        self.wc = wc
        self.cluster_runtime: ClusterRuntime | None = None  # bound by TableSnapshot
        self.request_ops, self.response_ops = compile_rules(wc.headers)
        self.host_rewrite = wc.headers.authority.encode() if wc.headers is not None and wc.headers.authority else b""


class ClusterRuntime:
    __slots__ = ("cluster", "balancer", "circuit", "pool_key")

    def __init__(self, cluster: Cluster, previous: "ClusterRuntime | None", workers: int):
        self.cluster = cluster
        prior = previous.balancer if previous is not None and previous.cluster.lb_policy == cluster.lb_policy else None
        self.balancer = Balancer(cluster.endpoints, cluster.lb_policy, cluster.outlier, previous=prior)
        # Open connections keep pointing at their circuit, so it outlives table generations.
        self.circuit = previous.circuit if previous is not None else Circuit()
        self.circuit.configure(cluster.pool, workers)
        self.pool_key = (cluster.name, cluster.tls)

    def origination(self, endpoint, host: bytes) -> tuple[tuple, str | None]:
        """The pool key of a connection to `endpoint` carrying `host`, and the SNI it originates TLS with: the
        DestinationRule's tls.sni, else the Host sent upstream (Envoy's auto SNI, after any authority rewrite).
        With auto SNI a connection verified for one Host carries only that Host (Envoy too), so the SNI is part
        of the key."""
        key = (endpoint.address, endpoint.port) + self.pool_key
        tls = self.cluster.tls
        if tls is None:
            return key, None
        if tls.sni:
            return key, tls.sni
        name = host.decode("latin-1")
        server_name = name if name.endswith("]") else name.rsplit(":", 1)[0]
        return key + (server_name,), server_name


class ChainRuntime:
    __slots__ = ("chain", "router")

    def __init__(self, chain: FilterChain):
        self.chain = chain
        self.router = Router(chain.route_config) if chain.route_config is not None else None


class ListenerRuntime:
    __slots__ = ("listener", "key", "router", "chains")

    def __init__(self, listener: Listener):
        self.listener = listener
        self.key = listener_key(listener.bind, listener.port)
        self.router = Router(listener.route_config) if listener.route_config is not None else None
        self.chains = tuple(ChainRuntime(c) for c in listener.filter_chains)


class TableSnapshot:
    __slots__ = ("generation", "table", "options", "listeners", "clusters", "routes", "server_header", "authn", "authz")

    def __init__(self, generation: int, table: RoutingTable, previous: "TableSnapshot | None"):
        self.generation = generation
        self.table = table
        self.options = table.options
        self.server_header = table.options.server_header.encode()
        # RequestAuthentication's rules with their JWKS parsed into keys, once per generation (workers/jwt.py).
        self.authn = Authenticator(table.jwt_rules) if table.jwt_rules else None
        self.authz = Authorizer(table.authorization) if table.authorization is not None else None  # workers/authz.py
        self.listeners = {listener_key(l.bind, l.port): ListenerRuntime(l) for l in table.listeners}
        old_clusters = previous.clusters if previous is not None else {}
        self.clusters = {name: ClusterRuntime(c, old_clusters.get(name), table.options.workers) for name, c in table.clusters.items()}
        # By id of the Route (alive as long as the router's decoded virtual host, i.e. this snapshot): built the
        # first time a request takes the route, like the router's plans of its virtual host.
        self.routes: dict[int, RouteRuntime] = {}

    def _route_runtime(self, route: Route) -> RouteRuntime:
        rt = RouteRuntime(route)
        for dest in rt.destinations:
            dest.cluster_runtime = self.clusters.get(dest.wc.cluster) if dest.wc.cluster else None
        rt.mirrors = tuple((m, self.clusters.get(m.cluster)) for m in route.mirrors)
        return rt

    def route_runtime(self, route: Route) -> RouteRuntime:
        rt = self.routes.get(id(route))
        if rt is None:  # the route's first request in this generation
            rt = self.routes[id(route)] = self._route_runtime(route)
        return rt


class TableView:
    """Follows the table segment; `current()` is the per-request check."""

    def __init__(self, reader, on_change: Callable[[TableSnapshot], None] | None = None, log: Callable[[str], None] | None = None):
        self.reader = reader
        self.snapshot: TableSnapshot | None = None
        self.generation = -1
        self.on_change = on_change
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def current(self) -> TableSnapshot | None:
        if self.reader.current_generation() != self.generation:
            self.refresh()
        return self.snapshot

    def refresh(self) -> None:
        try:
            generation, payload = self.reader.read()
        except Exception as exc:  # the boundary with shared memory: keep serving what we have
            self.log(f"edge worker: cannot read the table: {exc}")
            return
        if generation == self.generation:
            return
        try:
            table = decode_table_lazy(payload)
            snapshot = TableSnapshot(generation, table, self.snapshot)
        except Exception as exc:  # a table we cannot use must not take the worker down
            self.log(f"edge worker: table generation {generation} rejected: {exc}")
            self.generation = generation
            return
        self.snapshot = snapshot
        self.generation = generation
        if self.on_change is not None:
            self.on_change(snapshot)


