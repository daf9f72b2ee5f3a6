# Admission: each resource validated on its own, as Istio's webhook does before anything is bound
# (pkg/config/validation/validation.go: ValidateGateway, ValidateServiceEntry, ValidateDestinationRule,
# ValidateVirtualService and the helpers they call), plus the single-resource parts of `istioctl analyze`.
#
# Rules:
# - Plain functions of a Where (the resource and the `$.spec…` path being checked) and the value; they only
#   report. Nothing here reads another resource: what needs several (bindings, destinations that resolve)
#   is checked by the stage that joins them.
# - Messages are Istio's own where Istio has one, so that a search finds the rule; ours say what happens
#   here instead (warnings for what is accepted but not served the same way).
# - The order of the checks is Istio's, so the diagnostics come in the order Istio would give them.
# - The HTTP rules of a VirtualService are checked where they are translated (http_rules.py), as Istio's
#   validateHTTPRoute checks what route.go then translates; what admission checks of them before
#   translation (delegate combinations, gateway names, JWT matches) is here.
from __future__ import annotations

import ipaddress

import msgspec

from edge import istio, wire
from edge.compiler.hosts import (
    gateway_host_problem,
    host_matches,
    host_subset_of,
    is_dns1123_label,
    is_ip,
    validate_fqdn,
    validate_wildcard_domain,
)
from edge.compiler.model import HTTP_PROTOCOLS, JWT_CLAIM_PREFIX, MESH_GATEWAY, TCP_PROTOCOLS, TLS_PROTOCOLS
from edge.compiler.report import Where

CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA", "DES-CBC3-SHA",
    }
)


def duration_problem(seconds: float) -> str | None:
    """agent.ValidateDuration: at least 1 ms, millisecond precision."""
    if seconds < 0.001 - 1e-12:
        return "duration must be greater than 1ms"
    if abs(seconds * 1000 - round(seconds * 1000)) > 1e-6:
        return "only durations to ms precision are supported"
    return None


def validate_gateway(w: Where, spec: istio.Gateway) -> list[int]:
    """The indexes of the servers that have an error: they are left out of the listeners, the others served."""
    name = w.res.name
    if not is_dns1123_label(name):
        w.error(f"invalid gateway name: {name!r} (a DNS-1123 label: lowercase letters, digits and '-')", "")
    invalid = []
    names: dict[str, int] = {}
    for i, s in enumerate(spec.servers):
        sw = w.at(f".servers[{i}]")
        _validate_server(sw, s)
        if s.port.name in names:
            sw.error(f"port names in servers must be unique: duplicate name {s.port.name} (also servers[{names[s.port.name]}])", ".port.name")
        else:
            names[s.port.name] = i
        if sw.failed:
            invalid.append(i)
    return invalid


def _validate_server(w: Where, s: istio.Server) -> None:
    for j, h in enumerate(s.hosts):
        problem = gateway_host_problem(h)
        if problem:
            w.error(problem, f".hosts[{j}]")
    proto = s.port.protocol.upper()
    unix = s.bind.startswith("unix://")
    if proto not in HTTP_PROTOCOLS | TLS_PROTOCOLS | TCP_PROTOCOLS:
        w.error(f"invalid protocol {s.port.protocol!r}, supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS", ".port.protocol")
    if (s.port.number > 0 or not unix) and not 1 <= s.port.number <= 65535:
        w.error(f"port number {s.port.number} must be in the range 1..65535", ".port.number")
    if s.port.target_port:
        w.error("targetPort has no impact on Gateways", ".port.targetPort")
    if not s.port.name:
        w.error("port name must be set", ".port.name")
    if unix:
        path = s.bind[len("unix://") :]
        if not path or not (path.startswith("@") or (path.startswith("/") and not path.endswith("/"))):
            w.error(f"{path} is not an absolute path to a file", ".bind")
        if s.port.number != 0:
            w.error("port number must be 0 for unix domain socket", ".port.number")
    elif s.bind and not is_ip(s.bind):
        w.error(f"{s.bind} is not a valid IP", ".bind")
    if s.default_endpoint:
        w.warn("defaultEndpoint is not implemented (in Istio either); ignored", ".defaultEndpoint")
    tls = s.tls
    if proto in TLS_PROTOCOLS and tls is None:
        w.error("server must have TLS settings for HTTPS/TLS protocols", ".tls")
    if tls is None:
        return
    tw = w.at(".tls")
    if proto in HTTP_PROTOCOLS:
        if tls.mode != "PASSTHROUGH" or tls.ca_certificates or tls.private_key or tls.server_certificate:
            tw.error("server cannot have TLS settings for plain text HTTP ports (only httpsRedirect)")
        return
    if proto in TCP_PROTOCOLS:
        tw.error("server cannot have TLS settings for non HTTPS/TLS ports")
        return
    if tls.https_redirect:
        tw.warn("tls.httpsRedirect should only be used with http servers", ".httpsRedirect")
    _validate_server_tls(tw, tls)


