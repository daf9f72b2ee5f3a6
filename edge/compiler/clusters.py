# Clusters: the registry of ServiceEntry hosts, DestinationRules merged per host, and one cluster per
# (port, subset, host) a route sends to (pilot/pkg/networking/core/cluster_builder.go,
# cluster_traffic_policy.go; pilot/pkg/model/destination_rule.go for the merge).
#
# Rules:
# - The upstream protocol is decided here, once per cluster (upstream_protocol; cluster_builder.go
#   setUpstreamProtocol, shouldH2Upgrade, applyConnectionPool): HTTP/2 when the ServiceEntry port's protocol is
#   HTTP2, GRPC or GRPC-WEB (ServiceEntry ports take their protocol from `protocol` alone: Istio's convertPort
#   parses it, port-name prefixes are a Kubernetes Service convention); a DestinationRule h2UpgradePolicy UPGRADE
#   upgrades an HTTP/1.1 port (DO_NOT_UPGRADE and DEFAULT keep it: the mesh default is DO_NOT_UPGRADE);
#   useClientProtocol (Envoy's use_downstream_protocol_config) wins over the upgrade policy, and an HTTP/2 port
#   wins over it (setUpstreamProtocol runs after the traffic policy and sets the HTTP/2 options).
# - A destination → ServiceEntry port (given, else the only port, else the listener's port) →
#   `outbound|<port>|<subset>|<host>`. An unknown host, port or subset is a warning and the cluster name ""
#   (Envoy answers 503 NC), as Istio still serves the route.
# - DestinationRule policy: the top level, then the subset per top-level field, each replaced wholesale by
#   its portLevelSettings entry for the port. Per host the first DestinationRule's policy wins and subsets
#   are concatenated, the first definition of a name winning; wildcard hosts: the most specific one.
# - The first ServiceEntry defining a host is used (creation order); later ones are warned.
# - Clusters are built on first use and cached, so the table holds only clusters something sends to.
from __future__ import annotations

from typing import Any

import msgspec

from edge import istio, table, wire
from edge.compiler.hosts import resolve_shortname, selector_matches
from edge.compiler.model import PPM_PER_PERCENT, MergedDR, Rule, Service, ppm
from edge.compiler.report import Report, Where
from edge.errors import WARNING

# LoadBalancerSettings.simple → table lb_policy (cluster_traffic_policy.go applyLoadBalancer).
LB_POLICIES = {
    None: "LEAST_REQUEST",
    "UNSPECIFIED": "LEAST_REQUEST",
    "LEAST_CONN": "LEAST_REQUEST",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
    "PASSTHROUGH": "LEAST_REQUEST",  # original destination does not exist here; warned
}

# ServiceEntry.resolution → Cluster.resolution (NONE at a gateway is EDS: only the listed endpoints).
RESOLUTIONS = {"STATIC": "STATIC", "NONE": "STATIC", "DNS": "DNS", "DNS_ROUND_ROBIN": "DNS_ROUND_ROBIN", "DYNAMIC_DNS": "STATIC"}


