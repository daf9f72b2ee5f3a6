# Pure request matching on a compiled RouteConfig: virtual host by Host, then the first route that matches.
#
# Rules (Envoy's, as an Istio gateway configures it):
# - Host lookup ignores the port (ignore_port_in_host_matching) and case: exact domain → the longest
#   `*suffix` wildcard (a wildcard matches at least one character: `*.foo.com` never matches `foo.com`) → `*`.
#   Once a virtual host is chosen, only its routes are tried; there is no fallback to another host.
# - Routes are tried in order; the first whose every condition holds wins. A miss is None (404 NR).
# - Path: exact / prefix (plain string prefix, `/api` matches `/apiv2`) / path-separated prefix (`/api` matches
#   `/api` and `/api/v2`, not `/apiv2`: Envoy's path_separated_prefix) / regex, a full match as RE2 in Envoy;
#   ignore_case applies to exact and prefix (no effect on a regex, as Envoy's StringMatcher). The path has no
#   query string. Header and query tests are string_test predicates, CORS origins too.
# - Headers: repeated headers are joined with ","; a missing header never matches, except that an inverted
#   (withoutHeaders) non-presence matcher treats it as "" (treat_missing_header_as_empty). `:method`,
#   `:authority` (the raw Host, port included), `:scheme` and `:path` (path and query) are pseudo-headers.
# - Query parameters: the first value of a key, percent-decoded; `?k` and `?k=` both have the value "".
# - Everything derived from the table (regexes, lookup dicts, per-route plans) is built once in Router();
#   per request only what a route needs is computed: the header map only for routes with header conditions
#   (and only of the names they use), the query only for routes with query conditions, each at most once.
from __future__ import annotations

from urllib.parse import unquote

from edge.table import (
    MATCH_EXACT,
    MATCH_PATH_PREFIX,
    MATCH_PREFIX,
    MATCH_PRESENT,
    MATCH_REGEX,
    HeaderMatcher,
    QueryMatcher,
    Route,
    RouteConfig,
    RouteMatch,
    StringMatcher,
    VirtualHost,
    decode_virtual_host,
)
from workers.regex import Regex

# Path tests of a route plan.
_PATH_ANY = 0
_PATH_EXACT = 1
_PATH_PREFIX = 2
_PATH_EXACT_NOCASE = 3
_PATH_PREFIX_NOCASE = 4
_PATH_REGEX = 5
_PATH_SEGMENTS = 6  # path-separated prefix: path_value exactly, or path_dir (path_value + "/") as a prefix
_PATH_SEGMENTS_NOCASE = 7

# Where a header condition reads its value.
_SRC_HEADER = 0
_SRC_METHOD = 1
_SRC_AUTHORITY = 2
_SRC_SCHEME = 3
_SRC_PATH = 4
_SRC_CLAIM = 5  # a JWT claim of the verified token (request.auth.claims), Istio's claim-based routing
_PSEUDO_SOURCES = {":method": _SRC_METHOD, ":authority": _SRC_AUTHORITY, ":scheme": _SRC_SCHEME, ":path": _SRC_PATH}


def string_test(m: StringMatcher):
    """The predicate of one StringMatcher: the one place this rule lives (routes' headers and query parameters here,
    CORS origins in workers/route_policies.py). Regexes are full matches, as Envoy's RE2 safe_regex; ignore_case
    applies to exact and prefix and has no effect on a regex (Envoy's StringMatcher). MATCH_PRESENT is true: the
    caller checks presence."""
    value = m.value
    kind = m.kind
    if kind == MATCH_PRESENT:
        return lambda s: True
    if kind == MATCH_REGEX:
        return Regex(value).fullmatch
    if kind == MATCH_PATH_PREFIX:
        if m.ignore_case:
            value = value.lower()
            return lambda s: s.lower() == value or s.lower().startswith(value + "/")
        return lambda s: s == value or s.startswith(value + "/")
    if m.ignore_case:
        value = value.lower()
        if kind == MATCH_PREFIX:
            return lambda s: s.lower().startswith(value)
        return lambda s: s.lower() == value
    if kind == MATCH_PREFIX:
        return lambda s: s.startswith(value)
    assert kind == MATCH_EXACT
    return lambda s: s == value