def _validate_server_tls(w: Where, tls: istio.ServerTLSSettings) -> None:
    mode = tls.mode
    has_certs = bool(
        tls.server_certificate or tls.private_key or tls.ca_certificates or tls.ca_crl or tls.tls_certificates
        or tls.credential_name or tls.credential_names
    )
    if mode == "AUTO_PASSTHROUGH":
        w.error("AUTO_PASSTHROUGH is not supported: it routes by SNI names of the form outbound_.<port>_.<subset>_.<host> that only mesh clients send; use PASSTHROUGH with VirtualService tls routes", ".mode")
        return
    if mode == "ISTIO_MUTUAL":
        if has_certs:
            w.error("ISTIO_MUTUAL TLS cannot have associated certificates, keys or credentials", ".mode")
        return
    if mode == "PASSTHROUGH":
        if has_certs:
            w.warn("tls mode is PASSTHROUGH (the default when mode is not set): the certificates are not used; set mode: SIMPLE to terminate TLS", ".mode")
        return
    sources = sum(
        (
            bool(tls.server_certificate and tls.private_key),
            bool(tls.credential_name),
            bool(tls.credential_names),
            bool(tls.tls_certificates),
        )
    )
    if sources > 1:
        w.error("only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates should be specified")
    if tls.min_protocol_version in ("TLSV1_0", "TLSV1_1") and not tls.cipher_suites:
        w.warn("TLS versions below TLSV1_2 need compatible cipherSuites set: the defaults no longer include them", ".minProtocolVersion")
    bad = sorted({c for c in tls.cipher_suites if not valid_cipher(c)})
    if bad:
        w.warn(f"ignoring invalid cipher suites: {bad}", ".cipherSuites")
    dups = sorted({c for c in tls.cipher_suites if tls.cipher_suites.count(c) > 1})
    if dups:
        w.warn(f"ignoring duplicate cipher suites: {dups}", ".cipherSuites")
    if tls.credential_names and len(tls.credential_names) > 1:
        w.warn("only the first of credentialNames is used", ".credentialNames")
    for field_name, name in ((".credentialName", tls.credential_name), *((f".credentialNames[{j}]", n) for j, n in enumerate(tls.credential_names or ()))):
        if name and (problem := wire.credential_name_problem(name)):
            w.error(problem, field_name)
    if tls.ca_crl:
        if tls.credential_name:
            w.error("CRL is not supported with credentialName. CRL has to be specified in the credential", ".caCrl")
        if mode == "SIMPLE":
            w.error("CRL is not supported with SIMPLE TLS", ".caCrl")
    if tls.credential_name or tls.credential_names:
        return
    prefix = "SIMPLE TLS" if mode == "SIMPLE" else "MUTUAL TLS"
    if mode != "SIMPLE" and not tls.ca_certificates:
        w.error(f"{prefix} requires a client CA bundle", ".caCertificates")
    certs = [(c.server_certificate, c.private_key) for c in tls.tls_certificates] or [(tls.server_certificate, tls.private_key)]
    for cert, key in certs:
        if not cert:
            w.error(f"{prefix} requires a server certificate", ".serverCertificate")
        if not key:
            w.error(f"{prefix} requires a private key", ".privateKey")


