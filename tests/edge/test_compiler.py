# Compiler tests in the style of Envoy's route tests: inline Istio YAML in, then requests
# (port, host, path, headers) → which route / destination / action, evaluated by workers/router.py.
from __future__ import annotations

import base64
import re

import pytest

from edge import table
from edge.compiler.hosts import host_matches, intersect_hosts, resolve_gateway_name, resolve_shortname
from edge.compiler.model import DEFAULT_RETRY
from edge.compiler.regex import RegexError, translate_re2, translate_re2_rewrite
from tests.edge.routing import GATEWAY_80, REGISTRY, cluster, compile_text, compiled, messages, outcome, route_for

A = cluster("a.example.com")
B = cluster("b.example.com")
C = cluster("c.example.com")


def vs(name: str, hosts: str, http: str, gateways: str = "[gw]", ns: str = "default", extra: str = "") -> str:
    if http.startswith("    route"):
        http = "  - " + http[4:]  # a lone to(...) is a whole rule
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {ns}{extra}}}
spec:
  hosts: {hosts}
  gateways: {gateways}
  http:
{http}
"""


def to(host: str, **kw) -> str:
    extra = "".join(f", {k}: {v}" for k, v in kw.items())
    return f"    route: [{{destination: {{host: {host}{extra}}}}}]"


# ---------------------------------------------------------------------------------------------------------
# Host names (pkg/config/host/name_test.go cases)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("foo.com", "foo.com", True),
        ("foo.com", "bar.com", False),
        ("*.com", "foo.com", True),
        ("bar.com", "*.com", True),
        ("*.foo.com", "foo.com", False),
        ("*", "foo.com", True),
        ("*", "*.com", True),
        ("*.com", "*.foo.com", True),
        ("*.foo.com", "*.bar.com", False),
    ],
)
def test_host_matches(a, b, expected):
    assert host_matches(a, b) is expected
    assert host_matches(b, a) is expected


@pytest.mark.parametrize(
    "server, vs_hosts, expected",
    [
        (["*.example.com"], ["*"], ["*.example.com"]),
        (["*"], ["foo.com"], ["foo.com"]),
        (["*.foo.com"], ["a.foo.com"], ["a.foo.com"]),
        (["*.example.com"], ["example.com"], []),
        (["a.com", "b.com"], ["*.com", "a.com"], ["a.com", "b.com"]),
        (["*.com"], ["*.a.com", "*.b.com"], ["*.a.com", "*.b.com"]),
    ],
)
def test_intersection_keeps_the_more_specific_name(server, vs_hosts, expected):
    assert intersect_hosts(server, vs_hosts) == expected


@pytest.mark.parametrize(
    "name, ns, expected",
    [
        ("gw", "team", "team/gw"),
        ("other/gw", "team", "other/gw"),
        ("./gw", "team", "team/gw"),
        ("gw.other.svc.cluster.local", "team", "other/gw"),
        ("gw.other", "team", "other/gw"),
    ],
)
def test_gateway_names_resolve(name, ns, expected):
    assert resolve_gateway_name(name, ns) == expected


@pytest.mark.parametrize(
    "host, expected",
    [("reviews", "reviews.shop.svc.cluster.local"), ("reviews.other", "reviews.other"), ("*", "*"), ("10.0.0.1", "10.0.0.1"), ("a.b.c", "a.b.c")],
)
def test_short_names_resolve_in_the_virtual_service_namespace(host, expected):
    assert resolve_shortname(host, "shop", "cluster.local") == expected


# ---------------------------------------------------------------------------------------------------------
# Host precedence: exact → longest *.suffix → *; no fallback across virtual hosts
# ---------------------------------------------------------------------------------------------------------

HOSTS = [
    GATEWAY_80,
    REGISTRY,
    vs("star", '["*"]', to("a.example.com")),
    vs("wild", '["*.example.com"]', to("b.example.com")),
    vs("deep", '["*.eu.example.com"]', to("reviews", subset="v1")),
    vs("api", "[api.example.com]", "  - match: [{uri: {prefix: /v1}}]\n" + to("c.example.com")),
]


@pytest.mark.parametrize(
    "host, path, expected",
    [
        ("api.example.com", "/v1/users", C),  # exact beats every wildcard
        ("API.Example.COM:8080", "/v1", C),  # case and port ignored
        ("api.example.com", "/other", "404"),  # no fallback to *.example.com or *
        ("foo.example.com", "/", B),
        ("a.b.example.com", "/", B),  # a wildcard covers several labels
        ("x.eu.example.com", "/", cluster("reviews.default.svc.cluster.local", 9080, "v1")),  # longest suffix
        ("example.com", "/", A),  # *.example.com does not match example.com
        ("other.org", "/", A),
        ("", "/", A),
    ],
)
def test_host_precedence(host, path, expected):
    assert outcome(compiled(*HOSTS), 80, host, path) == expected


def test_lookup_dicts_are_filled():
    rc = compiled(*HOSTS).listeners[0].route_config
    names = [vh.name for vh in rc.virtual_hosts]
    assert names == sorted(names)
    assert set(rc.exact_hosts) == {"api.example.com"}
    assert set(rc.suffix_hosts) == {".example.com", ".eu.example.com"}
    assert rc.virtual_hosts[rc.wildcard_host].domains == ("*",)
    assert rc.virtual_hosts[rc.exact_hosts["api.example.com"]].name == "api.example.com:80"


def test_server_hosts_limit_what_a_wildcard_virtual_service_serves():
    gw = GATEWAY_80.replace('hosts: ["*"]', "hosts: ['*.shop.com', api.example.com]")
    tbl = compiled(gw, REGISTRY, vs("all", '["*"]', to("a.example.com")))
    rc = tbl.listeners[0].route_config
    assert sorted(d for vh in rc.virtual_hosts for d in vh.domains) == ["*.shop.com", "api.example.com"]
    assert outcome(tbl, 80, "x.shop.com") == A
    assert outcome(tbl, 80, "other.com") == "404"


def test_identical_route_lists_share_one_virtual_host():
    tbl = compiled(GATEWAY_80, REGISTRY, vs("multi", "[x.example.com, y.example.com, '*.z.com']", to("a.example.com")))
    (vh,) = tbl.listeners[0].route_config.virtual_hosts
    assert vh.domains == ("*.z.com", "x.example.com", "y.example.com")
    assert vh.name == "*.z.com:80"


def test_no_virtual_service_gives_a_blackhole_host():
    result = compile_text(GATEWAY_80, REGISTRY)
    (vh,) = result.table.listeners[0].route_config.virtual_hosts
    assert (vh.name, vh.domains, vh.routes) == ("blackhole:80", ("*",), ())
    assert outcome(result.table, 80, "anything") == "404"


# ---------------------------------------------------------------------------------------------------------
# Route order, truncation at a catch-all, merging several VirtualServices for one host
# ---------------------------------------------------------------------------------------------------------


def test_routes_keep_the_order_written_and_the_first_match_wins():
    http = """\
  - match: [{uri: {prefix: /api/v2}}]
    route: [{destination: {host: b.example.com}}]
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: a.example.com}}]
  - match: [{uri: {regex: "/api/v2/.*"}}]
    route: [{destination: {host: c.example.com}}]
"""
    tbl = compiled(GATEWAY_80, REGISTRY, vs("order", "[h.com]", http))
    assert outcome(tbl, 80, "h.com", "/api/v2/x") == B
    assert outcome(tbl, 80, "h.com", "/apiv3") == A  # a prefix is a plain string prefix
    assert outcome(tbl, 80, "h.com", "/ap") == "404"


def test_several_match_blocks_become_one_route_each_with_the_same_action():
    http = """\
  - name: r
    match:
    - {name: one, uri: {exact: /one}}
    - {name: two, uri: {exact: /two}}
    route: [{destination: {host: a.example.com}}]
"""
    tbl = compiled(GATEWAY_80, REGISTRY, vs("blocks", "[h.com]", http))
    routes = tbl.listeners[0].route_config.virtual_hosts[0].routes
    assert [r.name for r in routes] == ["r.one", "r.two"]
    assert routes[0].clusters == routes[1].clusters
    assert outcome(tbl, 80, "h.com", "/two") == A


def test_translation_stops_at_the_first_catch_all_of_a_virtual_service():
    http = """\
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: a.example.com}}]
  - match: [{uri: {prefix: /}}]
    route: [{destination: {host: b.example.com}}]
  - match: [{uri: {prefix: /c}}]
    route: [{destination: {host: c.example.com}}]