class ClusterBuilder:
    """The registry (ServiceEntry hosts), the merged DestinationRules, and the clusters built on demand: a
    cluster exists only when some route or tcp proxy sends to it."""

    def __init__(self, report: Report, domain: str):
        self.report = report
        self.domain = domain
        self.services: dict[str, Service] = {}
        self.dr_exact: dict[str, MergedDR] = {}
        self.dr_wildcard: list[tuple[str, MergedDR]] = []
        self.clusters: dict[str, table.Cluster] = {}
        self.resolved: dict[tuple, str] = {}  # (host, subset, given port, listener port) → cluster name
        self.hashes: dict[tuple, table.HashPolicy | None] = {}

    def index_services(self, service_entries: list[istio.Resource]) -> None:
        for res in service_entries:
            for j, h in enumerate(res.spec.hosts):
                first = self.services.get(h)
                if first is not None:
                    self.report.add(WARNING, res, f"$.spec.hosts[{j}]", f"host {h} is already defined by ServiceEntry {first.res.key} ({first.res.file}:{first.res.line}), which is used")
                    continue
                self.services[h] = Service(res=res, spec=res.spec, host=h)

    def merge_destination_rules(self, destination_rules: list[istio.Resource]) -> None:
        """mergeDestinationRule: per host, the first top-level policy wins and subsets are concatenated, the
        first definition of a name winning."""
        for res in destination_rules:
            dr: istio.DestinationRule = res.spec
            host = resolve_shortname(dr.host, res.namespace, self.domain)
            merged = self.dr_exact.get(host) if not host.startswith("*") else next((m for h, m in self.dr_wildcard if h == host), None)
            if merged is None:
                merged = MergedDR(res=res, host=host, traffic_policy=dr.traffic_policy, subsets={})
                if host.startswith("*"):
                    self.dr_wildcard.append((host, merged))
                else:
                    self.dr_exact[host] = merged
            elif merged.traffic_policy is None:
                merged.traffic_policy = dr.traffic_policy
            for j, subset in enumerate(dr.subsets):
                if subset.name in merged.subsets and merged.res is not res:
                    self.report.add(WARNING, res, f"$.spec.subsets[{j}]", f"subset {subset.name} of host {host} is already defined by DestinationRule {merged.res.key}, which is used")
                    continue
                merged.subsets.setdefault(subset.name, subset)
        # Most specific wildcard first (longest name), as MostSpecificHostMatch picks.
        self.dr_wildcard.sort(key=lambda hm: (-len(hm[0]), hm[0]))

    def _destination_rule_for(self, host: str) -> MergedDR | None:
        merged = self.dr_exact.get(host)
        if merged is not None:
            return merged
        for pattern, merged in self.dr_wildcard:
            if host.endswith(pattern[1:]) and (host[:1] != "*" or len(host) >= len(pattern)):
                return merged
        return None

    def cluster_for(self, res: istio.Resource, path: str, d: istio.Destination, listen_port: int) -> str:
        """GetDestinationCluster + the registry lookup: "" (503 NC) when host, port or subset do not exist."""
        key = (d.host, d.subset, d.port.number if d.port is not None else 0, listen_port)
        name = self.resolved.get(key)
        if name is not None:
            return name
        service = self.services.get(d.host)
        if service is None:
            self.report.add(WARNING, res, path + ".host", f"destination host {d.host} is not defined by any ServiceEntry: requests routed to it answer 503 (NC)")
            return ""
        se = service.spec
        if d.port is not None:
            port = d.port.number
        elif len(se.ports) == 1:
            port = se.ports[0].number
        else:
            port = listen_port
        service_port = None
        for p in se.ports:
            if p.number == port:
                service_port = p
                break
        if service_port is None:
            known = ", ".join(str(p.number) for p in se.ports) or "none"
            how = "given" if d.port is not None else "taken from the Gateway server port, since the ServiceEntry does not have exactly one port"
            self.report.add(WARNING, res, path + (".port" if d.port is not None else ".host"), f"port {port} ({how}) is not a port of ServiceEntry {service.res.key} (ports: {known}): requests answer 503 (NC)")
            return ""
        dr = self._destination_rule_for(d.host)
        subset = None
        if d.subset:
            subset = dr.subsets.get(d.subset) if dr is not None else None
            if subset is None:
                where = f"DestinationRule {dr.res.key}" if dr is not None else "any DestinationRule"
                self.report.add(WARNING, res, path + ".subset", f"subset {d.subset} of host {d.host} is not defined by {where}: requests answer 503 (NC)")
                return ""
        name = f"outbound|{port}|{d.subset}|{d.host}"
        if name not in self.clusters:
            self.clusters[name] = self._build_cluster(name, service, service_port, dr, subset)
        self.resolved[key] = name
        return name

    def _build_cluster(self, name: str, service: Service, sp: istio.ServicePort, dr: MergedDR | None, subset: istio.Subset | None) -> table.Cluster:
        se = service.spec
        w = Where(self.report, service.res)
        policy = _effective_policy(dr.traffic_policy if dr else None, subset.traffic_policy if subset else None, sp.number)
        lb = policy.get("load_balancer")
        hash_policy = _hash_policy(lb.consistent_hash) if lb is not None and lb.consistent_hash is not None else None
        lb_policy = "CONSISTENT_HASH" if hash_policy is not None else LB_POLICIES.get(lb.simple if lb is not None else None, "LEAST_REQUEST")
        endpoints = _endpoints(se, sp, service.host, subset)
        if not endpoints:
            why = "its resolution is NONE and a gateway has no original destination" if se.resolution == "NONE" else (
                f"no endpoint has the labels of subset {subset.name}" if subset is not None and se.endpoints else "it lists no endpoints"
            )
            if se.resolution != "DYNAMIC_DNS":
                w.warn(f"cluster {name} has no endpoints ({why}): requests answer 503 (UH)", "$.spec.endpoints")
        upstream_tls = _upstream_tls(policy.get("tls"), se)
        pool = policy.get("connection_pool")
        return table.Cluster(
            name=name,
            service=service.host,
            port=sp.number,
            subset=subset.name if subset is not None else "",
            protocol=sp.protocol.upper(),
            upstream_protocol=upstream_protocol(sp.protocol, pool.http if pool is not None else None),
            resolution=RESOLUTIONS[se.resolution],
            endpoints=endpoints,
            lb_policy=lb_policy,
            hash_policy=hash_policy,
            pool=_connection_pool(pool),
            outlier=_outlier(policy.get("outlier_detection")),
            tls=upstream_tls,
        )

    def weighted_clusters(self, rule: Rule, port: int):
        """applyHTTPRouteDestination: one destination takes everything; with several, weight 0 is dropped."""
        dests = rule.http.route
        single = len(dests) == 1
        route_authority = bool(rule.headers is not None and rule.headers.authority)
        out = []
        hashed = False
        for j, d in enumerate(dests):
            if not single and d.weight == 0:
                continue
            cluster = self.cluster_for(rule.owner, f"{rule.path}.route[{j}].destination", d.destination, port)
            headers = rule.dest_headers[j]
            if single and headers is not None and headers.authority and route_authority:
                # With one destination Istio puts the route's authority first and the destination's only
                # applies when the route has none.
                headers = msgspec.structs.replace(headers, authority="")
            hash_policy = self._hash_for_destination(d.destination)
            if single and hash_policy is not None:
                hashed = True
            out.append(
                table.WeightedCluster(
                    cluster=cluster,
                    weight=1 if single else d.weight,
                    headers=headers,
                    host=d.destination.host,
                    hash_policy=hash_policy,
                )
            )
        return tuple(out), sum(c.weight for c in out), hashed

    def mirrors(self, rule: Rule, port: int) -> tuple[table.Mirror, ...]:
        """MirrorPercent / MirrorPercentByPolicy: absent → 100 %, explicit 0 → no mirror."""
        h = rule.http
        out = []
        if h.mirror is not None:
            if h.mirror_percentage is not None:
                share = ppm(h.mirror_percentage)
            elif h.mirror_percent is not None:
                share = h.mirror_percent * PPM_PER_PERCENT
            else:
                share = 100 * PPM_PER_PERCENT
            if share > 0:
                cluster = self.cluster_for(rule.owner, f"{rule.path}.mirror", h.mirror, port)
                if cluster:
                    out.append(table.Mirror(cluster=cluster, ppm=share, host=h.mirror.host))
        for j, mp in enumerate(h.mirrors):
            share = ppm(mp.percentage) if mp.percentage is not None else 100 * PPM_PER_PERCENT
            if share > 0:
                cluster = self.cluster_for(rule.owner, f"{rule.path}.mirrors[{j}].destination", mp.destination, port)
                if cluster:
                    out.append(table.Mirror(cluster=cluster, ppm=share, host=mp.destination.host))
        return tuple(out)

    def _hash_for_destination(self, d: istio.Destination) -> table.HashPolicy | None:
        key = (d.host, d.subset, d.port.number if d.port is not None else 0)
        if key not in self.hashes:
            self.hashes[key] = self._find_hash(d)
        return self.hashes[key]

    def _find_hash(self, d: istio.Destination) -> table.HashPolicy | None:
        """HashForHTTPDestination: subset port-level, subset, DR port-level (only for an explicit port), DR."""
        dr = self._destination_rule_for(d.host)
        if dr is None or d.host not in self.services:
            return None
        tp = dr.traffic_policy
        chosen = tp.load_balancer.consistent_hash if tp is not None and tp.load_balancer is not None else None
        pls = _port_level_hash(d, tp)
        subset_hash = subset_pls = None
        subset = dr.subsets.get(d.subset) if d.subset else None
        if subset is not None and subset.traffic_policy is not None:
            stp = subset.traffic_policy
            subset_hash = stp.load_balancer.consistent_hash if stp.load_balancer is not None else None
            subset_pls = _port_level_hash(d, stp)
        for candidate in (subset_pls, subset_hash, pls):
            if candidate is not None:
                chosen = candidate
                break
        return _hash_policy(chosen) if chosen is not None else None