def validate_service_entry(w: Where, se: istio.ServiceEntry) -> None:
    for j, h in enumerate(se.hosts):
        if h == "*":
            w.error(f"invalid host {h}", f".hosts[{j}]")
            continue
        problem = validate_wildcard_domain(h)
        if problem:
            w.error(problem, f".hosts[{j}]")
        elif "*" in h and not h.startswith("*.") and se.resolution != "DYNAMIC_DNS":
            w.warn(f"partial wildcard {h!r} not allowed", f".hosts[{j}]")
    for j, addr in enumerate(se.addresses):
        try:
            ipaddress.ip_network(addr, strict=False)
        except ValueError:
            w.error(f"{addr!r} is not a valid IP address or CIDR", f".addresses[{j}]")
    if any("/" in a for a in se.addresses) and se.resolution not in ("NONE", "STATIC"):
        w.error("CIDR addresses are allowed only for NONE/STATIC resolution types", ".addresses")
    names: set[str] = set()
    numbers: set[int] = set()
    for j, p in enumerate(se.ports):
        if p.name in names:
            w.error(f"service entry port name {p.name!r} already defined", f".ports[{j}].name")
        if p.number in numbers:
            w.error(f"service entry port {p.number} already defined", f".ports[{j}].number")
        names.add(p.name)
        numbers.add(p.number)
        if not p.name:
            w.error("port name must be set", f".ports[{j}].name")
        if p.target_port and not 1 <= p.target_port <= 65535:
            w.error(f"port number {p.target_port} must be in the range 1..65535", f".ports[{j}].targetPort")
        if p.protocol and p.protocol.upper() not in HTTP_PROTOCOLS | TLS_PROTOCOLS | TCP_PROTOCOLS | {"UDP"}:
            w.error(f"unrecognized protocol {p.protocol!r}", f".ports[{j}].protocol")
    if se.resolution == "NONE":
        if se.endpoints:
            w.error("no endpoints should be provided for resolution type none", ".endpoints")
    elif se.resolution == "STATIC":
        for j, ep in enumerate(se.endpoints):
            _validate_endpoint(w.at(f".endpoints[{j}]"), ep, names, allow_fqdn=False)
    elif se.resolution in ("DNS", "DNS_ROUND_ROBIN"):
        if not se.endpoints:
            for j, h in enumerate(se.hosts):
                problem = validate_fqdn(h)
                if problem:
                    w.error(f"hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {se.resolution}, {problem}", f".hosts[{j}]")
                    break
        if se.resolution == "DNS_ROUND_ROBIN" and len(se.endpoints) > 1:
            w.error(f"there must only be 0 or 1 endpoint for resolution mode {se.resolution}", ".endpoints")
        for j, ep in enumerate(se.endpoints):
            _validate_endpoint(w.at(f".endpoints[{j}]"), ep, names, allow_fqdn=True)
    elif se.resolution == "DYNAMIC_DNS":
        w.warn("resolution DYNAMIC_DNS (per-request DNS) is not supported: the service has no endpoints and answers 503 (UH)", ".resolution")
    if se.resolution != "NONE" and len(se.hosts) > 1:
        for p in se.ports:
            proto = p.protocol.upper()
            if proto not in HTTP_PROTOCOLS and proto not in TLS_PROTOCOLS:
                w.error("multiple hosts provided with non-HTTP, non-TLS ports", ".hosts")
                break


def _validate_endpoint(w: Where, ep: istio.WorkloadEntry, port_names: set[str], allow_fqdn: bool) -> None:
    addr = ep.address
    if not addr:
        w.error("address is required", ".address")
    elif addr.startswith("unix://"):
        path = addr[len("unix://") :]
        if not path or not (path.startswith("@") or (path.startswith("/") and not path.endswith("/"))):
            w.error(f"{path} is not an absolute path to a file", ".address")
        if ep.ports:
            w.error(f"unix endpoint {addr} must not include ports", ".ports")
    elif not is_ip(addr):
        if not allow_fqdn:
            w.error(f"endpoint address {addr!r} is not a valid IP address", ".address")
        elif validate_fqdn(addr):
            w.error(f"endpoint address {addr!r} is not a valid FQDN or an IP address", ".address")
    for name, port in sorted(ep.ports.items()):
        if name not in port_names:
            w.error(f"endpoint port {port} is not defined by the service entry", f".ports.{name}")
        if not 1 <= port <= 65535:
            w.error(f"port number {port} must be in the range 1..65535", f".ports.{name}")