class _HeaderTest:
    __slots__ = ("name", "key", "source", "present", "invert", "test", "claim")

    def __init__(self, h: HeaderMatcher):
        self.name = h.name
        self.key = h.name.encode("latin-1")
        self.claim = h.claim
        self.source = _SRC_CLAIM if h.claim else _PSEUDO_SOURCES.get(h.name, _SRC_HEADER)
        self.present = h.matcher.kind == MATCH_PRESENT
        self.invert = h.invert
        self.test = string_test(h.matcher)


class _QueryTest:
    __slots__ = ("name", "present", "test")

    def __init__(self, q: QueryMatcher):
        self.name = q.name
        self.present = q.matcher.kind == MATCH_PRESENT
        self.test = string_test(q.matcher)


class _Plan:
    """The conditions of one RouteMatch, precompiled; the path test is inlined in Router.match. Plans are
    interned by RouteMatch value, so virtual hosts with the same match structure share them (and keep them
    in the CPU cache when a table has thousands of hosts)."""

    __slots__ = ("path_kind", "path_value", "path_dir", "path_regex", "headers", "query")

    def __init__(self, match: RouteMatch):
        p = match.path
        self.path_regex = None
        self.path_value = ""
        self.path_dir = ""
        if p is not None and p.kind == MATCH_PATH_PREFIX:
            self.path_kind = _PATH_SEGMENTS_NOCASE if p.ignore_case else _PATH_SEGMENTS
            self.path_value = p.value.lower() if p.ignore_case else p.value
            self.path_dir = self.path_value + "/"
        elif p is None or p.kind == MATCH_PRESENT or (p.kind == MATCH_PREFIX and p.value == ""):
            self.path_kind = _PATH_ANY
        elif p.kind == MATCH_REGEX:
            self.path_kind = _PATH_REGEX
            self.path_regex = Regex(p.value)
        elif p.ignore_case:
            self.path_kind = _PATH_EXACT_NOCASE if p.kind == MATCH_EXACT else _PATH_PREFIX_NOCASE
            self.path_value = p.value.lower()
        else:
            self.path_kind = _PATH_EXACT if p.kind == MATCH_EXACT else _PATH_PREFIX
            self.path_value = p.value
        self.headers = tuple(_HeaderTest(h) for h in match.headers)
        self.query = tuple(_QueryTest(q) for q in match.query)


class _HostPlans:
    """A virtual host's routes and, index for index, the (shared) plans of their matches."""

    __slots__ = ("vhost", "routes", "plans", "header_names")

    def __init__(self, vhost: VirtualHost, interned: "_Interner"):
        self.vhost = vhost
        self.routes = vhost.routes
        self.plans, self.header_names = interned.plans_for(vhost.routes)


class _Interner:
    def __init__(self) -> None:
        self._plans: dict[RouteMatch, _Plan] = {}
        self._sequences: dict[tuple[int, ...], tuple[tuple[_Plan, ...], frozenset]] = {}

    def plan(self, match: RouteMatch) -> _Plan:
        plan = self._plans.get(match)
        if plan is None:
            plan = self._plans[match] = _Plan(match)
        return plan

    def plans_for(self, routes: tuple[Route, ...]) -> tuple[tuple[_Plan, ...], frozenset]:
        plans = tuple(self.plan(r.match) for r in routes)
        key = tuple(map(id, plans))
        shared = self._sequences.get(key)
        if shared is None:
            # Only these request headers are ever looked at for such a vhost.
            names = frozenset(t.key for p in plans for t in p.headers if t.source == _SRC_HEADER)
            shared = self._sequences[key] = (plans, names)
        return shared