"""
    tbl = compiled(GATEWAY_80, REGISTRY, vs("trunc", "[h.com]", http))
    routes = tbl.listeners[0].route_config.virtual_hosts[0].routes
    assert len(routes) == 2
    assert outcome(tbl, 80, "h.com", "/c") == B


@pytest.mark.parametrize(
    "match, catch_all",
    [
        ("{uri: {prefix: /}}", True),
        ("{uri: {regex: '.*'}}", True),
        ("{uri: {prefix: /}, ignoreUriCase: true}", True),
        ("{name: only-a-name}", True),
        ("{uri: {prefix: /}, headers: {x: {exact: y}}}", False),
        ("{uri: {prefix: /}, method: {exact: GET}}", False),
        ("{uri: {prefix: /}, queryParams: {q: {}}}", False),
        ("{uri: {prefix: ''}}", False),
    ],
)
def test_what_counts_as_a_catch_all(match, catch_all):
    http = f"""\
  - match: [{match}]
    route: [{{destination: {{host: a.example.com}}}}]
  - route: [{{destination: {{host: b.example.com}}}}]
"""
    routes = compiled(GATEWAY_80, REGISTRY, vs("c", "[h.com]", http)).listeners[0].route_config.virtual_hosts[0].routes
    assert len(routes) == (1 if catch_all else 2)


MERGE = [
    GATEWAY_80,
    REGISTRY,
    # Created second (timestamp), loaded first: its routes come second, its catch-all goes last.
    vs("later", "[shop.com]", "  - match: [{uri: {prefix: /cart}}]\n" + to("b.example.com") + "\n  - route: [{destination: {host: c.example.com}}]", extra=", creationTimestamp: '2024-02-01T00:00:00Z'"),
    vs("earlier", "[shop.com]", "  - route: [{destination: {host: a.example.com}}]\n  - match: [{uri: {prefix: /never}}]\n" + to("b.example.com"), extra=", creationTimestamp: '2024-01-01T00:00:00Z'"),
    vs("api", "[shop.com]", "  - match: [{uri: {prefix: /api}}]\n" + to("reviews", subset="v2"), extra=", creationTimestamp: '2024-03-01T00:00:00Z'"),
]


def test_virtual_services_for_one_host_merge_by_creation_time_with_catch_alls_last():
    tbl = compiled(*MERGE)
    (vh,) = tbl.listeners[0].route_config.virtual_hosts
    assert [(r.virtual_service, r.match.path.value if r.match.path else None) for r in vh.routes] == [
        ("default/later", "/cart"),
        ("default/api", "/api"),
        ("default/earlier", None),  # earlier's catch-all, then later's: relative order kept
        ("default/later", None),
    ]
    assert outcome(tbl, 80, "shop.com", "/cart/1") == B
    assert outcome(tbl, 80, "shop.com", "/api/x") == cluster("reviews.default.svc.cluster.local", 9080, "v2")
    assert outcome(tbl, 80, "shop.com", "/never") == A  # truncated away after earlier's catch-all


def test_without_timestamps_load_order_decides_then_name():
    first = vs("zz", "[h.com]", "  - match: [{uri: {prefix: /x}}]\n" + to("a.example.com"))
    second = vs("aa", "[h.com]", "  - match: [{uri: {prefix: /x}}]\n" + to("b.example.com"))
    assert outcome(compiled(GATEWAY_80, REGISTRY, first, second), 80, "h.com", "/x") == A
    assert outcome(compiled(GATEWAY_80, REGISTRY, second, first), 80, "h.com", "/x") == B
    # Equal timestamps: ties broken by name.
    stamp = ", creationTimestamp: '2024-01-01T00:00:00Z'"
    first = vs("zz", "[h.com]", "  - match: [{uri: {prefix: /x}}]\n" + to("a.example.com"), extra=stamp)
    second = vs("aa", "[h.com]", "  - match: [{uri: {prefix: /x}}]\n" + to("b.example.com"), extra=stamp)
    assert outcome(compiled(GATEWAY_80, REGISTRY, first, second), 80, "h.com", "/x") == B


# ---------------------------------------------------------------------------------------------------------
# Binding: gateways, selectors, namespaces
# ---------------------------------------------------------------------------------------------------------

NS_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [team-a/a.com, ./edge.com, "*/any.com", b.com]
"""


@pytest.mark.parametrize(
    "ns, gateways, host, expected",
    [
        ("team-a", "[edge/gw]", "a.com", A),
        ("team-b", "[edge/gw]", "a.com", "404"),  # server host team-a/a.com: other namespaces cannot bind it
        ("edge", "[gw]", "edge.com", A),  # ./edge.com = the Gateway's namespace; `gw` = the VS's namespace
        ("team-b", "[edge/gw]", "edge.com", "404"),
        ("team-b", "[edge/gw]", "any.com", A),
        ("team-b", "[gw.edge.svc.cluster.local]", "b.com", A),  # legacy FQDN gateway name
        ("team-b", "[gw]", "b.com", "404"),  # team-b/gw does not exist
        ("team-b", "[mesh]", "b.com", "404"),  # mesh only: never bound to a gateway
    ],
)
def test_binding_by_gateway_name_and_namespace(ns, gateways, host, expected):
    tbl = compiled(NS_GATEWAY, REGISTRY, vs("v", f"[{host}]", to("a.example.com"), gateways=gateways, ns=ns))
    assert outcome(tbl, 80, host) == expected


def test_a_virtual_service_without_gateways_is_mesh_only_and_warned():
    result = compile_text(GATEWAY_80, REGISTRY, vs("m", "[h.com]", to("a.example.com"), gateways="[]"))
    assert outcome(result.table, 80, "h.com") == "404"
    assert any("applies to sidecars (the `mesh` gateway) only" in m for m in messages(result, "warning"))


def test_unknown_gateway_and_unexposed_hosts_are_warnings():
    result = compile_text(
        GATEWAY_80.replace('hosts: ["*"]', "hosts: [a.com]"),
        REGISTRY,
        vs("v", "[a.com, z.com]", to("a.example.com"), gateways="[gw, nope]"),
    )
    warnings = messages(result, "warning")
    assert any("gateway default/nope is not defined by any Gateway" in m for m in warnings)
    assert any("host z.com is not exposed by any server of gateway(s) default/gw, default/nope" in m for m in warnings)
    assert result.table is not None


def test_gateway_selector_must_be_a_subset_of_the_gateway_labels():
    other = GATEWAY_80.replace("istio: ingressgateway", "istio: egressgateway")
    result = compile_text(other, REGISTRY, vs("v", "[h.com]", to("a.example.com")))
    assert result.table.listeners == ()
    assert any("selector istio=egressgateway does not match this gateway's labels istio=ingressgateway" in m for m in messages(result))
    assert compiled(other, REGISTRY, vs("v", "[h.com]", to("a.example.com")), labels={"istio": "egressgateway", "x": "y"}).listeners
    no_selector = GATEWAY_80.replace("  selector: {istio: ingressgateway}\n", "")
    assert compiled(no_selector, REGISTRY, labels={}).listeners


def test_match_gateways_and_port_filter_blocks():
    gw = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8080, name: alt, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other}
spec:
  servers:
  - port: {number: 9090, name: http, protocol: HTTP}
    hosts: ["*"]
"""
    http = """\
  - match: [{port: 8080}]
    route: [{destination: {host: a.example.com}}]
  - match: [{gateways: [other]}]
    route: [{destination: {host: b.example.com}}]
  - route: [{destination: {host: c.example.com}}]
"""
    tbl = compiled(gw, REGISTRY, vs("v", "[h.com]", http, gateways="[gw, other]"), labels={})
    assert outcome(tbl, 8080, "h.com") == A
    assert outcome(tbl, 80, "h.com") == C
    assert outcome(tbl, 9090, "h.com") == B


def test_source_labels_compare_with_the_gateway_labels():
    http = """\
  - match: [{sourceLabels: {istio: ingressgateway}, uri: {prefix: /a}}]
    route: [{destination: {host: a.example.com}}]
  - match: [{sourceLabels: {app: sidecar}, uri: {prefix: /b}}]
    route: [{destination: {host: b.example.com}}]