def validate_destination_rule(w: Where, dr: istio.DestinationRule) -> None:
    problem = validate_wildcard_domain(dr.host)
    if problem:
        w.error(problem, ".host")
    _validate_traffic_policy(w.at(".trafficPolicy"), dr.traffic_policy)
    names: set[str] = set()
    for j, subset in enumerate(dr.subsets):
        sw = w.at(f".subsets[{j}]")
        if subset.name in names:
            sw.error(f"duplicate subset names: {subset.name}", ".name")
        names.add(subset.name)
        if not is_dns1123_label(subset.name):
            sw.error(f"subset name is invalid: {subset.name}", ".name")
        _validate_traffic_policy(sw.at(".trafficPolicy"), subset.traffic_policy)


def _validate_traffic_policy(w: Where, policy: istio.TrafficPolicy | None) -> None:
    if policy is None:
        return
    if (
        policy.outlier_detection is None and policy.connection_pool is None and policy.load_balancer is None
        and policy.tls is None and not policy.port_level_settings and policy.tunnel is None
        and policy.proxy_protocol is None and policy.retry_budget is None
    ):
        w.error("traffic policy must have at least one field")
        return
    if policy.tunnel is not None:
        w.warn("tunnel settings are not supported here; ignored", ".tunnel")
    if policy.proxy_protocol is not None:
        w.warn("sending a PROXY protocol header upstream is not supported here; ignored", ".proxyProtocol")
    if policy.retry_budget is not None:
        w.warn("retryBudget is not supported here; the maxRetries circuit breaker applies", ".retryBudget")
    _validate_policy_parts(w, policy.load_balancer, policy.connection_pool, policy.outlier_detection, policy.tls)
    for j, pls in enumerate(policy.port_level_settings):
        pw = w.at(f".portLevelSettings[{j}]")
        if pls.port is None or not 1 <= pls.port.number <= 65535:
            pw.error("portTrafficPolicy must have valid port", ".port")
        if pls.load_balancer is None and pls.connection_pool is None and pls.outlier_detection is None and pls.tls is None:
            pw.error("port traffic policy must have at least one field")
            continue
        _validate_policy_parts(pw, pls.load_balancer, pls.connection_pool, pls.outlier_detection, pls.tls)


def _validate_policy_parts(w: Where, lb, pool, outlier, tls) -> None:
    """The parts a TrafficPolicy and each of its portLevelSettings have in common, in Istio's order."""
    if outlier is not None:
        _validate_outlier(w.at(".outlierDetection"), outlier)
    if pool is not None:
        _validate_connection_pool(w.at(".connectionPool"), pool)
    if lb is not None:
        _validate_load_balancer(w.at(".loadBalancer"), lb)
    if tls is not None:
        _validate_client_tls(w.at(".tls"), tls)


def _validate_outlier(ow: Where, outlier: istio.OutlierDetection) -> None:
    """validateOutlierDetection."""
    for name, value in (("baseEjectionTime", outlier.base_ejection_time), ("interval", outlier.interval)):
        if value is not None and (problem := duration_problem(value)):
            ow.error(problem, f".{name}")
    if outlier.consecutive_errors:
        ow.warn("outlier detection consecutive errors is deprecated and ignored, use consecutiveGatewayErrors or consecutive5xxErrors instead", ".consecutiveErrors")
    if not outlier.split_external_local_origin_errors and (outlier.consecutive_local_origin_failures or 0) > 0:
        ow.error("outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false", ".consecutiveLocalOriginFailures")
    for name, value in (("maxEjectionPercent", outlier.max_ejection_percent), ("minHealthPercent", outlier.min_health_percent)):
        if not 0 <= value <= 100:
            ow.error(f"percentage {value} is not in range 0..100", f".{name}")
    for code in outlier.outlier_detection_http_error_codes:
        if not 100 <= code <= 599:
            ow.error(f"HTTP status code {code} is not in range 100..599", ".outlierDetectionHttpErrorCodes")


def _validate_connection_pool(pw: Where, pool: istio.ConnectionPoolSettings) -> None:
    """validateConnectionPool: at least one of http and tcp; thresholds non-negative, durations in ms."""
    if pool.http is None and pool.tcp is None:
        pw.error("connection pool must have at least one field")
    if pool.http is not None:
        _validate_http_pool(pw, pool.http)
    if pool.tcp is not None:
        _validate_tcp_pool(pw, pool.tcp)