class Explanation:
    """What `edge route` prints: the vhost decision and every route tried, with why it did not match."""

    def __init__(self) -> None:
        self.host = ""
        self.virtual_host: VirtualHost | None = None
        self.host_reason = ""
        self.route: Route | None = None
        self.tried: list[tuple[Route, str]] = []  # (route, why it did not match) for routes before the winner

    def __repr__(self) -> str:
        return f"Explanation(host={self.host!r}, vhost={self.virtual_host.name if self.virtual_host else None}, route={self.route.name if self.route else None})"


class Router:
    """Built once per table generation for one RouteConfig. A virtual host's plans are built the first time a
    request names it; in a worker's lazy table (edge/table.decode_table_lazy) that is also when it is decoded, so a
    worker holds only the hosts it serves."""

    __slots__ = ("config", "_vhosts", "_plans", "_exact", "_suffix", "_dot_suffixes", "_wildcard", "_hosts", "_last", "_interner")

    def __init__(self, route_config: RouteConfig):
        self.config = route_config
        self._vhosts = route_config.virtual_hosts  # VirtualHosts, or msgspec.Raw in a lazy table
        self._interner = _Interner()
        self._plans: list[_HostPlans | None] = [None] * len(self._vhosts)  # by index, built on first use
        self._hosts: dict[int, _HostPlans] = {}  # by id of the VirtualHost, for match()
        # The lookup dicts give indexes into virtual_hosts (the table's own dicts, not copies).
        self._exact = route_config.exact_hosts
        self._suffix = route_config.suffix_hosts
        # Istio writes wildcards as "*.x": then only the suffixes that start at a dot need probing.
        self._dot_suffixes = all(k.startswith(".") for k in self._suffix)
        self._wildcard = route_config.wildcard_host if 0 <= route_config.wildcard_host < len(self._vhosts) else None
        # The plans of the host found last: match() is called with it right after find_virtual_host().
        self._last: _HostPlans | None = None

    def _at(self, index: int) -> _HostPlans:
        hp = self._plans[index]
        if hp is None:
            hp = self._plans[index] = _HostPlans(decode_virtual_host(self._vhosts[index]), self._interner)
            self._hosts[id(hp.vhost)] = hp
        return hp

    def virtual_host(self, index: int) -> VirtualHost:
        return self._at(index).vhost

    # -- virtual host ------------------------------------------------------------------------------------

    def find_virtual_host(self, host: str) -> VirtualHost | None:
        hp = self._find(_host_key(host))
        if hp is None:
            return None
        self._last = hp
        return hp.vhost

    def _find(self, h: str) -> _HostPlans | None:
        i = self._exact.get(h)
        if i is not None:
            return self._plans[i] or self._at(i)
        suffix = self._suffix
        if suffix:
            if self._dot_suffixes:
                j = h.find(".", 1)  # the wildcard must match at least one character
                while j > 0:
                    i = suffix.get(h[j:])
                    if i is not None:
                        return self._plans[i] or self._at(i)
                    j = h.find(".", j + 1)
            else:
                for j in range(1, len(h)):
                    i = suffix.get(h[j:])
                    if i is not None:
                        return self._plans[i] or self._at(i)
        return self._at(self._wildcard) if self._wildcard is not None else None

    # -- routes ------------------------------------------------------------------------------------------

    def match(self, vhost: VirtualHost, request) -> Route | None:
        hp = self._last
        if hp is None or hp.vhost is not vhost:
            hp = self._hosts.get(id(vhost))
            if hp is None or hp.vhost is not vhost:
                hp = self._hosts[id(vhost)] = _HostPlans(vhost, self._interner)
        path = request.path
        lowered = None
        headers = None
        query = None
        plans = hp.plans
        for i in range(len(plans)):
            plan = plans[i]
            kind = plan.path_kind
            if kind == _PATH_PREFIX:
                if not path.startswith(plan.path_value):
                    continue
            elif kind == _PATH_EXACT:
                if path != plan.path_value:
                    continue
            elif kind == _PATH_REGEX:
                if not plan.path_regex.fullmatch(path):
                    continue
            elif kind == _PATH_SEGMENTS:
                if path != plan.path_value and not path.startswith(plan.path_dir):
                    continue
            elif kind != _PATH_ANY:
                if lowered is None:
                    lowered = path.lower()
                if kind == _PATH_SEGMENTS_NOCASE:
                    if lowered != plan.path_value and not lowered.startswith(plan.path_dir):
                        continue
                elif kind == _PATH_EXACT_NOCASE:
                    if lowered != plan.path_value:
                        continue
                elif not lowered.startswith(plan.path_value):
                    continue
            if plan.headers:
                if headers is None and hp.header_names:
                    headers = _header_map(request.headers, hp.header_names)
                if not _headers_match(plan.headers, headers, request):
                    continue
            if plan.query:
                if query is None:
                    query = _parse_query(request.query)
                if not _query_match(plan.query, query):
                    continue
            return hp.routes[i]
        return None

    # -- explanation (slow path, for `edge route`) -------------------------------------------------------

    def explain(self, host: str, request) -> Explanation:
        ex = Explanation()
        h = _host_key(host)
        ex.host = h
        index = self._exact.get(h)
        if index is not None:
            ex.host_reason = f"exact domain {h}"
        else:
            for i in range(1, len(h)):
                index = self._suffix.get(h[i:])
                if index is not None:
                    ex.host_reason = f"wildcard domain *{h[i:]} (the longest matching suffix)"
                    break
            if index is None and self._wildcard is not None:
                index = self._wildcard
                ex.host_reason = "the catch-all domain *"
        hp = self._at(index) if index is not None else None
        if hp is None:
            served = sorted({d for i in range(len(self._vhosts)) for d in self.virtual_host(i).domains})
            ex.host_reason = f"no virtual host for {h}; hosts served here: {', '.join(served) or '(none)'}"
            return ex
        vh = ex.virtual_host = hp.vhost
        headers = _header_map(request.headers, None)
        query = _parse_query(request.query)
        for route in vh.routes:
            why = _why_not(route, request, headers, query)
            if why is None:
                ex.route = route
                return ex
            ex.tried.append((route, why))
        return ex