"""
    result = compile_text(GATEWAY_80, REGISTRY, vs("v", "[h.com]", http))
    assert outcome(result.table, 80, "h.com", "/a") == A
    assert outcome(result.table, 80, "h.com", "/b") == "404"
    assert any("sourceLabels do not match this gateway's labels" in m for m in messages(result, "warning"))


# ---------------------------------------------------------------------------------------------------------
# Every match type
# ---------------------------------------------------------------------------------------------------------

MATCHES = """\
  - {name: exact, match: [{uri: {exact: /exact}}], route: [{destination: {host: a.example.com}}]}
  - {name: nocase, match: [{uri: {exact: /NoCase}, ignoreUriCase: true}], route: [{destination: {host: a.example.com}}]}
  - {name: regex, match: [{uri: {regex: "/r/[0-9]+"}}], route: [{destination: {host: a.example.com}}]}
  - {name: h-exact, match: [{uri: {prefix: /h}, headers: {x-user: {exact: jason}}}], route: [{destination: {host: a.example.com}}]}
  - {name: h-prefix, match: [{uri: {prefix: /h}, headers: {x-user: {prefix: ad}}}], route: [{destination: {host: a.example.com}}]}
  - {name: h-regex, match: [{uri: {prefix: /h}, headers: {x-user: {regex: "u[0-9]+"}}}], route: [{destination: {host: a.example.com}}]}
  - {name: h-present, match: [{uri: {prefix: /h}, headers: {x-debug: {}}}], route: [{destination: {host: a.example.com}}]}
  - {name: h-star, match: [{uri: {prefix: /h}, headers: {x-star: {regex: "*"}}}], route: [{destination: {host: a.example.com}}]}
  - {name: without, match: [{uri: {prefix: /w}, withoutHeaders: {x-env: {exact: prod}}}], route: [{destination: {host: a.example.com}}]}
  - {name: without-present, match: [{uri: {prefix: /v}, withoutHeaders: {x-env: {}}}], route: [{destination: {host: a.example.com}}]}
  - {name: q-exact, match: [{uri: {prefix: /q}, queryParams: {v: {exact: "2"}}}], route: [{destination: {host: a.example.com}}]}
  - {name: q-empty, match: [{uri: {prefix: /q}, queryParams: {flag: {exact: ""}}}], route: [{destination: {host: a.example.com}}]}
  - {name: q-regex, match: [{uri: {prefix: /q}, queryParams: {id: {regex: "[0-9]+$"}}}], route: [{destination: {host: a.example.com}}]}
  - {name: q-present, match: [{uri: {prefix: /q}, queryParams: {debug: {}}}], route: [{destination: {host: a.example.com}}]}
  - {name: method, match: [{uri: {prefix: /m}, method: {exact: POST}}], route: [{destination: {host: a.example.com}}]}
  - {name: authority, match: [{uri: {prefix: /au}, authority: {prefix: "h.com:"}}], route: [{destination: {host: a.example.com}}]}
  - {name: scheme, match: [{uri: {prefix: /s}, scheme: {exact: https}}], route: [{destination: {host: a.example.com}}]}
"""


@pytest.mark.parametrize(
    "path, headers, kw, expected",
    [
        ("/exact", (), {}, "exact"),
        ("/exact/", (), {}, None),
        ("/nocase", (), {}, "nocase"),
        ("/NOCASE", (), {}, "nocase"),
        ("/r/42", (), {}, "regex"),
        ("/r/42x", (), {}, None),  # a regex is a full match
        ("/h", [("X-User", "jason")], {}, "h-exact"),
        ("/h", [("x-user", "Jason")], {}, None),
        ("/h", [("x-user", "admin")], {}, "h-prefix"),
        ("/h", [("x-user", "u17")], {}, "h-regex"),
        ("/h", [("x-user", "xu17")], {}, None),
        ("/h", [("x-debug", "")], {}, "h-present"),
        ("/h", [("x-star", "anything")], {}, "h-star"),
        ("/h", [("x-user", "jas"), ("x-user", "on")], {}, None),  # repeated headers are joined: "jas,on"
        ("/h", [("x-user", "u1"), ("x-user", "2")], {}, None),  # "u1,2"
        ("/w", [], {}, "without"),  # missing counts as "" for a negated value match
        ("/w", [("x-env", "dev")], {}, "without"),
        ("/w", [("x-env", "prod")], {}, None),
        ("/v", [], {}, "without-present"),
        ("/v", [("x-env", "")], {}, None),
        ("/q?v=2", (), {}, "q-exact"),
        ("/q?v=3", (), {}, None),
        ("/q?v=2&v=3", (), {}, "q-exact"),  # the first value counts
        ("/q?flag", (), {}, "q-empty"),
        ("/q?flag=", (), {}, "q-empty"),
        ("/q?flag=1", (), {}, None),
        ("/q?id=123", (), {}, "q-regex"),
        ("/q?id=a123", (), {}, None),
        ("/q?id=%31%32", (), {}, "q-regex"),  # values are percent-decoded
        ("/q?debug=whatever", (), {}, "q-present"),
        ("/m", (), {"method": "POST"}, "method"),
        ("/m", (), {}, None),
        ("/au", (), {}, "authority"),  # :authority is the raw Host, port included
        ("/s", (), {"scheme": "https"}, "scheme"),
        ("/s", (), {}, None),
    ],
)
def test_every_match_type(path, headers, kw, expected):
    tbl = compiled(GATEWAY_80, REGISTRY, vs("m", "[h.com]", MATCHES))
    route = route_for(tbl, 80, "h.com:80", path, headers, **kw)
    assert (route.name if route is not None else None) == expected


def test_match_details_in_the_table():
    tbl = compiled(GATEWAY_80, REGISTRY, vs("m", "[h.com]", MATCHES))
    routes = {r.name: r for r in tbl.listeners[0].route_config.virtual_hosts[0].routes}
    assert routes["nocase"].match.path == table.StringMatcher(kind=table.MATCH_EXACT, value="/NoCase", ignore_case=True)
    assert routes["h-star"].match.headers[0].matcher.kind == table.MATCH_PRESENT
    assert routes["without"].match.headers[0].invert is True
    assert routes["method"].match.headers[0].name == ":method"
    assert routes["q-empty"].match.query[0].matcher == table.StringMatcher(kind=table.MATCH_EXACT, value="")


def test_uppercase_header_match_names_are_lowercased():
    http = "  - match: [{headers: {X-User: {exact: a}}}]\n" + to("a.example.com")
    result = compile_text(GATEWAY_80, REGISTRY, vs("v", "[h.com]", http))
    assert result.table.listeners[0].route_config.virtual_hosts[0].routes[0].match.headers[0].name == "x-user"
    assert outcome(result.table, 80, "h.com", headers=[("x-user", "a")]) == A


# ---------------------------------------------------------------------------------------------------------
# Destinations, weights, subsets, ports
# ---------------------------------------------------------------------------------------------------------


def test_weights_subsets_and_dropped_zero_weights():
    http = """\
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 75}
    - {destination: {host: reviews, subset: v2}, weight: 0}
    - {destination: {host: reviews, subset: v3}, weight: 25}
"""
    tbl = compiled(GATEWAY_80, REGISTRY, vs("w", "[h.com]", http))
    route = route_for(tbl, 80, "h.com")
    assert [(c.cluster, c.weight) for c in route.clusters] == [
        (cluster("reviews.default.svc.cluster.local", 9080, "v1"), 75),
        (cluster("reviews.default.svc.cluster.local", 9080, "v3"), 25),
    ]
    assert route.total_weight == 100
    v3 = tbl.clusters[cluster("reviews.default.svc.cluster.local", 9080, "v3")]
    assert [e.address for e in v3.endpoints] == ["10.1.0.3"]
    assert v3.subset == "v3"


def test_a_single_destination_takes_everything_whatever_its_weight():
    http = "  - route: [{destination: {host: a.example.com}, weight: 5}]"
    route = route_for(compiled(GATEWAY_80, REGISTRY, vs("w", "[h.com]", http)), 80, "h.com")
    assert (route.clusters[0].weight, route.total_weight) == (1, 1)


@pytest.mark.parametrize(
    "destination, warning",
    [
        ("{host: nowhere.example.com}", "destination host nowhere.example.com is not defined by any ServiceEntry: requests routed to it answer 503 (NC)"),
        ("{host: reviews, subset: v9}", "subset v9 of host reviews.default.svc.cluster.local is not defined by DestinationRule default/reviews: requests answer 503 (NC)"),
        ("{host: a.example.com, subset: v1}", "subset v1 of host a.example.com is not defined by any DestinationRule: requests answer 503 (NC)"),
        ("{host: a.example.com, port: {number: 81}}", "port 81 (given) is not a port of ServiceEntry default/a (ports: 80): requests answer 503 (NC)"),
    ],
)
def test_unresolved_destinations_warn_and_answer_503_nc(destination, warning):
    result = compile_text(GATEWAY_80, REGISTRY, vs("nc", "[h.com]", f"  - route: [{{destination: {destination}}}]"))
    route = route_for(result.table, 80, "h.com")
    assert route.clusters[0].cluster == ""
    assert any(warning in m for m in messages(result, "warning")), messages(result)


def test_destination_port_given_else_the_only_port_else_the_server_port():
    two_ports = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: two}
spec:
  hosts: [two.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 8080, name: alt, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.9.0.1, ports: {alt: 18080}}]
"""
    gw = GATEWAY_80.replace("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]", "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n  - port: {number: 8080, name: alt, protocol: HTTP}\n    hosts: [\"*\"]")
    http = """\
  - match: [{uri: {prefix: /given}}]
    route: [{destination: {host: two.example.com, port: {number: 8080}}}]
  - match: [{uri: {prefix: /only}}]
    route: [{destination: {host: a.example.com}}]
  - route: [{destination: {host: two.example.com}}]
"""
    tbl = compiled(gw, REGISTRY, two_ports, vs("p", "[h.com]", http))
    assert outcome(tbl, 80, "h.com", "/given") == cluster("two.example.com", 8080)
    assert outcome(tbl, 8080, "h.com", "/only") == A
    assert outcome(tbl, 80, "h.com", "/x") == cluster("two.example.com", 80)
    assert outcome(tbl, 8080, "h.com", "/x") == cluster("two.example.com", 8080)
    assert tbl.clusters[cluster("two.example.com", 8080)].endpoints[0].port == 18080  # ports[name]
    assert tbl.clusters[cluster("two.example.com", 80)].endpoints[0].port == 80