def _validate_http_pool(pw: Where, h: istio.HTTPSettings) -> None:
    for name, value in (
        ("http1MaxPendingRequests", h.http1_max_pending_requests), ("http2MaxRequests", h.http2_max_requests),
        ("maxRequestsPerConnection", h.max_requests_per_connection), ("maxRetries", h.max_retries),
        ("maxConcurrentStreams", h.max_concurrent_streams),
    ):
        if value < 0:
            pw.error(f"{name} must be non-negative", f".http.{name}")
    if h.idle_timeout is not None and (problem := duration_problem(h.idle_timeout)):
        pw.error(problem, ".http.idleTimeout")
    if h.h2_upgrade_policy == "UPGRADE" and h.use_client_protocol:
        pw.error("use client protocol must not be true when H2UpgradePolicy is UPGRADE", ".http.useClientProtocol")
    if h.http2_keep_alive is not None:
        for name in ("interval", "timeout"):
            value = getattr(h.http2_keep_alive, name)
            if value is None:
                pw.error(f"http2 keepalive {name} is required", f".http.http2KeepAlive.{name}")
            elif problem := duration_problem(value):
                pw.error(problem, f".http.http2KeepAlive.{name}")


def _validate_tcp_pool(pw: Where, t: istio.TCPSettings) -> None:
    if t.max_connections < 0:
        pw.error("max connections must be non-negative", ".tcp.maxConnections")
    for name, value in (("connectTimeout", t.connect_timeout), ("maxConnectionDuration", t.max_connection_duration)):
        if value is not None and (problem := duration_problem(value)):
            pw.error(problem, f".tcp.{name}")
    if t.idle_timeout is not None and t.idle_timeout >= 0.001 and (problem := duration_problem(t.idle_timeout)):
        pw.error(problem, ".tcp.idleTimeout")
    if t.tcp_keepalive is not None:
        for name in ("time", "interval"):
            value = getattr(t.tcp_keepalive, name)
            if value is not None and (problem := duration_problem(value)):
                pw.error(problem, f".tcp.tcpKeepalive.{name}")


def _validate_load_balancer(lw: Where, lb: istio.LoadBalancerSettings) -> None:
    """validateLoadBalancer, and warnings for the settings a standalone gateway does not honour."""
    if lb.consistent_hash is not None:
        _validate_consistent_hash(lw, lb.consistent_hash)
    if lb.simple == "PASSTHROUGH":
        lw.warn("PASSTHROUGH load balancing forwards to the original destination, which a standalone gateway does not have; LEAST_REQUEST is used", ".simple")
    if lb.warmup is not None:
        if problem := duration_problem(lb.warmup.duration):
            lw.error(problem, ".warmup.duration")
        if (lb.warmup.minimum_percent or 0) > 100:
            lw.error("minimumPercent value should be less than or equal to 100", ".warmup.minimumPercent")
        if lb.warmup.aggression is not None and lb.warmup.aggression <= 0:
            lw.error("aggression should be greater than 0", ".warmup.aggression")
    if lb.warmup is not None or lb.warmup_duration_secs is not None:
        lw.warn("slow start (warmup) is not supported here; endpoints take full traffic at once", ".warmup")


def _validate_consistent_hash(lw: Where, ch: istio.ConsistentHashLB) -> None:
    """The hash key's names go on the wire (a header, a query parameter, a cookie); maglev wants a prime."""
    if ch.http_header_name is not None and (problem := wire.header_name_problem(ch.http_header_name)):
        lw.error(problem, ".consistentHash.httpHeaderName")
    if ch.http_query_parameter_name is not None and (problem := wire.query_name_problem(ch.http_query_parameter_name)):
        lw.error(problem, ".consistentHash.httpQueryParameterName")
    if ch.http_cookie is not None:
        _validate_hash_cookie(lw, ch.http_cookie)
    if ch.minimum_ring_size:
        lw.warn("consistent hash minimumRingSize is deprecated, use ringHash instead", ".consistentHash.minimumRingSize")
        if ch.ring_hash is not None or ch.maglev is not None:
            lw.error("only one of MinimumRingSize or Maglev/Ringhash can be specified", ".consistentHash")
    if ch.maglev is not None:
        size = ch.maglev.table_size
        if size == 0:
            lw.error("tableSize must be set for maglev", ".consistentHash.maglev.tableSize")
        elif size >= 5000011:
            lw.error("tableSize must be less than 5000011 for maglev", ".consistentHash.maglev.tableSize")
        elif not _is_prime(size):
            lw.error("tableSize must be a prime number for maglev", ".consistentHash.maglev.tableSize")