def _port_level_hash(d: istio.Destination, tp: istio.TrafficPolicy | None):
    if d.port is None or tp is None:
        return None
    for pls in tp.port_level_settings:
        if pls.port is not None and pls.port.number == d.port.number:
            return pls.load_balancer.consistent_hash if pls.load_balancer is not None else None
    return None


def _hash_policy(ch: istio.ConsistentHashLB) -> table.HashPolicy:
    if ch.http_header_name is not None:
        return table.HashPolicy(kind="header", name=ch.http_header_name.lower())
    if ch.http_cookie is not None:
        c = ch.http_cookie
        return table.HashPolicy(
            kind="cookie",
            name=c.name,
            cookie_path=c.path,
            cookie_ttl_s=float(c.ttl) if c.ttl is not None else -1.0,
            cookie_attributes=tuple((a.name, a.value) for a in c.attributes),
        )
    if ch.use_source_ip:
        return table.HashPolicy(kind="source_ip")
    return table.HashPolicy(kind="query", name=ch.http_query_parameter_name or "")


_POLICY_FIELDS = ("connection_pool", "outlier_detection", "load_balancer", "tls")


def _effective_policy(top: istio.TrafficPolicy | None, sub: istio.TrafficPolicy | None, port: int) -> dict[str, Any]:
    """MergeSubsetTrafficPolicy: each side first replaced wholesale by its portLevelSettings entry for the
    port; then the subset overrides per top-level field (wholesale when its port-level entry applied)."""

    def for_port(policy: istio.TrafficPolicy | None) -> tuple[dict[str, Any] | None, bool]:
        if policy is None:
            return None, False
        for pls in policy.port_level_settings:
            if pls.port is not None and pls.port.number == port:
                return {f: getattr(pls, f) for f in _POLICY_FIELDS}, True
        return {f: getattr(policy, f) for f in _POLICY_FIELDS}, False

    base, _ = for_port(top)
    override, port_level = for_port(sub)
    if override is None:
        return base or {}
    if base is None:
        return override
    merged = dict(base)
    for f in _POLICY_FIELDS:
        if override[f] is not None or port_level:
            merged[f] = override[f]
    return merged


