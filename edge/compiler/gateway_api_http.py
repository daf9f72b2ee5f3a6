# HTTPRoute rules → VirtualService HTTP routes, as Istio's pilot/pkg/config/kube/gateway/conversion.go
# (convertHTTPRoute, createURIMatch, createRedirectFilter, createRewriteFilter, createMirrorFilter,
# buildHTTPDestination, sortHTTPRoutes) does; a helper of the gateway_api stage.
#
# Rules:
# - One VirtualService route per HTTPRouteMatch (Istio splits a rule with several matches so that each route
#   has one match and the routes can be sorted); each carries the rule's filters, backends, timeouts, retry.
# - PathPrefix matches whole path segments (Istio asks Envoy for path_separated_prefix): `/foo` (a trailing `/`
#   is ignored) matches `/foo` and `/foo/...`, never `/foobar`. edge's table has plain string prefixes, so a
#   PathPrefix other than `/` becomes two routes, exact `/foo` then prefix `/foo/`, with ReplacePrefixMatch
#   rewrites and redirects written for each (`/foo` → R, `/foo/` → R + `/`), which is what Envoy computes.
# - Precedence (sort_key, sortHTTPRoutes): Exact > PathPrefix > RegularExpression, then longer path value, then
#   a method match, then more header matches, then more query matches; a stable sort over routes taken in
#   creation order (then namespace/name) and rule/match order keeps the spec's remaining tie-breaks.
# - Backends: a Service is `name.namespace.svc.<cluster domain>` and must be a ServiceEntry host here (there is
#   no cluster); weight 0 backends are left out; one backend gets no weight. An invalid backendRef (unknown
#   kind, not permitted, not found) keeps its share, pointed at a destination without a cluster, which
#   answers 500 on these routes (buildHTTPDestination keeps it; route.go sets ClusterNotFoundResponseCode 500
#   under gateway semantics: "the share of requests that would go to an invalid backend get 500"); when no
#   valid backend is left at all and nothing else answers (redirect), the rule answers 500 directly.
# - Retry and timeouts as convertHTTPRoute (timeout_and_retries).
# - Header modifiers: names lowercased, the first of equal names wins (headerListToMap). RequestRedirect
#   without a port keeps the request's port, or the scheme's default when the scheme changes.
# - ExtensionRef filters are not supported: the route is not accepted (Istio: InvalidFilter).
from __future__ import annotations

from dataclasses import dataclass, field

from edge import gateway_api as gw
from edge import istio
from edge.compiler.report import Where

# backendRefs that cannot be served keep their share of traffic pointed at a host no ServiceEntry can have
# (RFC 2606 reserves .invalid): no cluster, so a 500 for that share (Istio: an empty Destination, no cluster).
INVALID_BACKEND_HOST = "invalid-backend.invalid"
_PATH_RANK = {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1}
# conversion.go convertHTTPRoute: a retry stanza retries on these connection-level conditions ("Implementations
# SHOULD retry on connection errors") plus its codes; attempts default to 2, Istio's default retry count.
RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled")
DEFAULT_RETRY_ATTEMPTS = 2


@dataclass
class Entry:
    """One HTTPRouteMatch translated: its sort key and the VirtualService routes it became (1 or 2)."""

    key: tuple
    routes: list[istio.HTTPRoute]
    path: str  # "$.spec.rules[i].matches[j]" in its HTTPRoute


@dataclass
class BackendCheck:
    """What the stage knows to resolve backends: ServiceEntry hosts and the ReferenceGrants."""

    domain: str
    hosts: set[str]
    granted: object  # callable(from_kind, from_ns, to_kind, to_ns, name) -> bool
    ports: dict[str, dict[int, str]] = field(default_factory=dict)  # ServiceEntry host → port number → protocol
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message)


def sort_key(m: gw.HTTPRouteMatch) -> tuple:
    """sortHTTPRoutes' comparison, as a key sorted ascending (every part negated)."""
    value = m.path.value
    if m.path.type == "PathPrefix" and value != "/":
        value = value.rstrip("/") or "/"
    return (-_PATH_RANK[m.path.type], -len(value), 0 if m.method else 1, -len(m.headers), -len(m.query_params))


