# HTTP rules: each HTTPRoute of a VirtualService checked and translated once, as far as it goes without
# knowing the gateway and port (pilot/pkg/networking/core/route/route.go: translateRoute and its helpers —
# match, header operations, rewrite, redirect, direct response, retries, fault, CORS, mirrors — with the
# checks of validation.go's validateHTTPRoute on the same fields).
#
# Rules:
# - Any error fails the compile, yet translation goes on so that one run reports every error: a rule with an
#   error is left out, and so is a match block with an error (from its rule).
# - Matchers: `{}` and regex `*` are presence matches; header names are lowercased and sorted; a regex is
#   kept as written once RE2 accepts it (regex.py); a JWT claim is never present (no RequestAuthentication).
# - What depends on the gateway and port (match blocks filtered by port and gateways, redirect ports,
#   destinations' clusters) is left for routes.py.
from __future__ import annotations

import base64
import binascii
import http

from edge import istio, table, wire
from edge.compiler.admission import duration_problem, validate_destination
from edge.compiler.model import (
    DEFAULT_RETRY_ON, JWT_CLAIM_PREFIX, PATH_SEPARATED_SEMANTICS, PPM_PER_PERCENT, ROUTE_SEMANTICS_ANNOTATION, MatchBlock,
    PreparedVirtualService, Rule, ppm,
)
from edge.compiler.regex import RegexError, regex_groups, regex_problem, translate_re2_rewrite
from edge.compiler.report import Report, Where

MAX_DIRECT_RESPONSE_BYTES = 1024 * 1024  # DefaultMaxDirectResponseBodySizeBytes
WARN_DIRECT_RESPONSE_BYTES = 100 * 1024
SUPPORTED_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})  # route.go ApplyRedirect
RETRY_ON_POLICIES = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx", "refused-stream",
        "retriable-status-codes", "retriable-headers", "envoy-ratelimited", "http3-post-connect-failure",
        "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    }
)
HTTP_STATUS_CODES = frozenset(s.value for s in http.HTTPStatus)
GRPC_STATUSES = frozenset(
    {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    }
)
CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})
_PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})


def translate_rules(report: Report, vs: PreparedVirtualService) -> list[Rule]:
    """Every HTTP rule of a VirtualService (its delegates' merged in) translated once, for all servers."""
    rules = []
    for index, (owner, path, route) in enumerate(vs.http):
        rule = _translate_rule(Where(report, owner, path), index, route)
        if rule is not None:
            rules.append(rule)
    return rules


def _translate_rule(w: Where, index: int, h: istio.HTTPRoute) -> Rule | None:
    if h.delegate is not None:
        return None  # merged away (or reported) already
    if h.redirect is None and h.direct_response is None and not h.route:
        w.error("HTTP route, redirect or direct_response is required")
    matches = None
    if h.match:
        matches = []
        for k, m in enumerate(h.match):
            compiled = _translate_match(w, m, f".match[{k}]")
            if compiled is not None:
                matches.append(compiled)
    headers = _translate_header_rules(w, h.headers, ".headers")
    authority = headers.authority if headers is not None else ""
    rewrite = None
    if h.rewrite is not None:
        rewrite = _translate_rewrite(w, h.rewrite, h.match)
        if rewrite is not None and rewrite.authority and authority:
            w.error(f'authority header cannot be set multiple times: have "{rewrite.authority}", attempting to set "{authority}"', ".headers.request")
    redirect_supported = True
    needs_prefix = rewrite is not None and rewrite.prefix is not None
    if h.redirect is not None:
        redirect_supported = _validate_redirect(w, h.redirect, h.match)
        needs_prefix = bool(h.redirect.prefix_rewrite)
    direct = _translate_direct(w, h.direct_response) if h.direct_response is not None else None
    timeout_s = 0.0
    if h.timeout is not None:
        if problem := duration_problem(h.timeout):
            w.error(problem, ".timeout")
        timeout_s = float(h.timeout)
    retry = _translate_retry(w, h.retries) if h.retries is not None else None
    fault = _translate_fault(w, h.fault) if h.fault is not None else None
    cors = _translate_cors(w, h.cors_policy) if h.cors_policy is not None else None
    _validate_mirrors(w, h)
    total = 0
    dest_headers = []
    for j, d in enumerate(h.route):
        dw = w.at(f".route[{j}]")
        validate_destination(dw, d.destination, ".destination")
        if d.weight < 0:
            dw.error(f"weight {d.weight} < 0", ".weight")
        total += d.weight
        dest_headers.append(_translate_header_rules(dw, d.headers, ".headers") if d.headers is not None else None)
    if len(h.route) > 1 and total == 0:
        w.error("total destination weight = 0", ".route")
    if w.failed:
        return None
    return Rule(
        owner=w.res, path=w.path, index=index, http=h, matches=matches, headers=headers, timeout_s=timeout_s,
        retry=retry, fault=fault, cors=cors, direct=direct, rewrite=rewrite, redirect_supported=redirect_supported,
        needs_prefix=needs_prefix, dest_headers=dest_headers,
    )


