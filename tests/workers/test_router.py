# workers/router.py: pure, table-driven tests on hand-built RouteConfigs (no compiler involved).
from __future__ import annotations

import pytest

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
)
from workers.router import Router, string_test


class Req:
    def __init__(self, path="/", query="", headers=(), method="GET", authority="h.com", scheme="http"):
        self.path = path
        self.query = query
        self.headers = [(k.encode(), v.encode()) for k, v in headers]
        self.method = method
        self.authority = authority
        self.scheme = scheme


def sm(kind: int, value: str = "", ignore_case: bool = False) -> StringMatcher:
    return StringMatcher(kind=kind, value=value, ignore_case=ignore_case)


def config(domains_by_name: dict[str, tuple[str, ...]]) -> RouteConfig:
    vhosts = tuple(VirtualHost(name=n, domains=d, routes=(Route(name=n),)) for n, d in sorted(domains_by_name.items()))
    exact, suffix, wildcard = {}, {}, -1
    for i, vh in enumerate(vhosts):
        for d in vh.domains:
            if d == "*":
                wildcard = i
            elif d.startswith("*"):
                suffix[d[1:]] = i
            else:
                exact[d] = i
    return RouteConfig(name="t", virtual_hosts=vhosts, exact_hosts=exact, suffix_hosts=suffix, wildcard_host=wildcard)


HOSTS = config(
    {
        "exact": ("api.example.com", "[::1]", "10.0.0.1"),
        "wild": ("*.example.com",),
        "deeper": ("*.eu.example.com",),
        "any": ("*",),
    }
)


@pytest.mark.parametrize(
    "host, expected",
    [
        ("api.example.com", "exact"),
        ("API.EXAMPLE.com", "exact"),
        ("api.example.com:8080", "exact"),
        ("api.example.com:", "exact"),
        ("[::1]:443", "exact"),
        ("10.0.0.1:80", "exact"),
        ("x.example.com", "wild"),
        ("a.b.example.com", "wild"),
        ("x.eu.example.com", "deeper"),  # the longest suffix wins
        ("eu.example.com", "wild"),
        ("example.com", "any"),  # *.example.com needs at least one character before the dot
        (".example.com", "any"),
        ("", "any"),
        ("other", "any"),
    ],
)
def test_find_virtual_host(host, expected):
    assert Router(HOSTS).find_virtual_host(host).name == expected


def test_no_wildcard_means_no_host():
    router = Router(config({"exact": ("a.com",), "wild": ("*.b.com",)}))
    assert router.find_virtual_host("c.com") is None
    assert router.find_virtual_host("b.com") is None


def test_suffix_wildcards_without_a_dot_are_probed_at_every_position():
    router = Router(config({"dash": ("*-prod.example.com",), "any": ("*",)}))
    assert router.find_virtual_host("web-prod.example.com").name == "dash"
    assert router.find_virtual_host("-prod.example.com").name == "any"


def routes_config(*routes: Route) -> tuple[Router, VirtualHost]:
    vh = VirtualHost(name="h", domains=("*",), routes=routes)
    router = Router(RouteConfig(name="t", virtual_hosts=(vh,), wildcard_host=0))
    return router, vh


def r(name: str, path: StringMatcher | None = None, headers=(), query=()) -> Route:
    return Route(name=name, match=RouteMatch(path=path, headers=tuple(headers), query=tuple(query)))


PATHS = (
    r("exact", sm(MATCH_EXACT, "/exact")),
    r("exact-nocase", sm(MATCH_EXACT, "/NoCase", ignore_case=True)),
    r("prefix-nocase", sm(MATCH_PREFIX, "/Pre/", ignore_case=True)),
    r("regex", sm(MATCH_REGEX, "/r/[0-9]+")),
    r("prefix", sm(MATCH_PREFIX, "/p")),
    r("empty-prefix-is-any", sm(MATCH_PREFIX, "")),
)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/exact", "exact"),
        ("/EXACT", "empty-prefix-is-any"),
        ("/nocase", "exact-nocase"),
        ("/NOCASE", "exact-nocase"),
        ("/pre/x", "prefix-nocase"),
        ("/PRE/X", "prefix-nocase"),
        ("/r/12", "regex"),
        ("/r/12/", "empty-prefix-is-any"),  # full match, like RE2 in Envoy
        ("/x/r/12", "empty-prefix-is-any"),
        ("/pxyz", "prefix"),
    ],
)
def test_path_matching(path, expected):
    router, vh = routes_config(*PATHS)
    assert router.match(vh, Req(path)).name == expected