def resolve_backend(check: BackendCheck, ref: gw.BackendObjectReference, route: istio.Resource, w: Where) -> str | None:
    """The backend's host, or None with the ResolvedRefs reason reported (InvalidKind, RefNotPermitted,
    BackendNotFound) as a warning: Istio serves the route and answers the backend's share with an error."""
    ns = ref.namespace or route.namespace
    if ref.group != "" or ref.kind != "Service":
        w.warn(f"ResolvedRefs=False (InvalidKind): backendRef kind {ref.group or 'core'}/{ref.kind} is not supported; only Services are")
        return None
    if ns != route.namespace and not check.granted(route.kind, route.namespace, "Service", ns, ref.name):
        w.warn(f"ResolvedRefs=False (RefNotPermitted): backendRef {ns}/{ref.name} is in another namespace and no ReferenceGrant in {ns} allows it")
        return None
    if "." in ref.name:
        w.warn(f"ResolvedRefs=False (InvalidKind): {ref.name!r}: the name of the Service must be used, not a host name")
        return None
    host = f"{ref.name}.{ns}.svc.{check.domain}"
    if host not in check.hosts:
        w.warn(f"ResolvedRefs=False (BackendNotFound): Service {ns}/{ref.name} not found: no ServiceEntry has host {host} (requests to it get an error)")
        return host
    return host


def _header_ops(f: gw.HTTPHeaderFilter) -> istio.HeaderOperations:
    def first_wins(items: list[gw.HTTPHeader]) -> dict[str, str]:
        out: dict[str, str] = {}
        for h in items:
            out.setdefault(h.name.lower(), h.value)
        return out

    return istio.HeaderOperations(set=first_wins(f.set), add=first_wins(f.add), remove=[n.lower() for n in f.remove])


def filter_headers(filters: list[gw.HTTPRouteFilter]) -> istio.Headers | None:
    request = next((_header_ops(f.request_header_modifier) for f in filters if f.request_header_modifier), None)
    response = next((_header_ops(f.response_header_modifier) for f in filters if f.response_header_modifier), None)
    return istio.Headers(request=request, response=response) if request or response else None


@dataclass
class RuleParts:
    """What a rule's routes share, whatever their match."""

    headers: istio.Headers | None = None
    redirect: gw.HTTPRequestRedirectFilter | None = None
    rewrite: gw.HTTPURLRewriteFilter | None = None
    mirrors: list[istio.HTTPMirrorPolicy] = field(default_factory=list)
    cors: istio.CorsPolicy | None = None
    route: list[istio.HTTPRouteDestination] = field(default_factory=list)
    direct: istio.HTTPDirectResponse | None = None
    timeout: istio.Duration | None = None
    retries: istio.HTTPRetry | None = None


def rule_parts(check: BackendCheck, route: istio.Resource, rule: gw.HTTPRouteRule, w: Where) -> RuleParts | None:
    """The shared parts of one rule; None when the rule cannot be served (the route is then not accepted)."""
    parts = RuleParts(headers=filter_headers(rule.filters))
    for k, f in enumerate(rule.filters):
        fw = w.at(f".filters[{k}]")
        if f.type == "ExtensionRef":
            fw.warn("Accepted=False (UnsupportedValue): ExtensionRef filters are not supported by edge; the route is not served")
            return None
        if f.request_redirect is not None:
            parts.redirect = f.request_redirect
        elif f.url_rewrite is not None:
            parts.rewrite = f.url_rewrite
        elif f.request_mirror is not None:
            mirror = mirror_policy(check, route, f.request_mirror, fw.at(".requestMirror.backendRef"))
            if mirror is not None:
                parts.mirrors.append(mirror)
        elif f.cors is not None:
            parts.cors = _cors(f.cors)
    parts.route = destinations(check, route, rule, w)
    if not parts.route and parts.redirect is None:
        parts.direct = istio.HTTPDirectResponse(status=500)
    parts.timeout, parts.retries = timeout_and_retries(rule)
    return parts