def _translate_match(w: Where, m: istio.HTTPMatchRequest, sub: str) -> MatchBlock | None:
    mw = w.at(sub)
    path = None
    catch_all = m.uri is None
    if m.uri is not None:
        u = m.uri
        if u.exact is not None:
            path = table.StringMatcher(kind=table.MATCH_EXACT, value=u.exact, ignore_case=m.ignore_uri_case)
        elif u.prefix is not None and u.prefix != "/" and w.res.annotations.get(ROUTE_SEMANTICS_ANNOTATION) in PATH_SEPARATED_SEMANTICS:
            value = u.prefix[:-1] if u.prefix.endswith("/") else u.prefix
            path = table.StringMatcher(kind=table.MATCH_PATH_PREFIX, value=value, ignore_case=m.ignore_uri_case)
        elif u.prefix is not None:
            path = table.StringMatcher(kind=table.MATCH_PREFIX, value=u.prefix, ignore_case=m.ignore_uri_case)
            catch_all = u.prefix == "/"
        elif u.regex is not None:
            pattern = _regex(mw, u.regex, ".uri.regex")
            path = table.StringMatcher(kind=table.MATCH_REGEX, value=pattern or "")
            catch_all = u.regex == ".*"
        else:
            catch_all = True  # uri: {} is Envoy's prefix "/"
    headers: list[table.HeaderMatcher] = []
    for invert, source, where in ((False, m.headers, ".headers"), (True, m.without_headers, ".withoutHeaders")):
        for name in sorted(source):
            key = f"{where}.{name}"
            if name.lower().startswith(JWT_CLAIM_PREFIX):
                claim = routing_claim(name)
                sm = source[name]
                if not claim:
                    mw.error(f"{name}: a JWT claim is written @request.auth.claims.<name>[.<nested>] or @request.auth.claims[<name>][<nested>]", key)
                elif sm.is_empty or sm.regex == "*":
                    mw.error("a JWT claim match needs exact, prefix or regex (Istio makes a metadata string matcher of it)", key)
                else:
                    matcher = _string_matcher(mw, sm, key)
                    if matcher is not None:
                        headers.append(table.HeaderMatcher(name=name, matcher=matcher, invert=invert, claim=claim))
                continue
            if name not in _PSEUDO_HEADERS and wire.header_name_problem(name) is not None:
                mw.error(f"header name {name} is not a valid header name", key)
                continue
            sm = source[name]
            if invert and sm.regex == "*":
                matcher = table.StringMatcher(kind=table.MATCH_PRESENT)
            else:
                matcher = _string_matcher(mw, sm, key)
            if matcher is not None:
                headers.append(table.HeaderMatcher(name=name.lower(), matcher=matcher, invert=invert))
    for pseudo, sm, where in ((":method", m.method, ".method"), (":authority", m.authority, ".authority"), (":scheme", m.scheme, ".scheme")):
        if sm is not None:
            matcher = _string_matcher(mw, sm, where)
            if matcher is not None:
                headers.append(table.HeaderMatcher(name=pseudo, matcher=matcher))
    query = []
    for name in sorted(m.query_params):
        matcher = _string_matcher(mw, m.query_params[name], f".queryParams.{name}")
        if matcher is not None:
            query.append(table.QueryMatcher(name=name, matcher=matcher))
    if m.port and not 1 <= m.port <= 65535:
        mw.error(f"port number {m.port} must be in the range 1..65535", ".port")
    if mw.failed:
        return None
    headers.sort(key=lambda hm: (hm.name, hm.invert))
    catch_all = catch_all and not headers and not query
    return MatchBlock(
        match=table.RouteMatch(path=path, headers=tuple(headers), query=tuple(query), name=m.name),
        port=m.port,
        gateways=tuple(m.gateways),
        source_labels=m.source_labels,
        source_namespace=m.source_namespace,
        catch_all=catch_all,
        path=w.path + sub,
        stat_prefix=m.stat_prefix,
    )


