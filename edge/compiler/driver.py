# The driver: runs the compiler's stages in order over one set of resources (see __init__.py for what each
# stage does and the rules it keeps) and turns what they built into the RoutingTable.
#
# Rules:
# - Only orchestration and stage 1 (index) live here; each stage's logic is in its module, and the state a
#   stage shares with a later one is passed to it explicitly (the services and clusters, the bound
#   VirtualServices), never read from a global.
# - Resources are ordered by creation before any stage sees them, so the table depends only on the set of
#   resources, never on the order of the input list.
# - Errors fail the compile (CompileResult.table is None) once every stage has run, so that one run reports
#   them all; warnings never do.
from __future__ import annotations

import gc
from datetime import datetime

import msgspec

from edge import istio, table
from edge.compiler.authorization import PolicyScope, compile_authorization
from edge.compiler.authentication import compile_authentication
from edge.compiler.admission import validate_destination_rule, validate_gateway, validate_service_entry
from edge.compiler.clusters import ClusterBuilder
from edge.compiler.gateway_api import remap as remap_gateway_api
from edge.compiler.gateway_api import translate as translate_gateway_api
from edge.compiler.ingress import derive as derive_from_ingresses
from edge.compiler.listeners import ListenerBuilder
from edge.compiler.model import DEFAULT_RETRY, CompileOptions, CompileResult
from edge.compiler.report import Report, Where
from edge.compiler.routes import RouteBuilder
from edge.compiler.servers import check_bindings, merge_servers, select_gateways
from edge.compiler.virtual_services import prepare_virtual_services
from edge.errors import ERROR, WARNING
from edge.loader import load_paths, refine_lines


def load_and_compile(paths: list[str], options: CompileOptions | None = None, cache=None):
    """Files → (LoadResult, CompileResult). A failed load still compiles what loaded, for more diagnostics,
    but never yields a table. Compile diagnostics get the exact line of their `$.spec…` path (the pure
    compile only knows the line where each resource starts)."""
    loaded = load_paths(paths, cache)
    result = compile_resources(loaded.resources, options)
    if not loaded.ok:
        result.table = None
    result.diagnostics = refine_lines(result.diagnostics)
    return loaded, result


def compile_resources(resources: list[istio.Resource], options: CompileOptions | None = None) -> CompileResult:
    # The compile allocates hundreds of thousands of long-lived, acyclic objects; the cyclic collector would
    # rescan them over and over (more than half the time for 10,000 VirtualServices). Paused, then restored.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _Compiler(options or CompileOptions()).run(resources)
    finally:
        if paused:
            gc.enable()