def timeout_and_retries(rule: gw.HTTPRouteRule) -> tuple[istio.Duration | None, istio.HTTPRetry | None]:
    """convertHTTPRoute's retry and timeouts: a retry stanza is a retry policy (attempts default 2, Istio's
    connection-level conditions plus the codes, nothing when attempts is 0); timeouts.request is the route
    timeout (0 = none); backendRequest is the per-try timeout when there is a retry stanza, else the route
    timeout (replacing request's)."""
    retries = None
    if rule.retry is not None:
        r = rule.retry
        attempts = r.attempts if r.attempts is not None else DEFAULT_RETRY_ATTEMPTS
        retries = istio.HTTPRetry(
            attempts=attempts,
            retry_on=",".join([*RETRY_ON, *(str(c) for c in r.codes)]) if attempts else "",
            backoff=istio.Duration(gw.gateway_duration(r.backoff)) if r.backoff is not None else None,
        )
    timeout = None
    t = rule.timeouts
    if t is not None and t.request is not None and gw.gateway_duration(t.request) != 0:
        timeout = istio.Duration(gw.gateway_duration(t.request))
    if t is not None and t.backend_request is not None and gw.gateway_duration(t.backend_request) != 0:
        backend = istio.Duration(gw.gateway_duration(t.backend_request))
        if retries is not None:
            retries.per_try_timeout = backend
        else:
            timeout = backend
    return timeout, retries


def mirror_policy(check: BackendCheck, route: istio.Resource, f: gw.HTTPRequestMirrorFilter, w: Where) -> istio.HTTPMirrorPolicy | None:
    host = resolve_backend(check, f.backend_ref, route, w)
    if host is None:
        return None
    percent = None
    if f.fraction is not None:
        percent = istio.Percent(value=100.0 * f.fraction.numerator / f.fraction.denominator)
    elif f.percent is not None:
        percent = istio.Percent(value=float(f.percent))
    port = istio.PortSelector(number=f.backend_ref.port) if f.backend_ref.port else None
    return istio.HTTPMirrorPolicy(destination=istio.Destination(host=host, port=port), percentage=percent)


def _cors(f: gw.HTTPCORSFilter) -> istio.CorsPolicy:
    return istio.CorsPolicy(
        allow_origins=[istio.StringMatch(exact=o) for o in f.allow_origins],
        allow_methods=list(f.allow_methods),
        allow_headers=list(f.allow_headers),
        expose_headers=list(f.expose_headers),
        max_age=istio.Duration(float(f.max_age)),
        allow_credentials=True if f.allow_credentials else None,
    )


def destinations(check: BackendCheck, route: istio.Resource, rule: gw.HTTPRouteRule, w: Where) -> list[istio.HTTPRouteDestination]:
    kept = [(k, b) for k, b in enumerate(rule.backend_refs) if b.weight > 0]
    out: list[istio.HTTPRouteDestination] = []
    valid = 0
    for k, b in kept:
        bw = w.at(f".backendRefs[{k}]")
        host = resolve_backend(check, b, route, bw)
        if host is not None and host in check.hosts:
            valid += 1
        headers = filter_headers(b.filters)
        for j, f in enumerate(b.filters):
            if f.type not in ("RequestHeaderModifier", "ResponseHeaderModifier"):
                bw.warn(f"UnsupportedValue: a {f.type} filter on a backendRef is not supported (Istio supports header modifiers there); it is ignored", f".filters[{j}]")
        out.append(
            istio.HTTPRouteDestination(
                destination=istio.Destination(host=host or INVALID_BACKEND_HOST, port=istio.PortSelector(number=b.port) if b.port else None),
                weight=b.weight if len(kept) > 1 else 0,
                headers=headers,
            )
        )
    return out if valid else []