def routing_claim(name: str) -> tuple[str, ...]:
    """Istio's jwt.ToRoutingClaim: `@request.auth.claims.a.b` → ("a", "b"), `@request.auth.claims[a][b]` → ("a", "b");
    () when the name is neither form."""
    rest = name[len(JWT_CLAIM_PREFIX) :]
    if rest.startswith(".") and len(rest) > 1:
        return tuple(rest[1:].split("."))
    if rest.startswith("[") and rest.endswith("]") and len(rest) > 2:
        return tuple(rest[1:-1].split("]["))
    return ()


def _string_matcher(w: Where, sm: istio.StringMatch, sub: str) -> table.StringMatcher | None:
    """translateHeaderMatch / translateQueryParamMatch: `{}` and regex `*` are presence matches."""
    if sm.is_empty or sm.regex == "*":
        return table.StringMatcher(kind=table.MATCH_PRESENT)
    if sm.exact is not None:
        return table.StringMatcher(kind=table.MATCH_EXACT, value=sm.exact)
    if sm.prefix is not None:
        if sm.prefix == "":
            w.error("prefix string match should not be empty", sub)
            return None
        return table.StringMatcher(kind=table.MATCH_PREFIX, value=sm.prefix)
    pattern = _regex(w, sm.regex, sub + ".regex")
    return table.StringMatcher(kind=table.MATCH_REGEX, value=pattern) if pattern is not None else None


def _regex(w: Where, pattern: str, sub: str) -> str | None:
    """The pattern as written, once RE2 accepted it (workers/regex.py matches it with RE2, as Envoy does)."""
    problem = regex_problem(pattern)
    if problem is not None:
        w.error(f"invalid regex {pattern!r}: {problem}; Istio uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)", sub)
        return None
    return pattern


def _translate_header_rules(w: Where, headers: istio.Headers | None, sub: str) -> table.HeaderRules | None:
    """TranslateHeadersOperations: names lowercased; `:authority`/`host` in request set/add is a host
    rewrite (set beats add); other pseudo-headers and `host` can be neither set nor removed."""
    if headers is None:
        return None
    hw = w.at(sub)
    authority = ""
    ops = {}
    for side, op in (("request", headers.request), ("response", headers.response)):
        if op is None:
            ops[side] = None
            continue
        sets, adds = [], []
        set_authority = add_authority = ""
        for kind, source, target in (("set", op.set, sets), ("add", op.add, adds)):
            for name in sorted(source):
                value = source[name]
                key = f".{side}.{kind}.{name}"
                if not name:
                    hw.error("header name cannot be empty", key)
                    continue
                if problem := _header_value_problem(value):
                    hw.error(problem, key)
                lname = name.lower()
                if side == "request" and lname in (":authority", "host"):
                    if problem := wire.authority_problem(value):
                        hw.error(problem, key)
                    if kind == "set":
                        set_authority = value
                    else:
                        add_authority = value
                    continue
                if not lname.startswith(":") and (problem := wire.header_name_problem(name)):
                    hw.error(problem, key)
                    continue
                if lname.startswith(":") or lname == "host":
                    hw.error(f'invalid header "{name}": ' + ("cannot set Host header" if lname == "host" else 'header cannot have ":" prefix'), key)
                    continue
                target.append((lname, value))
        removes = []
        for j, name in enumerate(op.remove):
            lname = name.lower()
            if not name:
                hw.error("header name cannot be empty", f".{side}.remove[{j}]")
            elif not lname.startswith(":") and (problem := wire.header_name_problem(name)):
                hw.error(problem, f".{side}.remove[{j}]")
            elif lname == "host" or lname.startswith(":"):
                hw.error(f'invalid header "{name}": ' + ("cannot set Host header" if lname == "host" else 'header cannot have ":" prefix'), f".{side}.remove[{j}]")
            else:
                removes.append(lname)
        if side == "request":
            if set_authority and add_authority:
                hw.error(f'authority header cannot be set multiple times: have "{set_authority}", attempting to set "{add_authority}"', f".{side}")
            authority = set_authority or add_authority
        ops[side] = table.HeaderOps(set=tuple(sets), add=tuple(adds), remove=tuple(removes)) if (sets or adds or removes) else None
    if ops["request"] is None and ops["response"] is None and not authority:
        return None
    return table.HeaderRules(request=ops["request"], response=ops["response"], authority=authority)