# Envoy's path_separated_prefix (route_components.proto): the path equals the prefix or continues it with "/".
SEGMENT_PATHS = (
    r("foo", sm(MATCH_PATH_PREFIX, "/foo")),
    r("nocase", sm(MATCH_PATH_PREFIX, "/Bar", ignore_case=True)),
    r("rest", sm(MATCH_PREFIX, "/")),
)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/foo", "foo"),
        ("/foo/", "foo"),
        ("/foo/x/y", "foo"),
        ("/foobar", "rest"),
        ("/fo", "rest"),
        ("/FOO", "rest"),
        ("/bar/x", "nocase"),
        ("/BAR", "nocase"),
        ("/barx", "rest"),
    ],
)
def test_path_separated_prefix(path, expected):
    router, vh = routes_config(*SEGMENT_PATHS)
    assert router.match(vh, Req(path)).name == expected
    explained = router.explain("h.com", Req(path))
    assert explained.route.name == expected
    assert string_test(SEGMENT_PATHS[0].match.path)(path) == (expected == "foo")


HEADERS = (
    r("exact", headers=[HeaderMatcher(name="x-a", matcher=sm(MATCH_EXACT, "1"))]),
    r("prefix", headers=[HeaderMatcher(name="x-b", matcher=sm(MATCH_PREFIX, "ab"))]),
    r("regex", headers=[HeaderMatcher(name="x-c", matcher=sm(MATCH_REGEX, "[a-z]+"))]),
    r("present", headers=[HeaderMatcher(name="x-d", matcher=sm(MATCH_PRESENT))]),
    r("and", headers=[HeaderMatcher(name="x-e", matcher=sm(MATCH_EXACT, "1")), HeaderMatcher(name="x-f", matcher=sm(MATCH_EXACT, "2"))]),
    r("not-prod", sm(MATCH_PREFIX, "/inv"), headers=[HeaderMatcher(name="x-env", matcher=sm(MATCH_EXACT, "prod"), invert=True)]),
    r("not-present", sm(MATCH_PREFIX, "/np"), headers=[HeaderMatcher(name="x-env", matcher=sm(MATCH_PRESENT), invert=True)]),
    r("empty-exact", sm(MATCH_PREFIX, "/ee"), headers=[HeaderMatcher(name="x-g", matcher=sm(MATCH_EXACT, ""))]),
    r("method", sm(MATCH_PREFIX, "/m"), headers=[HeaderMatcher(name=":method", matcher=sm(MATCH_EXACT, "DELETE"))]),
    r("authority", sm(MATCH_PREFIX, "/au"), headers=[HeaderMatcher(name=":authority", matcher=sm(MATCH_REGEX, "h\\.com:[0-9]+"))]),
    r("scheme", sm(MATCH_PREFIX, "/s"), headers=[HeaderMatcher(name=":scheme", matcher=sm(MATCH_EXACT, "https"))]),
    r("pseudo-path", sm(MATCH_PREFIX, "/pp"), headers=[HeaderMatcher(name=":path", matcher=sm(MATCH_EXACT, "/pp?x=1"))]),
    r("fallback"),
)