def _endpoints(se: istio.ServiceEntry, sp: istio.ServicePort, host: str, subset: istio.Subset | None) -> tuple[table.Endpoint, ...]:
    """Endpoint port: ports[<service port name>], else targetPort, else the port number. Weight 0 → 1."""
    default_port = sp.target_port or sp.number
    if se.resolution in ("NONE", "DYNAMIC_DNS"):
        return ()
    if se.resolution in ("DNS", "DNS_ROUND_ROBIN") and not se.endpoints:
        if subset is not None and subset.labels:
            return ()
        return (table.Endpoint(address=host, port=default_port),)
    out = []
    for ep in se.endpoints:
        if subset is not None and not selector_matches(subset.labels, ep.labels):
            continue
        unix = ep.address.startswith("unix://")
        out.append(
            table.Endpoint(
                address=ep.address,
                port=0 if unix else ep.ports.get(sp.name, default_port),
                weight=ep.weight or 1,
                labels=dict(sorted(ep.labels.items())),
            )
        )
    return tuple(out)


# ServicePort protocols that are HTTP/2 towards the endpoints (protocol.Instance.IsHTTP2), and those that are
# HTTP at all (IsHTTP: an h2UpgradePolicy applies to them; "" is Istio's unsupported/sniffed protocol, upgraded
# only by an explicit UPGRADE).
H2_PORT_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})