def _validate_hash_cookie(lw: Where, cookie: istio.HTTPCookie) -> None:
    # Written into Set-Cookie (edge/wire.py).
    if problem := wire.cookie_name_problem(cookie.name):
        lw.error(problem, ".consistentHash.httpCookie.name")
    if cookie.path and (problem := wire.cookie_attribute_problem(cookie.path)):
        lw.error(problem, ".consistentHash.httpCookie.path")
    seen: set[str] = set()
    for attr in cookie.attributes:
        if not attr.name:
            lw.error("cookie attribute name cannot be empty", ".consistentHash.httpCookie.attributes")
        elif attr.name in seen:
            lw.error(f"duplicate cookie attribute name: {attr.name}", ".consistentHash.httpCookie.attributes")
        elif (problem := wire.cookie_name_problem(attr.name)) or (attr.value and (problem := wire.cookie_attribute_problem(attr.value))):
            lw.error(problem, ".consistentHash.httpCookie.attributes")
        seen.add(attr.name)
    if cookie.ttl is not None and cookie.ttl < 0:
        lw.error("cookie ttl cannot be negative", ".consistentHash.httpCookie.ttl")


def _validate_client_tls(tw: Where, tls: istio.ClientTLSSettings) -> None:
    """validateTLS of a DestinationRule: the upstream side."""
    if tls.credential_name and (problem := wire.credential_name_problem(tls.credential_name)):
        tw.error(problem, ".credentialName")
    if tls.sni and (problem := wire.sni_problem(tls.sni)):
        tw.error(problem, ".sni")
    if tls.insecure_skip_verify:
        if tls.mode == "SIMPLE" and (tls.ca_certificates or tls.credential_name or tls.subject_alt_names):
            tw.error("cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true")
        if tls.mode == "MUTUAL" and (tls.ca_certificates or tls.subject_alt_names):
            tw.error("cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true")
    if tls.mode in ("SIMPLE", "MUTUAL") and tls.credential_name:
        if tls.client_certificate or tls.ca_certificates or tls.private_key or tls.ca_crl:
            tw.error("cannot specify client certificates or CA certificate or CA CRL If credentialName is set")
    elif tls.mode == "MUTUAL":
        if not tls.client_certificate:
            tw.error("client certificate required for mutual tls", ".clientCertificate")
        if not tls.private_key:
            tw.error("private key required for mutual tls", ".privateKey")
    if tls.mode == "ISTIO_MUTUAL":
        tw.warn("ISTIO_MUTUAL needs Istio workload certificates; the upstream connection is plain text (DISABLE)", ".mode")


def validate_virtual_service(w: Where, raw: istio.VirtualService) -> None:
    """validateVirtualService on the resource as written (before names are resolved), as Istio admits it; a
    VirtualService without hosts is a delegate."""
    delegate = not raw.hosts
    if delegate:
        if raw.gateways:
            w.error("delegate virtual service must have no gateways specified", ".gateways")
        if raw.tls:
            w.error("delegate virtual service must have no tls route specified", ".tls")
        if raw.tcp:
            w.error("delegate virtual service must have no tcp route specified", ".tcp")
    for j, g in enumerate(raw.gateways):
        if g != MESH_GATEWAY:
            _validate_gateway_name(w, g, f".gateways[{j}]")
    applies_to_mesh = not raw.gateways or MESH_GATEWAY in raw.gateways
    _validate_vs_hosts(w, raw.hosts, applies_to_mesh)
    if not raw.http and not raw.tcp and not raw.tls:
        w.error("http, tcp or tls must be provided in virtual service")
    if not delegate and not [g for g in raw.gateways if g != MESH_GATEWAY]:
        w.warn(
            "no gateways: the VirtualService applies to sidecars (the `mesh` gateway) only and is never bound to a Gateway here; list the Gateway in spec.gateways",
            ".gateways",
        )
    for i, route in enumerate(raw.http):
        _validate_http_route(w.at(f".http[{i}]"), route, delegate, applies_to_mesh and not delegate, raw.gateways)
    for i, t in enumerate(raw.tls):
        _validate_tls_route(w.at(f".tls[{i}]"), t, raw.hosts)
    for i, t in enumerate(raw.tcp):
        tw = w.at(f".tcp[{i}]")
        for k, m in enumerate(t.match):
            _validate_l4_match(tw.at(f".match[{k}]"), m.port, m.gateways)
        if not t.route:
            tw.error("TCP route is required", ".route")
        _validate_l4_destinations(tw, t.route)
    _analyze_unreachable(w, raw.http, ".http")
    _analyze_unreachable(w, raw.tcp, ".tcp")