def _translate_rewrite(w: Where, rw: istio.HTTPRewrite, matches: list[istio.HTTPMatchRequest]) -> table.Rewrite | None:
    """`uri` is Envoy's prefix_rewrite: the matched prefix is replaced, or the whole path when the match is
    exact or regex (Envoy's matched "prefix" is then the whole path)."""
    ww = w.at(".rewrite")
    if not rw.uri and rw.uri_regex_rewrite is None and not rw.authority:
        ww.error("rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified")
        return None
    prefix = regex = None
    substitution = ""
    if rw.uri_regex_rewrite is not None:
        rr = rw.uri_regex_rewrite
        if not rr.match or not rr.rewrite:
            ww.error("UriRegexRewrite requires both Rewrite and Match fields to be specified", ".uriRegexRewrite")
            return None
        regex = _regex(ww, rr.match, ".uriRegexRewrite.match")
        if regex is None:
            return None
        try:
            substitution = translate_re2_rewrite(rr.rewrite, regex_groups(regex))
        except RegexError as exc:
            ww.error(str(exc), ".uriRegexRewrite.rewrite")
            return None
    elif rw.uri:
        if problem := wire.path_problem(rw.uri, "rewrite uri", absolute=False):
            ww.error(problem, ".uri")
            return None
        prefix = rw.uri  # per route, an exact or regex path match turns it into full_path (routes.py _route_rewrite)
    if rw.uri_regex_rewrite is not None and (problem := wire.path_problem(rw.uri_regex_rewrite.rewrite, "uriRegexRewrite.rewrite", absolute=False)):
        ww.error(problem, ".uriRegexRewrite.rewrite")
        return None
    if rw.authority and (problem := wire.authority_problem(rw.authority)):
        ww.error(problem, ".authority")
        return None
    return table.Rewrite(prefix=prefix, regex=regex, regex_substitution=substitution, authority=rw.authority)


def _validate_redirect(w: Where, r: istio.HTTPRedirect, matches: list[istio.HTTPMatchRequest]) -> bool:
    rw = w.at(".redirect")
    if r.prefix_rewrite:
        for m in matches:
            if m.uri is not None and m.uri.prefix is None:
                rw.error("redirect prefix_rewrite requires all URI matches to use prefix match type", ".prefixRewrite")
                break
    if not (r.uri or r.prefix_rewrite or r.authority or r.port is not None or r.derive_port is not None or r.scheme):
        rw.error("redirect must specify URI, authority, scheme, or port")
    if r.redirect_code and not 300 <= r.redirect_code <= 399:
        rw.error(f"{r.redirect_code} is not a valid redirect code, must be 3xx", ".redirectCode")
        return False
    if r.scheme and r.scheme not in ("http", "https"):
        rw.error('invalid redirect scheme, must be "http" or "https"', ".scheme")
    if r.port is not None and not 1 <= r.port <= 65535:
        rw.error(f"port number {r.port} must be in the range 1..65535", ".port")
    # What becomes the Location header (edge/wire.py): a CR or LF here would split the response.
    wire_ok = True
    for field_name, value, check in (
        (".uri", r.uri, lambda v: wire.path_problem(v, "redirect uri")),
        (".prefixRewrite", r.prefix_rewrite, lambda v: wire.path_problem(v, "redirect prefixRewrite", absolute=False)),
        (".authority", r.authority, wire.authority_problem),
    ):
        if value and (problem := check(value)):
            rw.error(problem, field_name)
            wire_ok = False
    if not wire_ok:
        return False
    if r.redirect_code and r.redirect_code not in SUPPORTED_REDIRECT_CODES:
        rw.warn(f"Redirect Code {r.redirect_code} is not yet supported (Envoy takes 301, 302, 303, 307, 308): the rule has no action and is left out", ".redirectCode")
        return False
    return True


