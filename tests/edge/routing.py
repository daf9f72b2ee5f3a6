# Test helpers: inline YAML → compiled table, and a request → the route the table gives it (via the real
# workers/router.py and the same filter-chain choice `edge route` makes).
from __future__ import annotations

import textwrap

import msgspec

from edge import table
from edge.explain import select_filter_chain
from edge.compiler import CompileOptions, CompileResult, compile_resources
from edge.loader import LoadResult, load_text
from workers.router import Router

# A registry most tests share: ServiceEntries for a/b/c.example.com and a reviews service with v1..v3.
REGISTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec:
  hosts: [a.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: b}
spec:
  hosts: [b.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: c}
spec:
  hosts: [c.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.3}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1}}
  - {address: 10.1.0.2, labels: {version: v2}}
  - {address: 10.1.0.3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""

GATEWAY_80 = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def load(text: str, path: str = "inline.yaml") -> LoadResult:
    result = LoadResult()
    load_text(textwrap.dedent(text), path, result)
    assert result.ok, [str(d) for d in result.errors]
    return result


def compile_text(*texts: str, labels: dict | None = None, **kw) -> CompileResult:
    resources = []
    for i, text in enumerate(texts):
        loaded = load(text, f"inline{i}.yaml")
        for res in loaded.resources:
            resources.append(msgspec.structs.replace(res, order=len(resources)))
    options = CompileOptions(gateway_labels=labels if labels is not None else {"istio": "ingressgateway"}, **kw)
    return compile_resources(resources, options)


def compiled(*texts: str, **kw) -> table.RoutingTable:
    result = compile_text(*texts, **kw)
    assert result.table is not None, [str(d) for d in result.errors]
    return result.table


def messages(result: CompileResult, severity: str | None = None) -> list[str]:
    return [str(d) for d in result.diagnostics if severity is None or d.severity == severity]


class Req:
    def __init__(self, path="/", host="", headers=(), method="GET", scheme="http", query=""):
        path, _, q = path.partition("?")
        self.path = path
        self.query = query or q
        self.authority = host
        self.method = method
        self.scheme = scheme
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers]


def route_config_for(tbl: table.RoutingTable, port: int, host: str, sni: str | None = None) -> table.RouteConfig | None:
    listener = next((l for l in tbl.listeners if l.port == port), None)
    if listener is None:
        return None
    if listener.protocol == table.PROTO_HTTP:
        return listener.route_config
    chain = select_filter_chain(listener.filter_chains, (sni if sni is not None else host.partition(":")[0]).lower())
    return chain.route_config if chain is not None else None


def route_for(tbl: table.RoutingTable, port: int, host: str, path: str = "/", headers=(), **kw) -> table.Route | None:
    rc = route_config_for(tbl, port, host, kw.pop("sni", None))
    if rc is None:
        return None
    router = Router(rc)
    vh = router.find_virtual_host(host)
    if vh is None:
        return None
    return router.match(vh, Req(path, host, headers, **kw))


def outcome(tbl: table.RoutingTable, port: int, host: str, path: str = "/", headers=(), **kw) -> str:
    """A short, comparable description of what the gateway does with the request."""
    route = route_for(tbl, port, host, path, headers, **kw)
    if route is None:
        return "404"
    if route.action == table.ACTION_REDIRECT:
        return f"redirect {route.redirect.code}"
    if route.action == table.ACTION_DIRECT:
        return f"direct {route.direct.status}"
    return " + ".join(f"{c.cluster or 'NC:' + c.host}" + (f"@{c.weight}" if len(route.clusters) > 1 else "") for c in route.clusters)


def cluster(host: str, port: int = 80, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{host}"