def match_variants(m: gw.HTTPRouteMatch) -> list[tuple[istio.StringMatch, str]]:
    """The path matches a Gateway API path match becomes, each with how a ReplacePrefixMatch applies to it:
    "full" (the whole path is the matched prefix) or "prefix" (the segment prefix, with its slash)."""
    p = m.path
    if p.type == "Exact":
        return [(istio.StringMatch(exact=p.value), "full")]
    if p.type == "RegularExpression":
        return [(istio.StringMatch(regex=p.value), "full")]
    value = p.value.rstrip("/") or "/"
    if value == "/":
        return [(istio.StringMatch(prefix="/"), "prefix")]
    return [(istio.StringMatch(exact=value), "full"), (istio.StringMatch(prefix=value + "/"), "prefix")]


def _replacement(value: str, how: str) -> str:
    """A ReplacePrefixMatch value for one variant: "/" removes the prefix; the slash of a segment prefix stays."""
    value = value.rstrip("/") or "/"
    if how == "full" or value == "/":
        return value
    return value + "/"


def _redirect(f: gw.HTTPRequestRedirectFilter, how: str) -> istio.HTTPRedirect:
    uri = prefix = ""
    if f.path is not None and f.path.replace_full_path is not None:
        uri = f.path.replace_full_path
    elif f.path is not None and f.path.replace_prefix_match is not None:
        if how == "full":
            uri = _replacement(f.path.replace_prefix_match, how)
        else:
            prefix = _replacement(f.path.replace_prefix_match, how)
    derive = None if f.port is not None else ("FROM_PROTOCOL_DEFAULT" if f.scheme else "FROM_REQUEST_PORT")
    return istio.HTTPRedirect(
        uri=uri,
        prefix_rewrite=prefix,
        authority=f.hostname or "",
        port=f.port,
        derive_port=derive,
        scheme=f.scheme or "",
        redirect_code=f.status_code,
    )


def _rewrite(f: gw.HTTPURLRewriteFilter, how: str) -> istio.HTTPRewrite:
    uri = ""
    regex = None
    if f.path is not None and f.path.replace_full_path is not None:
        regex = istio.RegexRewrite(match="/.*", rewrite=f.path.replace_full_path)
    elif f.path is not None and f.path.replace_prefix_match is not None:
        uri = _replacement(f.path.replace_prefix_match, how)
    return istio.HTTPRewrite(uri=uri, authority=f.hostname or "", uri_regex_rewrite=regex)


def _match_request(m: gw.HTTPRouteMatch, uri: istio.StringMatch) -> istio.HTTPMatchRequest:
    headers: dict[str, istio.StringMatch] = {}
    for h in m.headers:  # the first of equal (case-insensitive) names wins
        headers.setdefault(h.name.lower(), istio.StringMatch(exact=h.value) if h.type == "Exact" else istio.StringMatch(regex=h.value))
    query: dict[str, istio.StringMatch] = {}
    for q in m.query_params:
        query.setdefault(q.name, istio.StringMatch(exact=q.value) if q.type == "Exact" else istio.StringMatch(regex=q.value))
    method = istio.StringMatch(exact=m.method) if m.method else None
    return istio.HTTPMatchRequest(uri=uri, headers=headers, query_params=query, method=method)


def rule_entries(route: istio.Resource, r: int, rule: gw.HTTPRouteRule, parts: RuleParts) -> list[Entry]:
    """Every match of one rule as an Entry of VirtualService routes (named `<ns>.<route>.<rule>.<match>`)."""
    entries = []
    for j, m in enumerate(rule.matches):
        routes = []
        for uri, how in match_variants(m):
            redirect = _redirect(parts.redirect, how) if parts.redirect is not None else None
            routes.append(
                istio.HTTPRoute(
                    name=f"{route.namespace}.{route.name}.{r}.{j}",
                    match=[_match_request(m, uri)],
                    route=[] if redirect is not None else parts.route,
                    redirect=redirect,
                    direct_response=parts.direct if redirect is None else None,
                    rewrite=_rewrite(parts.rewrite, how) if parts.rewrite is not None and redirect is None and parts.direct is None else None,
                    timeout=parts.timeout,
                    retries=parts.retries,
                    mirrors=parts.mirrors if parts.direct is None else [],
                    cors_policy=parts.cors,
                    headers=parts.headers,
                )
            )
        entries.append(Entry(key=sort_key(m), routes=routes, path=f"$.spec.rules[{r}].matches[{j}]"))
    return entries