# ---------------------------------------------------------------------------------------------------------
# Request pieces
# ---------------------------------------------------------------------------------------------------------


def _host_key(host: str) -> str:
    """Lowercase, without the port: `Example.COM:8080` → `example.com`, `[::1]:80` → `[::1]`."""
    if ":" in host:
        if host.startswith("["):
            end = host.find("]")
            if end > 0:
                host = host[: end + 1]
        else:
            head, _, port = host.rpartition(":")
            if port.isdigit() or port == "":
                host = head
    return host.lower()


def _header_map(raw_headers, wanted: frozenset | None) -> dict[str, str]:
    """name → value (repeated headers joined with ","), of the wanted names only when given."""
    out: dict[str, str] = {}
    for name, value in raw_headers:
        if wanted is not None and name not in wanted:
            continue
        key = name.decode("latin-1") if isinstance(name, bytes) else name.lower()
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        prior = out.get(key)
        out[key] = text if prior is None else prior + "," + text
    return out


def _parse_query(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not query:
        return out
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in key:
            key = unquote(key)
        if key not in out:
            out[key] = unquote(value) if "%" in value else value
    return out


def _pseudo_value(source: int, request) -> str:
    if source == _SRC_METHOD:
        return request.method
    if source == _SRC_AUTHORITY:
        return request.authority
    if source == _SRC_SCHEME:
        return request.scheme
    return request.path + ("?" + request.query if request.query else "")


def _claim_match(t: _HeaderTest, request) -> bool:
    """Istio's metadata matcher on the verified payload: a string claim that matches, or a list holding one;
    inverted (withoutHeaders) it holds when that is not so, a missing claim or token included."""
    auth = getattr(request, "auth", None)
    value = auth.claims if auth is not None else None
    for part in t.claim:
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        found = bool(t.test(value))
    elif isinstance(value, list):
        found = any(isinstance(v, str) and t.test(v) for v in value)
    else:
        found = False
    return found != t.invert


def _headers_match(tests, headers: dict[str, str] | None, request) -> bool:
    for t in tests:
        if t.source == _SRC_CLAIM:
            if not _claim_match(t, request):
                return False
            continue
        if t.source == _SRC_HEADER:
            value = headers.get(t.name) if headers else None
        else:
            value = _pseudo_value(t.source, request)
        if t.present:
            if (value is not None) == t.invert:
                return False
            continue
        if value is None:
            if not t.invert:
                return False
            value = ""  # treat_missing_header_as_empty
        if t.test(value) == t.invert:
            return False
    return True


def _query_match(tests, query: dict[str, str]) -> bool:
    for t in tests:
        value = query.get(t.name)
        if value is None:
            return False
        if not t.present and not t.test(value):
            return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Explanations
# ---------------------------------------------------------------------------------------------------------

_KIND_WORDS = {MATCH_EXACT: "exact", MATCH_PREFIX: "prefix", MATCH_PATH_PREFIX: "path-separated prefix", MATCH_REGEX: "regex", MATCH_PRESENT: "present"}


def describe_matcher(m: StringMatcher) -> str:
    if m.kind == MATCH_PRESENT:
        return "present"
    return f"{_KIND_WORDS[m.kind]} {m.value!r}" + (" (ignoring case)" if m.ignore_case else "")


def _why_not(route: Route, request, headers: dict[str, str], query: dict[str, str]) -> str | None:
    plan = _Plan(route.match)
    path = request.path
    p = route.match.path
    if p is not None and plan.path_kind != _PATH_ANY:
        ok = {
            _PATH_EXACT: lambda: path == plan.path_value,
            _PATH_PREFIX: lambda: path.startswith(plan.path_value),
            _PATH_EXACT_NOCASE: lambda: path.lower() == plan.path_value,
            _PATH_PREFIX_NOCASE: lambda: path.lower().startswith(plan.path_value),
            _PATH_REGEX: lambda: plan.path_regex.fullmatch(path),
            _PATH_SEGMENTS: lambda: path == plan.path_value or path.startswith(plan.path_dir),
            _PATH_SEGMENTS_NOCASE: lambda: path.lower() == plan.path_value or path.lower().startswith(plan.path_dir),
        }[plan.path_kind]()
        if not ok:
            return f"path {path!r} does not match {describe_matcher(p)}"
    for t, h in zip(plan.headers, route.match.headers):
        if t.source == _SRC_CLAIM and not _claim_match(t, request):
            auth = getattr(request, "auth", None)
            shown = "no verified JWT" if auth is None else f"claims {auth.claims!r}"
            return f"JWT claim {'.'.join(t.claim)} ({shown}) {'must not match' if t.invert else 'does not match'} {describe_matcher(h.matcher)}"
        if not _headers_match((t,), headers, request):
            value = headers.get(t.name) if t.source == _SRC_HEADER else _pseudo_value(t.source, request)
            shown = "missing" if value is None else repr(value)
            if t.invert:
                return f"header {t.name} is {shown}, which must not match {describe_matcher(h.matcher)} (withoutHeaders)"
            return f"header {t.name} is {shown}, which does not match {describe_matcher(h.matcher)}"
    for t, q in zip(plan.query, route.match.query):
        if not _query_match((t,), query):
            value = query.get(t.name)
            shown = "missing" if value is None else repr(value)
            return f"query parameter {t.name} is {shown}, which does not match {describe_matcher(q.matcher)}"
    return None