def _validate_vs_hosts(w: Where, hosts: list[str], applies_to_mesh: bool) -> None:
    """Each host a (wildcard) domain or an IP, `*` only away from the mesh, no two hosts overlapping (the
    overlap is only looked for once every host is valid)."""
    valid_hosts = True
    for j, h in enumerate(hosts):
        problem = validate_wildcard_domain(h)
        if problem and not is_ip(h):
            w.error(problem, f".hosts[{j}]")
            valid_hosts = False
        elif h == "*" and applies_to_mesh:
            w.error("wildcard host * is not allowed for virtual services bound to the mesh gateway", f".hosts[{j}]")
            valid_hosts = False
    if valid_hosts:
        for a in range(len(hosts)):
            for b in range(a + 1, len(hosts)):
                if host_matches(hosts[a], hosts[b]):
                    w.error(f"duplicate hosts in virtual service: {hosts[a]} & {hosts[b]}", ".hosts")


def _validate_http_route(rw: Where, route: istio.HTTPRoute, delegate: bool, mesh_root: bool, gateways: list[str]) -> None:
    """What admission checks of an HTTPRoute before translation: the action combinations of a root route
    with a delegate, gateway names in matches, and JWT claim matches, which only a gateway can honour
    (`mesh_root`: a root VirtualService that also applies to the mesh)."""
    if route.redirect is not None and route.fault is not None:
        rw.error("HTTP route cannot contain both fault and redirect", ".fault")
    if route.delegate is not None:
        if delegate:
            rw.error("delegate HTTP route cannot contain delegate", ".delegate")
        if route.redirect is not None:
            rw.error(f"root HTTP route {route.name} must not specify redirect", ".redirect")
        if route.route:
            rw.error(f"root HTTP route {route.name} must not specify route", ".route")
    for k, m in enumerate(route.match):
        for j, g in enumerate(m.gateways):
            if g != MESH_GATEWAY:
                _validate_gateway_name(rw, g, f".match[{k}].gateways[{j}]")
        for name in list(m.headers) + list(m.without_headers):
            if name.lower().startswith(JWT_CLAIM_PREFIX) and mesh_root:
                rw.error(f"JWT claim based routing (key: {name}) is only supported for gateway, found no gateways: {gateways}", f".match[{k}].headers")


def _validate_tls_route(tw: Where, t: istio.TLSRoute, hosts: list[str]) -> None:
    """validateTLSRoute: every match has SNI hosts, each a subset of a VirtualService host."""
    if not t.match:
        tw.error("TLS route must have at least one match condition", ".match")
    for k, m in enumerate(t.match):
        if not m.sni_hosts:
            tw.error("TLS match must have at least one SNI host", f".match[{k}].sniHosts")
        for s, sni in enumerate(m.sni_hosts):
            problem = validate_wildcard_domain(sni)
            if problem:
                if is_ip(sni):
                    tw.warn(f"using an IP address ({sni!r}) goes against SNI spec and most clients do not support this", f".match[{k}].sniHosts[{s}]")
                else:
                    tw.error(problem, f".match[{k}].sniHosts[{s}]")
                continue
            if not any(host_subset_of(sni, h) for h in hosts):
                tw.error(f"SNI host {sni!r} is not a compatible subset of any of the virtual service hosts: [{', '.join(hosts)}]", f".match[{k}].sniHosts[{s}]")
        _validate_l4_match(tw.at(f".match[{k}]"), m.port, m.gateways)
    if not t.route:
        tw.error("TLS route is required", ".route")
    _validate_l4_destinations(tw, t.route)