ENDPOINTS = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: eps}
spec:
  hosts: [eps.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1}
  - {address: 10.0.0.2, ports: {http: 9090}, weight: 3, labels: {zone: a}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dns}
spec:
  hosts: [dns.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dnsrr}
spec:
  hosts: [rr.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: backend.internal}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: none}
spec:
  hosts: [none.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
"""


def test_endpoints_and_resolutions():
    http = """\
  - match: [{uri: {prefix: /eps}}]
    route: [{destination: {host: eps.example.com}}]
  - match: [{uri: {prefix: /dns}}]
    route: [{destination: {host: dns.example.com}}]
  - match: [{uri: {prefix: /rr}}]
    route: [{destination: {host: rr.example.com}}]
  - route: [{destination: {host: none.example.com}}]
"""
    result = compile_text(GATEWAY_80, REGISTRY, ENDPOINTS, vs("e", "[h.com]", http))
    clusters = result.table.clusters
    eps = clusters[cluster("eps.example.com")]
    assert [(e.address, e.port, e.weight, e.labels) for e in eps.endpoints] == [("10.0.0.1", 8080, 1, {}), ("10.0.0.2", 9090, 3, {"zone": "a"})]
    dns = clusters[cluster("dns.example.com", 443)]
    assert (dns.resolution, [(e.address, e.port) for e in dns.endpoints], dns.protocol) == ("DNS", [("dns.example.com", 443)], "HTTPS")
    rr = clusters[cluster("rr.example.com")]
    assert (rr.resolution, rr.endpoints[0].address) == ("DNS_ROUND_ROBIN", "backend.internal")
    none = clusters[cluster("none.example.com")]
    assert (none.resolution, none.endpoints) == ("STATIC", ())
    assert any("cluster outbound|80||none.example.com has no endpoints (its resolution is NONE" in m for m in messages(result, "warning"))


# ---------------------------------------------------------------------------------------------------------
# DestinationRule policies
# ---------------------------------------------------------------------------------------------------------

POLICY = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec:
  host: a.example.com
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 5, maxRequestsPerConnection: 1}
    outlierDetection: {consecutiveGatewayErrors: 3}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: hashed
    labels: {}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: X-User}
  - name: plain
    trafficPolicy:
      outlierDetection: {consecutive5xxErrors: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a-more}
spec:
  host: a.example.com
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
  subsets:
  - {name: plain, labels: {never: matches}}
  - {name: extra}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wildcard}
spec:
  host: "*.example.com"
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    tls: {mode: SIMPLE, sni: upstream.example.com}
"""


def test_destination_rule_policies_merge_as_istio_does():
    http = """\
  - match: [{uri: {prefix: /hashed}}]
    route: [{destination: {host: a.example.com, subset: hashed}}]
  - match: [{uri: {prefix: /plain}}]
    route: [{destination: {host: a.example.com, subset: plain}}]
  - match: [{uri: {prefix: /extra}}]
    route: [{destination: {host: a.example.com, subset: extra}}]
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: b.example.com}}]
  - route: [{destination: {host: a.example.com}}]
"""
    result = compile_text(GATEWAY_80, REGISTRY, POLICY, vs("p", "[h.com]", http))
    tbl = result.table
    top = tbl.clusters[cluster("a.example.com")]
    # Port-level settings replace the top level wholesale: RANDOM, and no pool or outlier settings.
    assert (top.lb_policy, top.pool, top.outlier) == ("RANDOM", table.ConnectionPool(), None)
    hashed = tbl.clusters[cluster("a.example.com", subset="hashed")]
    assert hashed.lb_policy == "CONSISTENT_HASH"
    assert hashed.hash_policy == table.HashPolicy(kind="header", name="x-user")
    route = route_for(tbl, 80, "h.com", "/hashed")
    assert route.clusters[0].hash_policy == hashed.hash_policy
    assert route.retry == table.RetryPolicy(attempts=2, retry_on=DEFAULT_RETRY.retry_on, ignore_previous_hosts=False)
    plain = tbl.clusters[cluster("a.example.com", subset="plain")]
    assert plain.outlier.consecutive_5xx == 0  # explicit 0 turns it off
    assert [e.address for e in plain.endpoints] == ["10.0.0.1"]  # the first definition of `plain` wins
    assert cluster("a.example.com", subset="extra") in tbl.clusters  # subsets of several DRs concatenate
    b = tbl.clusters[cluster("b.example.com")]
    assert (b.lb_policy, b.tls.mode, b.tls.sni) == ("RANDOM", "SIMPLE", "upstream.example.com")  # *.example.com
    assert any("subset plain of host a.example.com is already defined by DestinationRule default/a" in m for m in messages(result, "warning"))


def test_subset_policy_overrides_per_top_level_field():
    dr = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec:
  host: a.example.com
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 7}}
    outlierDetection: {interval: 5s}
  subsets:
  - name: s
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 9}}
"""
    tbl = compiled(GATEWAY_80, REGISTRY, dr, vs("p", "[h.com]", "  - route: [{destination: {host: a.example.com, subset: s}}]"))
    c = tbl.clusters[cluster("a.example.com", subset="s")]
    assert c.lb_policy == "ROUND_ROBIN"
    assert (c.pool.max_connections, c.pool.http2_max_requests) == (table.UNLIMITED, 9)  # the pool is replaced whole
    assert c.outlier == table.OutlierPolicy(consecutive_5xx=5, interval_s=5.0, base_ejection_time_s=30.0, max_ejection_percent=10)


def test_defaults_without_destination_rule():
    c = compiled(GATEWAY_80, REGISTRY, vs("p", "[h.com]", to("c.example.com"))).clusters[C]
    assert (c.lb_policy, c.outlier, c.tls, c.pool) == ("LEAST_REQUEST", None, None, table.ConnectionPool())
    assert (c.pool.connect_timeout_s, c.pool.max_connections) == (10.0, table.UNLIMITED)


# ---------------------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------------------

ACTIONS = """\
  - name: redirect-default
    match: [{uri: {prefix: /r1}}]
    redirect: {uri: /new}
  - name: redirect-full
    match: [{uri: {prefix: /r2}}]
    redirect: {authority: other.com, scheme: https, port: 443, redirectCode: 308, prefixRewrite: /p}
  - name: redirect-derived
    match: [{uri: {prefix: /r3}}]
    redirect: {derivePort: FROM_REQUEST_PORT, uri: /x}
  - name: direct-string
    match: [{uri: {exact: /d1}}]
    directResponse: {status: 503, body: {string: "down"}}
  - name: direct-bytes
    match: [{uri: {exact: /d2}}]
    directResponse: {status: 200, body: {bytes: "aGVsbG8="}}
  - name: rewrite-prefix
    match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: internal.example.com}
    route: [{destination: {host: a.example.com}}]
  - name: rewrite-exact
    match: [{uri: {exact: /page}}]
    rewrite: {uri: /other}
    route: [{destination: {host: a.example.com}}]
  - name: rewrite-regex
    match: [{uri: {prefix: /service}}]
    rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "/customprefix/\\\\2/\\\\1"}}
    route: [{destination: {host: a.example.com}}]
  - name: rewrite-nocase
    match: [{uri: {prefix: /aaa}}]
    rewrite: {uriRegexRewrite: {match: "(?i)/xxx/", rewrite: /yyy/}}
    route: [{destination: {host: a.example.com}}]
  - name: headers
    match: [{uri: {prefix: /hdr}}]
    headers:
      request: {set: {X-A: "1", ":authority": "auth.example.com"}, add: {x-b: "2"}, remove: [X-C]}
      response: {set: {x-d: "4"}}
    route:
    - destination: {host: a.example.com}
      headers: {request: {set: {x-e: "5", host: dest.example.com}}}
  - name: timeout-retries
    match: [{uri: {prefix: /t}}]
    timeout: 1.5s
    retries: {attempts: 4, perTryTimeout: 250ms, retryOn: "5xx,503,gateway-error", backoff: 100ms, retryIgnorePreviousHosts: false}
    route: [{destination: {host: a.example.com}}]
  - name: no-retries
    match: [{uri: {prefix: /n}}]
    retries: {attempts: 0}
    route: [{destination: {host: a.example.com}}]
  - name: fault
    match: [{uri: {prefix: /f}}]
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 12.5}}
      abort: {httpStatus: 418}
    route: [{destination: {host: a.example.com}}]
  - name: fault-legacy
    match: [{uri: {prefix: /g}}]
    fault: {delay: {fixedDelay: 1s, percent: 30}, abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: a.example.com}}]
  - name: mirror
    match: [{uri: {prefix: /mirror}}]
    mirror: {host: b.example.com}
    mirrorPercentage: {value: 5}
    route: [{destination: {host: a.example.com}}]
  - name: mirrors
    match: [{uri: {prefix: /ms}}]
    mirrors:
    - {destination: {host: b.example.com}}
    - {destination: {host: c.example.com}, percentage: {value: 0}}
    route: [{destination: {host: a.example.com}}]
  - name: cors
    match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigin: [https://a.com]
      allowMethods: [GET, POST]
      allowHeaders: [x-a, x-b]
      exposeHeaders: [x-c]
      maxAge: 2m
      allowCredentials: true
    route: [{destination: {host: a.example.com}}]
  - name: cors-origins
    match: [{uri: {prefix: /co}}]
    corsPolicy:
      allowOrigins: [{exact: https://x.com}, {regex: "https://.*\\\\.y\\\\.com"}]
      unmatchedPreflights: IGNORE
    route: [{destination: {host: a.example.com}}]
"""


@pytest.fixture(scope="module")
def actions():
    result = compile_text(GATEWAY_80, REGISTRY, vs("act", "[h.com]", ACTIONS))
    assert result.table is not None, messages(result)
    return {r.name: r for r in result.table.listeners[0].route_config.virtual_hosts[0].routes}


def test_redirects(actions):
    r = actions["redirect-default"]
    assert (r.action, r.redirect) == (table.ACTION_REDIRECT, table.Redirect(code=301, path="/new"))
    assert actions["redirect-full"].redirect == table.Redirect(code=308, scheme="https", authority="other.com", port=0, prefix_rewrite="/p")
    assert actions["redirect-derived"].redirect == table.Redirect(port_from_request=True, path="/x")


def test_direct_responses(actions):
    assert actions["direct-string"].direct == table.DirectResponse(status=503, body=b"down")
    assert actions["direct-bytes"].direct == table.DirectResponse(status=200, body=b"hello")


def test_rewrites(actions):
    assert actions["rewrite-prefix"].rewrite == table.Rewrite(prefix="/new", authority="internal.example.com")
    assert actions["rewrite-exact"].rewrite == table.Rewrite(full_path="/other")
    rw = actions["rewrite-regex"].rewrite
    assert (rw.regex, rw.regex_substitution) == ("^/service/([^/]+)(/.*)$", r"/customprefix/\g<2>/\g<1>")
    # The proto's own example claims "/customprefix/v1/api/update"; \2 is "/v1/api", so RE2 (and Envoy)
    # give a double slash.
    assert re.compile(rw.regex).sub(rw.regex_substitution, "/service/update/v1/api") == "/customprefix//v1/api/update"
    rw = actions["rewrite-nocase"].rewrite
    assert re.compile(rw.regex).sub(rw.regex_substitution, "/aaa/XxX/bbb") == "/aaa/yyy/bbb"  # the proto's example 2


def test_header_operations(actions):
    r = actions["headers"]
    assert r.headers == table.HeaderRules(
        request=table.HeaderOps(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",)),
        response=table.HeaderOps(set=(("x-d", "4"),)),
        authority="auth.example.com",
    )
    # One destination: the route's authority wins, the destination's is dropped; its other headers stay.
    assert r.clusters[0].headers == table.HeaderRules(request=table.HeaderOps(set=(("x-e", "5"),)))


def test_timeout_and_retries(actions):
    r = actions["timeout-retries"]
    assert r.timeout_s == 1.5
    assert r.retry == table.RetryPolicy(
        attempts=4,
        per_try_timeout_s=0.25,
        retry_on=("5xx", "gateway-error", "retriable-status-codes"),
        retriable_status_codes=(503,),
        backoff_base_s=0.1,
        ignore_previous_hosts=False,
    )
    assert actions["no-retries"].retry == table.RetryPolicy(attempts=0)
    assert actions["rewrite-prefix"].retry is None  # the table's default applies
    assert actions["rewrite-prefix"].timeout_s == 0.0


def test_default_retry_is_istio_1_24():
    tbl = compiled(GATEWAY_80, REGISTRY)
    assert tbl.default_retry == table.RetryPolicy(
        attempts=2, retry_on=("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"), retriable_status_codes=()
    )


def test_faults(actions):
    assert actions["fault"].fault == table.Fault(delay_s=7.0, delay_ppm=125_000, abort_status=418, abort_ppm=0)
    assert actions["fault-legacy"].fault == table.Fault(delay_s=1.0, delay_ppm=300_000, abort_grpc_status="UNAVAILABLE", abort_ppm=1_000_000)


def test_mirrors(actions):
    assert actions["mirror"].mirrors == (table.Mirror(cluster=B, ppm=50_000, host="b.example.com"),)
    assert actions["mirrors"].mirrors == (table.Mirror(cluster=B, ppm=1_000_000, host="b.example.com"),)


def test_cors(actions):
    assert actions["cors"].cors == table.Cors(
        allow_origins=(table.StringMatcher(kind=table.MATCH_EXACT, value="https://a.com"),),
        allow_methods="GET,POST",
        allow_headers="x-a,x-b",
        expose_headers="x-c",
        max_age="120",
        allow_credentials=True,
    )
    c = actions["cors-origins"].cors
    assert [m.kind for m in c.allow_origins] == [table.MATCH_EXACT, table.MATCH_REGEX]
    assert c.unmatched_preflights == "IGNORE"


def test_prefix_rewrite_without_uri_match_gets_an_explicit_prefix_matcher():
    http = "  - rewrite: {uri: /v2/}\n" + to("a.example.com")
    route = route_for(compiled(GATEWAY_80, REGISTRY, vs("v", "[h.com]", http)), 80, "h.com", "/x")
    assert route.match.path == table.StringMatcher(kind=table.MATCH_PREFIX, value="/")
    assert route.rewrite.prefix == "/v2/"


def test_unsupported_redirect_code_drops_the_rule_with_a_warning():
    http = "  - match: [{uri: {prefix: /x}}]\n    redirect: {uri: /y, redirectCode: 305}\n" + to("a.example.com").replace("    route", "  - route")
    result = compile_text(GATEWAY_80, REGISTRY, vs("v", "[h.com]", http))
    assert outcome(result.table, 80, "h.com", "/x") == A
    assert any("Redirect Code 305 is not yet supported" in m for m in messages(result, "warning"))


def test_https_redirect_requires_tls_on_every_server_host():
    gw = GATEWAY_80.replace('hosts: ["*"]', "hosts: [a.com, b.com]\n    tls: {httpsRedirect: true}")
    tbl = compiled(gw, REGISTRY, vs("v", "[a.com]", to("a.example.com")))
    vhosts = {vh.name: vh for vh in tbl.listeners[0].route_config.virtual_hosts}
    assert vhosts["a.com:80"].require_tls and vhosts["a.com:80"].routes
    assert vhosts["b.com:80"].require_tls and vhosts["b.com:80"].routes == ()


# ---------------------------------------------------------------------------------------------------------
# Delegates (ISTIO-SEMANTICS 2.22)
# ---------------------------------------------------------------------------------------------------------

ROOT = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [h.com]
  gateways: [gw]
  http:
  - name: products
    match: [{uri: {prefix: /products}}]
    timeout: 3s
    delegate: {name: products, namespace: team}
  - name: missing
    match: [{uri: {prefix: /gone}}]
    delegate: {name: nothing}
  - route: [{destination: {host: c.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: products, namespace: team}
spec:
  http:
  - name: v2
    match: [{uri: {prefix: /products/v2}, headers: {x-beta: {exact: "1"}}}]
    route: [{destination: {host: b.example.com}}]
  - name: conflicting
    match: [{uri: {prefix: /other}}]
    route: [{destination: {host: a.example.com}}]
  - name: rest
    timeout: 1s
    route: [{destination: {host: a.example.com}}]
"""


def test_delegate_routes_replace_the_root_route():
    result = compile_text(GATEWAY_80, REGISTRY, ROOT)
    tbl = result.table
    routes = tbl.listeners[0].route_config.virtual_hosts[0].routes
    assert [(r.name, r.virtual_service, r.timeout_s) for r in routes] == [
        ("products-v2", "default/root", 3.0),  # timeout inherited from the root
        ("products-rest", "default/root", 1.0),  # its own timeout wins; match inherited (/products)
        ("", "default/root", 0.0),
    ]
    assert outcome(tbl, 80, "h.com", "/products/v2", [("x-beta", "1")]) == B
    assert outcome(tbl, 80, "h.com", "/products/v2") == A
    assert outcome(tbl, 80, "h.com", "/other") == C  # the conflicting delegate route was dropped
    assert outcome(tbl, 80, "h.com", "/gone") == C
    warnings = messages(result, "warning")
    assert any("delegate VirtualService default/nothing not found: this rule is left out" in m for m in warnings)
    assert any("conflicts with every match of root VirtualService default/root http[0]" in m for m in warnings)


# ---------------------------------------------------------------------------------------------------------
# Listeners: HTTP, HTTPS, TLS passthrough, TCP; protocols and conflicts
# ---------------------------------------------------------------------------------------------------------

MIXED = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 8081, name: grpc, protocol: GRPC}
    hosts: ["*"]
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.com]
    tls: {mode: SIMPLE, credentialName: a-cert}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: ["*.b.com"]
    tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, minProtocolVersion: TLSV1_3}
  - port: {number: 8443, name: pass, protocol: TLS}
    hosts: ["*.p.com"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 9443, name: https-pass, protocol: HTTPS}
    hosts: [p.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
  - port: {number: 9001, name: mongo, protocol: MONGO}
    hosts: ["*"]
  - port: {number: 9002, name: tls-term, protocol: TLS}
    hosts: [t.com]
    tls: {mode: SIMPLE, credentialName: t-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [a.com, x.b.com, y.b.com]
  gateways: [gw]
  http:
  - route: [{destination: {host: a.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass}
spec:
  hosts: ["*.p.com", p.com]
  gateways: [gw]
  tls:
  - match: [{sniHosts: [one.p.com], port: 8443}]
    route: [{destination: {host: a.example.com}}]
  - match: [{sniHosts: ["*.p.com"]}]
    route: [{destination: {host: b.example.com, port: {number: 80}}, weight: 1}, {destination: {host: c.example.com, port: {number: 80}}, weight: 3}]
  - match: [{sniHosts: [one.p.com]}]
    route: [{destination: {host: c.example.com}}]
  - match: [{sniHosts: [p.com]}]
    route: [{destination: {host: c.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-first}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - match: [{port: 9000}]
    route: [{destination: {host: a.example.com, port: {number: 80}}}]
  - match: [{port: 9002}]
    route: [{destination: {host: b.example.com, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-second}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - route: [{destination: {host: c.example.com, port: {number: 80}}}]
"""


@pytest.fixture(scope="module")
def mixed():
    result = compile_text(MIXED, REGISTRY, labels={})
    assert result.table is not None, messages(result)
    return result


def test_listener_protocols_and_names(mixed):
    listeners = {l.port: l for l in mixed.table.listeners}
    assert {p: (l.name, l.protocol) for p, l in listeners.items()} == {
        80: ("0.0.0.0_80", table.PROTO_HTTP),
        443: ("0.0.0.0_443", table.PROTO_HTTPS),
        8081: ("0.0.0.0_8081", table.PROTO_HTTP),
        8443: ("0.0.0.0_8443", table.PROTO_TLS),
        9000: ("0.0.0.0_9000", table.PROTO_TCP),
        9001: ("0.0.0.0_9001", table.PROTO_TCP),
        9002: ("0.0.0.0_9002", table.PROTO_TLS),
        9443: ("0.0.0.0_9443", table.PROTO_TLS),
    }
    assert listeners[80].route_config.name == "http.80"


def test_https_servers_get_their_own_filter_chain_and_route_config(mixed):
    tbl = mixed.table
    chains = next(l for l in tbl.listeners if l.port == 443).filter_chains
    assert [(c.server_names, c.route_config.name) for c in chains] == [
        (("a.com",), "https.443.https-a.gw.default"),
        (("*.b.com",), "https.443.https-b.gw.default"),
    ]
    assert chains[0].tls == table.ServerTLS(mode="SIMPLE", credential_name="a-cert")
    assert chains[1].tls == table.ServerTLS(mode="MUTUAL", cert_chain_file="/c.pem", private_key_file="/k.pem", ca_file="/ca.pem", min_version="TLSV1_3")
    # A request only reaches the vhosts of the server whose SNI it matched.
    assert [d for vh in chains[0].route_config.virtual_hosts for d in vh.domains] == ["a.com"]
    assert outcome(tbl, 443, "x.b.com", scheme="https") == A
    assert outcome(tbl, 443, "a.com", sni="x.b.com") == "404"


def test_passthrough_chains_follow_sni_hosts_first_claim_wins(mixed):
    chains = next(l for l in mixed.table.listeners if l.port == 8443).filter_chains
    assert [(c.server_names, [w.cluster for w in c.tcp.clusters], c.tls) for c in chains] == [
        (("one.p.com",), [A], None),
        (("*.p.com",), [B, C], None),
        # Istio uses sniHosts as written: they are not intersected with the server's hosts.
        (("p.com",), [C], None),
    ]
    assert chains[1].tcp.total_weight == 4
    assert any("SNI host(s) ['one.p.com'] on port 8443 are already routed by VirtualService default/pass tls[0]" in m for m in messages(mixed, "warning"))


def test_https_passthrough_is_a_tls_listener(mixed):
    chains = next(l for l in mixed.table.listeners if l.port == 9443).filter_chains
    assert [(c.server_names, c.tcp.clusters[0].cluster) for c in chains] == [(("*.p.com",), B), (("one.p.com",), C), (("p.com",), C)]


def test_tcp_servers_use_the_first_matching_tcp_route(mixed):
    listeners = {l.port: l for l in mixed.table.listeners}
    assert listeners[9000].tcp.clusters[0].cluster == A
    assert listeners[9000].tcp.virtual_service == "default/tcp-first"
    assert listeners[9001].tcp.clusters[0].cluster == C  # tcp-first has no match for 9001


def test_tls_terminated_non_http_servers_route_tcp(mixed):
    (chain,) = next(l for l in mixed.table.listeners if l.port == 9002).filter_chains
    assert (chain.server_names, chain.tls.mode, chain.tcp.clusters[0].cluster, chain.route_config) == (("t.com",), "SIMPLE", B, None)


def test_a_tcp_server_without_routes_opens_no_port():
    gw = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 9000, name: tcp, protocol: TCP}
    hosts: ["*"]
"""
    result = compile_text(gw, REGISTRY, labels={})
    assert result.table.listeners == ()
    assert any("the port is not opened (Istio creates no listener)" in m for m in messages(result, "warning"))


def test_http_servers_of_several_gateways_share_a_port():
    g2 = GATEWAY_80.replace("name: gw}", "name: gw2}").replace('hosts: ["*"]', "hosts: [two.com]")
    tbl = compiled(GATEWAY_80.replace('hosts: ["*"]', "hosts: [one.com]"), g2, REGISTRY, vs("one", "[one.com]", to("a.example.com")), vs("two", "[two.com]", to("b.example.com"), gateways="[gw2]"))
    (listener,) = tbl.listeners
    assert listener.gateways == ("default/gw", "default/gw2")
    assert (outcome(tbl, 80, "one.com"), outcome(tbl, 80, "two.com")) == (A, B)


def test_terminating_and_passthrough_servers_can_share_a_port():
    gw = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 443, name: pass, protocol: TLS}
    hosts: [db.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v}
spec:
  hosts: [web.com, db.com]
  gateways: [gw]
  http: [{route: [{destination: {host: a.example.com}}]}]
  tls: [{match: [{sniHosts: [db.com]}], route: [{destination: {host: b.example.com}}]}]
"""
    (listener,) = compiled(gw, REGISTRY, labels={}).listeners
    assert listener.protocol == table.PROTO_TLS  # mixed chains: dispatched per chain
    assert [(c.server_names, c.tls is not None, c.route_config is not None, c.tcp is not None) for c in listener.filter_chains] == [
        (("web.com",), True, True, False),
        (("db.com",), False, False, True),
    ]


def test_a_virtual_service_bound_through_two_gateways_appears_once_per_host():
    g2 = GATEWAY_80.replace("name: gw}", "name: gw2}")
    tbl = compiled(GATEWAY_80, g2, REGISTRY, vs("v", "[h.com]", "  - match: [{uri: {prefix: /a}}]\n" + to("a.example.com"), gateways="[gw, gw2]"))
    (vh,) = tbl.listeners[0].route_config.virtual_hosts
    assert len(vh.routes) == 1


def test_binds_make_separate_listeners():
    gw = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: a, protocol: HTTP}
    hosts: ["*"]
    bind: 127.0.0.2
  - port: {number: 80, name: b, protocol: TCP}
    hosts: ["*"]
    bind: 127.0.0.3
"""
    result = compile_text(gw, REGISTRY, vs("v", '["*"]', to("a.example.com")), labels={})
    assert [(l.name, l.bind, l.protocol) for l in result.table.listeners] == [("127.0.0.2_80", "127.0.0.2", table.PROTO_HTTP)]
    assert result.table.listeners[0].route_config.name == "http.80.127.0.0.2"


@pytest.mark.parametrize(
    "servers, message",
    [
        (
            "- {port: {number: 80, name: a, protocol: HTTP}, hosts: ['*']}\n  - {port: {number: 80, name: b, protocol: TCP}, hosts: ['*']}",
            "$.spec.servers[1]: conflicts with Gateway default/gw server a (HTTP 80) on port 80: plain HTTP, TLS (HTTPS/TLS) and TCP servers cannot share a port and bind; this server is skipped",
        ),
        (
            "- {port: {number: 80, name: a, protocol: HTTP}, hosts: ['*']}\n  - {port: {number: 80, name: b, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: c}}",
            "$.spec.servers[1]: conflicts with Gateway default/gw server a (HTTP 80) on port 80",
        ),
        (
            "- {port: {number: 9, name: a, protocol: TCP}, hosts: ['*']}\n  - {port: {number: 9, name: b, protocol: TCP}, hosts: ['*']}",
            "only one TCP server can use a port",
        ),
        (
            "- {port: {number: 443, name: a, protocol: HTTPS}, hosts: [x.com], tls: {mode: SIMPLE, credentialName: c}}\n  - {port: {number: 443, name: b, protocol: TLS}, hosts: [x.com], tls: {mode: PASSTHROUGH}}",
            "$.spec.servers[1]: duplicate TLS host names ['x.com'] on port 443: already served by Gateway default/gw server a (HTTPS 443)",
        ),
        ("- {port: {number: 80, name: a, protocol: HTTP}, hosts: [short]}", "$.spec.servers[0].hosts[0]: short names (non FQDN) are not allowed"),
        ("- {port: {number: 80, name: a, protocol: HTTP}, hosts: ['*foo.com']}", "partial wildcard '*foo.com' not allowed"),
        ("- {port: {number: 80, name: a, protocol: UDP}, hosts: ['*']}", "invalid protocol 'UDP'"),
        ("- {port: {number: 80, name: a, protocol: HTTP, targetPort: 8080}, hosts: ['*']}", "targetPort has no impact on Gateways"),
        ("- {port: {number: 80, name: a, protocol: HTTP}, hosts: ['*'], tls: {mode: SIMPLE}}", "server cannot have TLS settings for plain text HTTP ports"),
        ("- {port: {number: 443, name: a, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE}}", "SIMPLE TLS requires a server certificate"),
        ("- {port: {number: 443, name: a, protocol: HTTPS}, hosts: ['*'], tls: {mode: MUTUAL, credentialName: x, serverCertificate: /a, privateKey: /b}}", "only one of credentialName"),
        ("- {port: {number: 443, name: a, protocol: HTTPS}, hosts: ['*'], tls: {mode: MUTUAL, serverCertificate: /a, privateKey: /b}}", "MUTUAL TLS requires a client CA bundle"),
        ("- {port: {number: 443, name: a, protocol: TLS}, hosts: ['*'], tls: {mode: AUTO_PASSTHROUGH}}", "AUTO_PASSTHROUGH is not supported"),
        ("- {port: {number: 9, name: a, protocol: TCP}, hosts: ['*'], tls: {mode: SIMPLE, credentialName: x}}", "server cannot have TLS settings for non HTTPS/TLS ports"),
        ("- {port: {number: 80, name: a, protocol: HTTP}, hosts: ['*'], bind: not-an-ip}", "not-an-ip is not a valid IP"),
    ],
)
def test_gateway_errors(servers, message):
    gw = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  servers:
  {servers}
"""
    result = compile_text(gw, REGISTRY, labels={})
    assert result.table is None
    assert any(message in m for m in messages(result, "error")), messages(result)


@pytest.mark.parametrize(
    "tls, message",
    [
        ("{mode: ISTIO_MUTUAL}", "ISTIO_MUTUAL needs Istio workload certificates and mesh clients: the server is skipped"),
        ("{serverCertificate: /c.pem, privateKey: /k.pem}", "tls mode is PASSTHROUGH (the default when mode is not set): the certificates are not used"),
        ("{mode: SIMPLE, credentialName: c, cipherSuites: [NOPE, AES128-SHA]}", "ignoring invalid cipher suites: ['NOPE']"),
    ],
)
def test_gateway_tls_warnings(tls, message):
    gw = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  servers:
  - {{port: {{number: 443, name: a, protocol: HTTPS}}, hosts: [a.com], tls: {tls}}}
"""
    result = compile_text(gw, REGISTRY, labels={})
    assert result.table is not None
    assert any(message in m for m in messages(result, "warning")), messages(result)


# ---------------------------------------------------------------------------------------------------------
# VirtualService validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "http, message",
    [
        ("  - match: [{uri: {regex: '(a'}}]\n" + to("a"), "$.spec.http[0].match[0].uri.regex: invalid regex '(a': missing closing )"),
        ("  - match: [{uri: {regex: 'a(?=b)'}}]\n" + to("a"), "RE2 has no look-arounds"),
        ("  - match: [{headers: {'bad header': {exact: x}}}]\n" + to("a"), "header name bad header is not a valid header name"),
        ("  - match: [{headers: {x: {prefix: ''}}}]\n" + to("a"), "prefix string match should not be empty"),
        ("  - route: [{destination: {host: a}, weight: -1}]", "weight -1 < 0"),
        ("  - route: [{destination: {host: a}, weight: 0}, {destination: {host: b}, weight: 0}]", "total destination weight = 0"),
        ("  - timeout: 0s\n" + to("a").replace("    route", "    route"), "duration must be greater than 1ms"),
        ("  - timeout: 1500us\n" + to("a"), "only durations to ms precision are supported"),
        ("  - retries: {attempts: 2, retryOn: 'connect-failure,nope'}\n" + to("a"), '"nope" is not a valid retryOn policy'),
        ("  - retries: {attempts: 0, perTryTimeout: 1s}\n" + to("a"), "http retry policy configured when attempts are set to 0 (disabled)"),
        ("  - retries: {attempts: -1}\n" + to("a"), "attempts cannot be negative"),
        ("  - fault: {abort: {grpcStatus: NOPE}}\n" + to("a"), "gRPC status 'NOPE' is not supported"),
        ("  - fault: {delay: {exponentialDelay: 1s}}\n" + to("a"), "exponentialDelay not supported yet"),
        ("  - fault: {}\n" + to("a"), "HTTP fault injection must have an abort and/or a delay"),
        ("  - directResponse: {status: 100}", "HTTP status 100 is not in range 200-599"),
        ("  - directResponse: {status: 200, body: {bytes: '%%%'}}", "body.bytes is not valid base64"),
        ("  - redirect: {}", "redirect must specify URI, authority, scheme, or port"),
        ("  - redirect: {uri: /x, scheme: ftp}", 'invalid redirect scheme, must be "http" or "https"'),
        ("  - match: [{uri: {regex: '/x'}}]\n    redirect: {prefixRewrite: /y}", "redirect prefix_rewrite requires all URI matches to use prefix match type"),
        ("  - rewrite: {authority: x.com}\n    headers: {request: {add: {':authority': y.com}}}\n" + to("a"), "authority header cannot be set multiple times"),
        ("  - headers: {request: {remove: [host]}}\n" + to("a"), 'invalid header "host": cannot set Host header'),
        ("  - headers: {response: {set: {':status': '200'}}}\n" + to("a"), 'header cannot have ":" prefix'),
        ("  - headers: {request: {set: {x: 'abc%123'}}}\n" + to("a"), "Un-escaped %"),
        ("  - corsPolicy: {allowMethods: [FETCH]}\n" + to("a"), '"FETCH" is not a supported HTTP method'),
        ("  - corsPolicy: {maxAge: 1500ms}\n" + to("a"), "max_age duration is accurate only to seconds precision"),
        ("  - rewrite: {uriRegexRewrite: {match: '(a)', rewrite: '\\2'}}\n" + to("a"), "rewrite refers to group \\2 but the match has only 1 group(s)"),
        ("  - route: [{destination: {host: '*'}}]", "invalid destination host *"),
        ("  - route: []", "HTTP route, redirect or direct_response is required"),
        ("  - redirect: {uri: /x}\n    fault: {abort: {httpStatus: 500}}", "HTTP route cannot contain both fault and redirect"),
        ("  - match: [{gateways: [./gw]}]\n" + to("a"), "invalid value for namespace: '.'"),
    ],
)
def test_virtual_service_errors(http, message):
    result = compile_text(GATEWAY_80, REGISTRY, vs("bad", "[h.com]", http))
    assert result.table is None
    assert any(message in m for m in messages(result, "error")), messages(result)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("hosts: [a.com, '*.com']\n  gateways: [gw]\n  http: [{route: [{destination: {host: a}}]}]", "duplicate hosts in virtual service: a.com & *.com"),
        ("hosts: ['*']\n  http: [{route: [{destination: {host: a}}]}]", "wildcard host * is not allowed for virtual services bound to the mesh gateway"),
        ("hosts: [a.com]\n  gateways: [gw]", "http, tcp or tls must be provided in virtual service"),
        ("gateways: [gw]\n  http: [{route: [{destination: {host: a}}]}]", "delegate virtual service must have no gateways specified"),
        ("hosts: [a.com]\n  gateways: [gw]\n  tls: [{match: [{sniHosts: [b.com]}], route: [{destination: {host: a}}]}]", "SNI host 'b.com' is not a compatible subset of any of the virtual service hosts: [a.com]"),
        ("hosts: [a.com]\n  gateways: [gw]\n  tcp: [{match: [{port: 1}]}]", "TCP route is required"),
        ("hosts: [a.com]\n  gateways: [gw/a/b]\n  http: [{route: [{destination: {host: a}}]}]", "invalid value for gateway name: 'a/b'"),
    ],
)
def test_virtual_service_spec_errors(spec, message):
    text = f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bad}}
spec:
  {spec}
"""
    result = compile_text(GATEWAY_80, REGISTRY, text)
    assert result.table is None
    assert any(message in m for m in messages(result, "error")), messages(result)


def test_unreachable_rules_are_warned():
    http = "  - route: [{destination: {host: a.example.com}}]\n  - match: [{uri: {prefix: /x}}]\n" + to("b.example.com")
    result = compile_text(GATEWAY_80, REGISTRY, vs("v", "[h.com]", http))
    assert any("virtualService rule .http[1] not used (route without matches defined before)" in m for m in messages(result, "warning"))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("host: a.example.com\n  trafficPolicy: {}", "traffic policy must have at least one field"),
        ("host: a.example.com\n  subsets: [{name: v1}, {name: v1}]", "duplicate subset names: v1"),
        ("host: a.example.com\n  subsets: [{name: V_1}]", "subset name is invalid: V_1"),
        ("host: a.example.com\n  trafficPolicy: {connectionPool: {}}", "connection pool must have at least one field"),
        ("host: a.example.com\n  trafficPolicy: {outlierDetection: {maxEjectionPercent: 200}}", "percentage 200 is not in range 0..100"),
        ("host: a.example.com\n  trafficPolicy: {tls: {mode: MUTUAL}}", "client certificate required for mutual tls"),
        ("host: a.example.com\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, maglev: {tableSize: 100}}}}", "tableSize must be a prime number for maglev"),
        ("host: a.example.com\n  trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}", "port traffic policy must have at least one field"),
    ],
)
def test_destination_rule_errors(spec, message):
    text = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bad}}
spec:
  {spec}
"""
    result = compile_text(GATEWAY_80, REGISTRY, text)
    assert result.table is None
    assert any(message in m for m in messages(result, "error")), messages(result)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("hosts: ['*']", "invalid host *"),
        ("hosts: [a.com]\n  resolution: NONE\n  endpoints: [{address: 1.2.3.4}]", "no endpoints should be provided for resolution type none"),
        ("hosts: [a.com]\n  resolution: STATIC\n  endpoints: [{address: backend.internal}]", "endpoint address 'backend.internal' is not a valid IP address"),
        ("hosts: [a.com]\n  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: a.b}, {address: c.d}]", "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN"),
        ("hosts: [a.com]\n  ports: [{number: 80, name: http}, {number: 80, name: web}]", "service entry port 80 already defined"),
        ("hosts: [a.com]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 1.2.3.4, ports: {web: 8080}}]", "endpoint port 8080 is not defined by the service entry"),
        ("hosts: [a.com, b.com]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: DNS", "multiple hosts provided with non-HTTP, non-TLS ports"),
    ],
)
def test_service_entry_errors(spec, message):
    text = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bad}}