@pytest.mark.parametrize(
    "path, headers, kw, expected",
    [
        ("/", [("x-a", "1")], {}, "exact"),
        ("/", [("x-a", "11")], {}, "fallback"),
        ("/", [("x-b", "abc")], {}, "prefix"),
        ("/", [("x-c", "abc")], {}, "regex"),
        ("/", [("x-c", "ab1")], {}, "fallback"),
        ("/", [("x-c", "ab"), ("x-c", "cd")], {}, "fallback"),  # joined "ab,cd"
        ("/", [("x-d", "")], {}, "present"),
        ("/", [("x-e", "1")], {}, "fallback"),
        ("/", [("x-e", "1"), ("x-f", "2")], {}, "and"),
        ("/inv", [], {}, "not-prod"),  # missing counts as ""
        ("/inv", [("x-env", "prod")], {}, "fallback"),
        ("/inv", [("x-env", "prod"), ("x-env", "dev")], {}, "not-prod"),  # "prod,dev"
        ("/np", [], {}, "not-present"),
        ("/np", [("x-env", "prod")], {}, "fallback"),
        ("/ee", [("x-g", "")], {}, "empty-exact"),
        ("/ee", [], {}, "fallback"),  # an exact "" still needs the header
        ("/m", [], {"method": "DELETE"}, "method"),
        ("/au", [], {"authority": "h.com:8080"}, "authority"),
        ("/au", [], {"authority": "h.com"}, "fallback"),
        ("/s", [], {"scheme": "https"}, "scheme"),
        ("/pp", [], {"query": "x=1"}, "pseudo-path"),
    ],
)
def test_header_matching(path, headers, kw, expected):
    router, vh = routes_config(*HEADERS)
    assert router.match(vh, Req(path, headers=headers, **kw)).name == expected


QUERY = (
    r("exact", query=[QueryMatcher(name="v", matcher=sm(MATCH_EXACT, "2"))]),
    r("empty", query=[QueryMatcher(name="flag", matcher=sm(MATCH_EXACT, ""))]),
    r("regex", query=[QueryMatcher(name="id", matcher=sm(MATCH_REGEX, "[0-9]+"))]),
    r("present", query=[QueryMatcher(name="debug", matcher=sm(MATCH_PRESENT))]),
    r("prefix", query=[QueryMatcher(name="p", matcher=sm(MATCH_PREFIX, "ab"))]),
    r("fallback"),
)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("v=2", "exact"),
        ("a=1&v=2", "exact"),
        ("v=2&v=3", "exact"),
        ("v=3&v=2", "fallback"),  # the first value counts
        ("flag", "empty"),
        ("flag=", "empty"),
        ("flag=0", "fallback"),
        ("id=42", "regex"),
        ("id=42a", "fallback"),
        ("id=%34%32", "regex"),  # percent-decoded
        ("debug", "present"),
        ("debug=yes", "present"),
        ("p=abc", "prefix"),
        ("", "fallback"),
        ("&&", "fallback"),
    ],
)
def test_query_matching(query, expected):
    router, vh = routes_config(*QUERY)
    assert router.match(vh, Req("/", query=query)).name == expected


def test_first_match_wins_and_a_miss_is_none():
    router, vh = routes_config(r("a", sm(MATCH_PREFIX, "/a")), r("ab", sm(MATCH_PREFIX, "/ab")))
    assert router.match(vh, Req("/abc")).name == "a"
    assert router.match(vh, Req("/b")) is None


class Untouchable(list):
    """A header list that fails the test when iterated: proves the router did not build a header map."""

    def __iter__(self):
        raise AssertionError("headers were read although no route needs them")


def test_headers_and_query_are_only_read_when_a_route_needs_them():
    router, vh = routes_config(r("p", sm(MATCH_PREFIX, "/p")), r("q", query=[QueryMatcher(name="x", matcher=sm(MATCH_PRESENT))]))
    req = Req("/p")
    req.headers = Untouchable()
    assert router.match(vh, req).name == "p"
    req = Req("/z", query="x")
    req.headers = Untouchable()
    assert router.match(vh, req).name == "q"


def test_only_header_names_the_routes_use_are_collected():
    router, vh = routes_config(r("h", headers=[HeaderMatcher(name="x-a", matcher=sm(MATCH_EXACT, "1"))]))
    req = Req("/", headers=[("cookie", "c" * 10_000), ("x-a", "1")])
    assert router.match(vh, req).name == "h"
    plans = router._hosts[id(vh)]
    assert plans.header_names == frozenset({b"x-a"})