def _validate_gateway_name(w: Where, name: str, sub: str) -> None:
    """validateGatewayNames. Note: Istio's validation rejects `./name` although resolveGatewayName knows it."""
    ns, sep, gw = name.partition("/")
    if not sep:
        if "." in name:
            parts = name.split(".")
            w.warn(f"using legacy gatewayName format {name!r}; prefer the <namespace>/<name> format: {parts[1]}/{parts[0]!r}", sub)
        problem = validate_fqdn(name)
        if problem:
            w.error(problem, sub)
        return
    if not ns or not gw:
        w.error("config namespace and gateway name cannot be empty", sub)
        return
    if not is_dns1123_label(ns):
        w.error(f"invalid value for namespace: {ns!r}" + (" (Istio's validation rejects ./name; write the namespace)" if ns == "." else ""), sub)
    if not is_dns1123_label(gw):
        w.error(f"invalid value for gateway name: {gw!r}", sub)


def _validate_l4_match(w: Where, port: int, gateways: list[str]) -> None:
    if port and not 1 <= port <= 65535:
        w.error(f"port number {port} must be in the range 1..65535", ".port")
    for j, g in enumerate(gateways):
        if g != MESH_GATEWAY:
            _validate_gateway_name(w, g, f".gateways[{j}]")


def _validate_l4_destinations(w: Where, routes: list[istio.RouteDestination]) -> None:
    total = 0
    for j, d in enumerate(routes):
        validate_destination(w, d.destination, f".route[{j}].destination")
        if d.weight < 0:
            w.error(f"weight {d.weight} < 0", f".route[{j}].weight")
        total += d.weight
    if len(routes) > 1 and total == 0:
        w.error("total destination weight = 0", ".route")


def validate_destination(w: Where, d: istio.Destination, sub: str) -> None:
    """validateDestination: whether it resolves is the cluster stage's question (a warning, not an error)."""
    if d.host == "*":
        w.error(f"invalid destination host {d.host}", sub + ".host")
    else:
        problem = validate_wildcard_domain(d.host)
        if problem:
            w.error(problem, sub + ".host")
    if d.subset and not is_dns1123_label(d.subset):
        w.error(f"subset name is invalid: {d.subset}", sub + ".subset")
    if d.port is not None and not 1 <= d.port.number <= 65535:
        w.error(f"port number {d.port.number} must be in the range 1..65535", sub + ".port.number")


def valid_cipher(cs: str) -> bool:
    """security.IsValidCipherSuite: "", ALL and names that start with an operator (`!`, `-`, `+`, …) pass."""
    if not cs or cs == "ALL" or not (cs[0].isalnum()):
        return True
    return cs in CIPHER_SUITES


def _is_prime(x: int) -> bool:
    """Maglev's table size must be prime (validateLoadBalancer)."""
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    f = 3
    while f * f <= x:
        if x % f == 0:
            return False
        f += 2
    return True


def _analyze_unreachable(w: Where, routes: list, sub: str) -> None:
    """analyzeUnreachableHTTPRules / TCPRules (the duplicate and no-match parts) as warnings."""
    seen: dict[bytes, int] = {}
    empty_at = -1
    for i, r in enumerate(routes):
        name = f"{sub}[{i}]" + (f" ({r.name})" if getattr(r, "name", "") else "")
        if not r.match:
            if empty_at >= 0:
                w.warn(f"virtualService rule {name} not used (only the last rule can have no matches)", f"{sub}[{i}]")
            empty_at = i
            continue
        duplicates = 0
        for k, m in enumerate(r.match):
            if empty_at >= 0:
                w.warn(f"virtualService rule {name} not used (route without matches defined before)", f"{sub}[{i}]")
                break
            key = msgspec.json.encode(m, order="sorted")
            if key in seen:
                w.warn(f"virtualService rule {name} match {k} is not used (duplicate/overlapping match in rule {sub}[{seen[key]}])", f"{sub}[{i}].match[{k}]")
                duplicates += 1
                continue
            seen[key] = i
        if duplicates and duplicates == len(r.match):
            w.warn(f"virtualService rule {name} not used (all matches used by prior rules)", f"{sub}[{i}]")