spec:
  {spec}
"""
    result = compile_text(GATEWAY_80, REGISTRY, text)
    assert result.table is None
    assert any(message in m for m in messages(result, "error")), messages(result)


def test_duplicate_resources_are_errors():
    result = compile_text(GATEWAY_80, GATEWAY_80)
    assert result.table is None
    assert any("Gateway default/gw is defined more than once (also at inline0.yaml:2)" in m for m in messages(result, "error"))


def test_every_diagnostic_names_file_line_and_resource():
    result = compile_text(GATEWAY_80, REGISTRY, vs("nc", "[h.com]", "  - route: [{destination: {host: nowhere.example.com}}]"))
    (d,) = [d for d in result.diagnostics if "nowhere" in d.message]
    assert (d.file, d.line, d.resource, d.path) == ("inline2.yaml", 2, "VirtualService default/nc", "$.spec.http[0].route[0].destination.host")


def test_cluster_domain_is_configurable():
    tbl = compiled(GATEWAY_80, REGISTRY.replace("cluster.local", "corp"), vs("v", "[h.com]", to("reviews", subset="v1")), cluster_domain="corp")
    assert outcome(tbl, 80, "h.com") == cluster("reviews.default.svc.corp", 9080, "v1")
    assert tbl.options.cluster_domain == "corp"


def test_table_options_are_carried():
    opts = table.Options(server_header="edge", accept_http10=False)
    tbl = compiled(GATEWAY_80, REGISTRY, table_options=opts)
    assert (tbl.options.server_header, tbl.options.accept_http10) == ("edge", False)


# ---------------------------------------------------------------------------------------------------------
# RE2 translation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "re2, python",
    [
        (".*", ".*"),
        ("/api/v[0-9]+", "/api/v[0-9]+"),
        (r"a\z", r"a\Z"),
        (r"\Q1+1\E=2", r"1\+1=2"),
        ("(?<id>[0-9]+)", "(?P<id>[0-9]+)"),
        ("[[:digit:][:upper:]]+", "[0-9A-Z]+"),
        ("(?i)abc", "(?i)abc"),
        ("a(?i)bc", "a(?i:bc)"),
        ("(a(?i)b)c", "(a(?i:b))c"),
        (r"\x{41}", r"\U00000041"),
        ("a*?", "a*?"),
        ("x{2,5}", "x{2,5}"),
    ],
)
def test_re2_translation(re2, python):
    assert translate_re2(re2) == python


@pytest.mark.parametrize(
    "re2, reason",
    [
        ("a(?=b)", "look-arounds"),
        ("(?<!a)b", "look-arounds"),
        (r"(a)\1", "back-references"),
        ("a*+", "nested repetition"),
        ("a**", "nested repetition"),
        (r"\pL", "Unicode character classes"),
        ("(?U)a*", "ungreedy"),
        (r"a\Z", "invalid escape"),
        ("a{1001}", "at most 1000"),
        ("(?x)a b", "unsupported flag"),
        ("", "should not be empty"),
        ("a" * 1025, "too large"),
        ("a(?i)b|c", "alternation"),
        ("[[:^alpha:]]", "negated POSIX class"),
    ],
)
def test_re2_rejections(re2, reason):
    with pytest.raises(RegexError, match=reason):
        translate_re2(re2)


def test_re2_rewrite_translation():
    assert translate_re2_rewrite(r"/x/\1/\0\\", 1) == r"/x/\g<1>/\g<0>\\"
    with pytest.raises(RegexError):
        translate_re2_rewrite(r"\n", 0)


def test_direct_response_size_limits():
    body = base64.b64encode(b"x" * (200 * 1024)).decode()
    http = f"  - directResponse: {{status: 200, body: {{bytes: {body}}}}}"
    result = compile_text(GATEWAY_80, REGISTRY, vs("big", "[h.com]", http))
    assert result.table is not None
    assert any("large direct_responses may impact control plane performance" in m for m in messages(result, "warning"))
    body = base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()
    result = compile_text(GATEWAY_80, REGISTRY, vs("big", "[h.com]", f"  - directResponse: {{status: 200, body: {{bytes: {body}}}}}"))
    assert result.table is None