class _Compiler:
    def __init__(self, options: CompileOptions):
        self.options = options
        self.domain = options.cluster_domain
        self.labels = dict(options.gateway_labels)
        self.report = Report()
        self.gateways: list[istio.Resource] = []
        self.virtual_services: list[istio.Resource] = []
        self.destination_rules: list[istio.Resource] = []
        self.service_entries: list[istio.Resource] = []
        # Every kind's resources by its key (edge/kinds.py), creation-ordered and deduplicated: the Istio
        # networking lists above are four of them; front stages (other inputs) take theirs from here.
        self.by_kind: dict[str, list[istio.Resource]] = {
            "Gateway": self.gateways,
            "VirtualService": self.virtual_services,
            "DestinationRule": self.destination_rules,
            "ServiceEntry": self.service_entries,
        }
        self.invalid_servers: set[tuple[str, int]] = set()  # (gateway key, server index) admission refused

    def run(self, resources: list[istio.Resource]) -> CompileResult:
        report = self.report
        self._index(resources)
        ingress = self._ingresses()
        # Front stage: Gateway API objects become Istio Gateways and VirtualServices, admitted like any other.
        gateway_api = translate_gateway_api(report, self.by_kind, self.options.gateway_classes, self.domain)
        self.gateways.extend(gateway_api.gateways)
        self.virtual_services.extend(gateway_api.virtual_services)
        self._admit()
        clusters = ClusterBuilder(report, self.domain)
        clusters.index_services(self.service_entries)
        clusters.merge_destination_rules(self.destination_rules)
        roots, bound = prepare_virtual_services(report, self.virtual_services, self.domain)
        selected = select_gateways(report, self.gateways, self.labels)
        plans = merge_servers(report, selected, self.invalid_servers)
        builder = ListenerBuilder(report, clusters, RouteBuilder(report, self.labels, clusters), bound)
        listeners = [listener for plan in plans if (listener := builder.build_listener(plan)) is not None]
        check_bindings(report, roots, {g.key: g for g in self.gateways}, selected)
        scope = PolicyScope(self.labels, self.options.gateway_namespace, self.options.root_namespace)
        authorization = compile_authorization(report, self.by_kind, scope, has_tcp=any(_serves_tcp(l) for l in listeners))
        jwt_rules = compile_authentication(report, self.by_kind, scope.applies)
        report.items[:] = remap_gateway_api(ingress.attribute(report.items), gateway_api.origins)
        if report.errors:
            return CompileResult(table=None, diagnostics=report.items)
        listeners.sort(key=lambda l: (l.port, l.bind))
        options = msgspec.structs.replace(self.options.table_options, cluster_domain=self.domain)
        routing = table.RoutingTable(
            options=options,
            listeners=tuple(listeners),
            clusters=dict(sorted(clusters.clusters.items())),
            default_retry=DEFAULT_RETRY,
            authorization=authorization,
            jwt_rules=jwt_rules,
        )
        return CompileResult(table=routing, diagnostics=report.items)

    def _index(self, resources: list[istio.Resource]) -> None:
        """Stage 1: resources sorted by creation, duplicates (kind, namespace/name) rejected, kinds bucketed."""
        keyed = []
        for res in resources:
            stamp = None
            if res.creation_timestamp:
                stamp = _parse_timestamp(res.creation_timestamp)
                if stamp is None:
                    self.report.add(WARNING, res, "$.metadata.creationTimestamp", f"invalid timestamp {res.creation_timestamp!r}; load order is used instead")
            # Go's zero time sorts first, so resources without a timestamp come first, in load order.
            key = (stamp if stamp is not None else float("-inf"), 0 if stamp is not None else res.order, res.name, res.namespace, res.kind)
            keyed.append((key, res))
        keyed.sort(key=lambda kr: kr[0])
        seen: dict[tuple[str, str], istio.Resource] = {}
        for _, res in keyed:
            first = seen.get((res.kind, res.key))
            if first is not None:
                a, b = sorted((first, res), key=lambda r: (r.file, r.line))
                self.report.add(ERROR, b, "$.metadata.name", f"{res.kind} {res.key} is defined more than once (also at {a.file}:{a.line})")
                continue
            seen[(res.kind, res.key)] = res
            self.by_kind.setdefault(res.kind, []).append(res)

    def _ingresses(self):
        """Front stage: Ingresses → derived Gateways and VirtualServices (ingress.py), ahead of the written ones
        (they have no creation time, as in Istio)."""
        o = self.options
        derived = derive_from_ingresses(
            self.report, self.by_kind.get("Ingress", []), self.by_kind.get("IngressClass", []), self.service_entries, self.domain,
            o.ingress_class, o.ingress_controller_mode,
        )
        self.gateways[:0] = derived.gateways
        self.virtual_services[:0] = derived.virtual_services
        return derived

    def _admit(self) -> None:
        """Stage 1 (continued): each Gateway, ServiceEntry and DestinationRule validated on its own; the
        VirtualServices are validated where they are prepared (virtual_services.py)."""
        for res in self.gateways:
            for index in validate_gateway(Where(self.report, res), res.spec):
                self.invalid_servers.add((res.key, index))
        for res in self.service_entries:
            validate_service_entry(Where(self.report, res), res.spec)
        for res in self.destination_rules:
            validate_destination_rule(Where(self.report, res), res.spec)


def _serves_tcp(listener: table.Listener) -> bool:
    """A listener with a TCP, TLS passthrough or terminated-TCP side (where Istio builds TCP RBAC filters)."""
    return listener.tcp is not None or any(chain.route_config is None for chain in listener.filter_chains)


def _parse_timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