def _translate_direct(w: Where, d: istio.HTTPDirectResponse) -> table.DirectResponse | None:
    dw = w.at(".directResponse")
    if not 200 <= d.status <= 599:
        dw.error(f"HTTP status {d.status} is not in range 200-599", ".status")
    body = b""
    if d.body is not None:
        if d.body.string is not None:
            body = d.body.string.encode("utf-8")
        elif d.body.bytes is not None:
            try:
                body = base64.b64decode(d.body.bytes, validate=True)
            except (binascii.Error, ValueError):
                dw.error("body.bytes is not valid base64", ".body.bytes")
    if len(body) > MAX_DIRECT_RESPONSE_BYTES:
        dw.error("large direct_responses may impact control plane performance, must be less than 1MB", ".body")
    elif len(body) > WARN_DIRECT_RESPONSE_BYTES:
        dw.warn("large direct_responses may impact control plane performance", ".body")
    return table.DirectResponse(status=d.status, body=body)


def _translate_retry(w: Where, r: istio.HTTPRetry) -> table.RetryPolicy | None:
    """retry.ConvertPolicy; an explicit `attempts: 0` is RetryPolicy(attempts=0): no retries at all."""
    rw = w.at(".retries")
    if r.attempts < 0:
        rw.error("attempts cannot be negative", ".attempts")
    if r.attempts == 0 and (r.per_try_timeout is not None or r.retry_on or r.retry_remote_localities is not None):
        rw.error("http retry policy configured when attempts are set to 0 (disabled)")
    codes: list[int] = []
    tokens: list[str] = []
    if r.retry_on:
        for policy in r.retry_on.split(","):
            number = int(policy) if policy.isdigit() else 0
            if number not in HTTP_STATUS_CODES and policy not in RETRY_ON_POLICIES:
                rw.error(f'"{policy}" is not a valid retryOn policy', ".retryOn")
        for part in (p.strip() for p in r.retry_on.split(",")):
            if not part:
                continue
            if part.isdigit() and int(part) in HTTP_STATUS_CODES:
                codes.append(int(part))
            else:
                tokens.append(part)
        if codes and "retriable-status-codes" not in tokens:
            tokens.append("retriable-status-codes")
    for name, value in (("perTryTimeout", r.per_try_timeout), ("backoff", r.backoff)):
        if value is not None and (problem := duration_problem(value)):
            rw.error(problem, f".{name}")
    if r.attempts <= 0:
        return table.RetryPolicy(attempts=0)
    return table.RetryPolicy(
        attempts=r.attempts,
        per_try_timeout_s=float(r.per_try_timeout or 0.0),
        retry_on=tuple(tokens) if r.retry_on else DEFAULT_RETRY_ON,
        retriable_status_codes=tuple(codes),
        backoff_base_s=float(r.backoff) if r.backoff is not None else 0.025,
        # Resolved per route: True unless set, or consistent hashing turns it off (routes.py _build_route).
        ignore_previous_hosts=r.retry_ignore_previous_hosts if r.retry_ignore_previous_hosts is not None else True,
    )


def _translate_fault(w: Where, f: istio.HTTPFaultInjection) -> table.Fault | None:
    """TranslateFault: an absent percentage is 0 % (legacy delay.percent honoured); ppm precision."""
    fw = w.at(".fault")
    if f.delay is None and f.abort is None:
        fw.error("HTTP fault injection must have an abort and/or a delay")
        return None
    delay_s = 0.0
    delay_ppm = 0
    if f.delay is not None:
        d = f.delay
        if problem := _percent_problem(d.percentage):
            fw.error(problem, ".delay.percentage")
        if d.exponential_delay is not None:
            fw.error("exponentialDelay not supported yet", ".delay.exponentialDelay")
        elif d.fixed_delay is None:
            fw.warn("delay has no fixedDelay: ignored", ".delay")
        else:
            if problem := duration_problem(d.fixed_delay):
                fw.error(problem, ".delay.fixedDelay")
            if not 0 <= d.percent <= 100:
                fw.error(f"percentage {d.percent} is not in range 0..100", ".delay.percent")
            delay_s = float(d.fixed_delay)
            delay_ppm = ppm(d.percentage) if d.percentage is not None else d.percent * PPM_PER_PERCENT
    abort_status = 0
    grpc = ""
    abort_ppm = 0
    if f.abort is not None:
        a = f.abort
        if problem := _percent_problem(a.percentage):
            fw.error(problem, ".abort.percentage")
        if a.http_status is not None:
            if not 200 <= a.http_status <= 599:
                fw.error(f"HTTP status {a.http_status} is not in range 200-599", ".abort.httpStatus")
            abort_status = a.http_status
        elif a.grpc_status is not None:
            if a.grpc_status not in GRPC_STATUSES:
                fw.error(f"gRPC status {a.grpc_status!r} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'", ".abort.grpcStatus")
            grpc = a.grpc_status
        elif a.http2_error is not None:
            fw.error("HTTP/2 abort fault injection not supported yet", ".abort.http2Error")
        else:
            fw.warn("abort configured, but error type not set: ignored", ".abort")
        if abort_status or grpc:
            abort_ppm = ppm(a.percentage) if a.percentage is not None else 0
    if not delay_s and not (abort_status or grpc):
        return None
    return table.Fault(delay_s=delay_s, delay_ppm=delay_ppm, abort_status=abort_status, abort_grpc_status=grpc, abort_ppm=abort_ppm)