def test_explain_lists_every_route_tried():
    router, vh = routes_config(
        r("a", sm(MATCH_EXACT, "/a")),
        r("b", sm(MATCH_PREFIX, "/x"), headers=[HeaderMatcher(name="x-user", matcher=sm(MATCH_EXACT, "jason"))]),
        r("c", sm(MATCH_PREFIX, "/x"), query=[QueryMatcher(name="v", matcher=sm(MATCH_EXACT, "2"))]),
        r("d", sm(MATCH_PREFIX, "/x"), headers=[HeaderMatcher(name="x-env", matcher=sm(MATCH_EXACT, "prod"), invert=True)]),
        r("e", sm(MATCH_PREFIX, "/x")),
    )
    ex = router.explain("H.com:80", Req("/x", query="v=3", headers=[("x-user", "bob"), ("x-env", "prod")]))
    assert ex.host == "h.com"
    assert ex.host_reason == "the catch-all domain *"
    assert ex.route.name == "e"
    assert [(route.name, why) for route, why in ex.tried] == [
        ("a", "path '/x' does not match exact '/a'"),
        ("b", "header x-user is 'bob', which does not match exact 'jason'"),
        ("c", "query parameter v is '3', which does not match exact '2'"),
        ("d", "header x-env is 'prod', which must not match exact 'prod' (withoutHeaders)"),
    ]


def test_explain_without_a_virtual_host_names_the_hosts_served():
    ex = Router(config({"a": ("a.com",), "w": ("*.b.com",)})).explain("c.com", Req("/"))
    assert ex.virtual_host is None
    assert ex.host_reason == "no virtual host for c.com; hosts served here: *.b.com, a.com"
    ex = Router(config({"w": ("*.b.com",)})).explain("x.b.com", Req("/"))
    assert ex.host_reason == "wildcard domain *.b.com (the longest matching suffix)"


def test_router_agrees_with_explain_on_random_requests():
    import random

    rng = random.Random(7)
    router, vh = routes_config(*HEADERS, *QUERY)
    for _ in range(300):
        path = rng.choice(["/", "/inv", "/np", "/ee", "/m", "/au", "/s", "/pp"])
        headers = [(rng.choice(["x-a", "x-b", "x-c", "x-d", "x-env", "x-g"]), rng.choice(["", "1", "ab", "prod", "abc"])) for _ in range(rng.randint(0, 3))]
        req = Req(path, query=rng.choice(["", "v=2", "flag", "id=1", "x=1"]), headers=headers, method=rng.choice(["GET", "DELETE"]), scheme=rng.choice(["http", "https"]))
        assert router.match(vh, req) is router.explain("h.com", req).route


# ---------------------------------------------------------------------------------------------------------
# string_test: the one StringMatcher predicate (routes' headers and query parameters, CORS origins)


@pytest.mark.parametrize(
    "kind, value, ignore_case, probe, expected",
    [
        (MATCH_EXACT, "Foo", False, "Foo", True),
        (MATCH_EXACT, "Foo", False, "foo", False),
        (MATCH_EXACT, "Foo", True, "fOO", True),
        (MATCH_PREFIX, "/Api", False, "/Api/v1", True),
        (MATCH_PREFIX, "/Api", False, "/api/v1", False),
        (MATCH_PREFIX, "/Api", True, "/aPI/v1", True),
        (MATCH_REGEX, "a+b", False, "aaab", True),
        (MATCH_REGEX, "a+b", False, "aaabc", False),  # a full match, as Envoy's safe_regex
        # ignore_case has no effect on a regex (Envoy's StringMatcher): neither the pattern nor the value change.
        (MATCH_REGEX, "A+b", True, "AAb", True),
        (MATCH_REGEX, "A+b", True, "aab", False),
        (MATCH_PRESENT, "", False, "anything", True),
    ],
)
def test_string_test(kind, value, ignore_case, probe, expected):
    assert bool(string_test(StringMatcher(kind=kind, value=value, ignore_case=ignore_case))(probe)) is expected