def upstream_protocol(port_protocol: str, http: istio.HTTPSettings | None) -> str:
    """The protocol a cluster speaks to its endpoints (see the module rules)."""
    if port_protocol.upper() in H2_PORT_PROTOCOLS:
        return table.UPSTREAM_HTTP2
    if http is not None and http.use_client_protocol:
        return table.UPSTREAM_CLIENT
    if http is not None and http.h2_upgrade_policy == "UPGRADE":
        return table.UPSTREAM_HTTP2
    return table.UPSTREAM_HTTP1


H2_KEEPALIVE_TIMEOUT_S = 20.0  # http2KeepAlive without a timeout: how long a PING may go unanswered (ours)


def _connection_pool(pool: istio.ConnectionPoolSettings | None) -> table.ConnectionPool:
    """applyConnectionPool: unset or zero thresholds stay at 2^32-1; connect timeout 10 s."""
    if pool is None:
        return table.ConnectionPool()
    t, h = pool.tcp, pool.http
    kw: dict[str, Any] = {}
    if t is not None:
        if t.max_connections > 0:
            kw["max_connections"] = t.max_connections
        if t.connect_timeout is not None:
            kw["connect_timeout_s"] = float(t.connect_timeout)
        if t.tcp_keepalive is not None:
            k = t.tcp_keepalive
            kw["tcp_keepalive"] = (k.probes, float(k.time or 0.0), float(k.interval or 0.0))
        if t.max_connection_duration is not None:
            kw["max_connection_duration_s"] = float(t.max_connection_duration)
        if t.idle_timeout is not None:
            kw["tcp_idle_timeout_s"] = float(t.idle_timeout)
    idle = None
    if h is not None:
        if h.http1_max_pending_requests > 0:
            kw["http1_max_pending_requests"] = h.http1_max_pending_requests
        if h.http2_max_requests > 0:
            kw["http2_max_requests"] = h.http2_max_requests
        if h.max_requests_per_connection > 0:
            kw["max_requests_per_connection"] = h.max_requests_per_connection
        if h.max_retries > 0:
            kw["max_retries"] = h.max_retries
        idle = h.idle_timeout
        if h.max_concurrent_streams > 0:
            kw["max_concurrent_streams"] = h.max_concurrent_streams
        k2 = h.http2_keep_alive
        if k2 is not None and k2.interval is not None and float(k2.interval) > 0:
            kw["h2_keepalive"] = (float(k2.interval), float(k2.timeout) if k2.timeout is not None and float(k2.timeout) > 0 else H2_KEEPALIVE_TIMEOUT_S)
    if idle is None and t is not None:
        idle = t.idle_timeout
    if idle is not None:
        kw["idle_timeout_s"] = float(idle)
    return table.ConnectionPool(**kw)


def _outlier(o: istio.OutlierDetection | None) -> table.OutlierPolicy | None:
    """applyOutlierDetection with Envoy's defaults: 5 consecutive 5xx, 10 s interval, 30 s base, 10 %."""
    if o is None:
        return None
    return table.OutlierPolicy(
        consecutive_5xx=o.consecutive_5xx_errors if o.consecutive_5xx_errors is not None else 5,
        consecutive_gateway_errors=o.consecutive_gateway_errors or 0,
        interval_s=float(o.interval) if o.interval is not None else 10.0,
        base_ejection_time_s=float(o.base_ejection_time) if o.base_ejection_time is not None else 30.0,
        max_ejection_percent=o.max_ejection_percent if o.max_ejection_percent > 0 else 10,
        min_health_percent=o.min_health_percent,
        error_codes=tuple(o.outlier_detection_http_error_codes),
    )


def _upstream_tls(tls: istio.ClientTLSSettings | None, se: istio.ServiceEntry) -> table.UpstreamTLS | None:
    if tls is None or tls.mode not in ("SIMPLE", "MUTUAL"):
        return None  # DISABLE, or ISTIO_MUTUAL (warned): plain text
    return table.UpstreamTLS(
        mode=tls.mode,
        client_cert_file=tls.client_certificate,
        private_key_file=tls.private_key,
        ca_file=tls.ca_certificates,
        credential_name=wire.credential_folder(tls.credential_name),
        subject_alt_names=tuple(tls.subject_alt_names or se.subject_alt_names),
        sni=tls.sni,
        insecure_skip_verify=bool(tls.insecure_skip_verify),
        crl_file=tls.ca_crl,
    )