def _translate_cors(w: Where, c: istio.CorsPolicy) -> table.Cors:
    cw = w.at(".corsPolicy")
    origins = []
    if c.allow_origins:
        for j, o in enumerate(c.allow_origins):
            value = o.exact or o.prefix or o.regex
            if not value:
                cw.error(f"'{value or ''}' is not a valid match type for CORS allow origins", f".allowOrigins[{j}]")
                continue
            m = _string_matcher(cw, o, f".allowOrigins[{j}]")
            if m is not None:
                origins.append(m)
    else:
        origins = [table.StringMatcher(kind=table.MATCH_EXACT, value=o) for o in c.allow_origin]
    for j, method in enumerate(c.allow_methods):
        if method not in CORS_METHODS:
            cw.error(f'"{method}" is not a supported HTTP method', f".allowMethods[{j}]")
    for field_name, names in (("allowHeaders", c.allow_headers), ("exposeHeaders", c.expose_headers)):
        for j, name in enumerate(names):
            if not name:
                cw.error("header name cannot be empty", f".{field_name}[{j}]")
            elif name != "*" and (problem := wire.header_name_problem(name)):
                cw.error(problem, f".{field_name}[{j}]")
    max_age = ""
    if c.max_age is not None:
        if problem := duration_problem(c.max_age):
            cw.error(problem, ".maxAge")
        if c.max_age != int(c.max_age):
            cw.error("max_age duration is accurate only to seconds precision", ".maxAge")
        max_age = str(int(c.max_age))
    return table.Cors(
        allow_origins=tuple(origins),
        allow_methods=",".join(c.allow_methods),
        allow_headers=",".join(c.allow_headers),
        expose_headers=",".join(c.expose_headers),
        max_age=max_age,
        allow_credentials=bool(c.allow_credentials),
        unmatched_preflights="IGNORE" if c.unmatched_preflights == "IGNORE" else "FORWARD",
    )


def _validate_mirrors(w: Where, h: istio.HTTPRoute) -> None:
    if h.mirror_percent is not None:
        if h.mirror_percent > 100:
            w.error(f"mirror_percent must have a max value of 100 (it has {h.mirror_percent})", ".mirrorPercent")
        w.warn('using deprecated setting "mirrorPercent", use "mirrorPercentage" instead', ".mirrorPercent")
    if h.mirror is not None:
        validate_destination(w, h.mirror, ".mirror")
    for j, m in enumerate(h.mirrors):
        validate_destination(w, m.destination, f".mirrors[{j}].destination")


def _header_value_problem(value: str) -> str | None:
    """ValidateHTTPHeaderValue: no control characters (edge/wire.py); `%` starts an Envoy %VARIABLE% (or is
    written %%)."""
    if problem := wire.header_value_problem(value):
        return problem
    i = 0
    while i < len(value):
        if value[i] != "%":
            i += 1
            continue
        if value[i + 1 : i + 2] == "%":
            i += 2
            continue
        end = value.find("%", i + 1)
        if end < 0:
            return f"header value configuration: invalid header configuration. Un-escaped % in {value!r}"
        i = end + 1
    return None


def _percent_problem(p: istio.Percent | None) -> str | None:
    if p is not None and 0.0 < p.value < 0.0001:
        return f"percentage {p.value} is neither 0.0, nor in range [0.0001, 100.0]"
    return None
