# The compiler: Istio resources → RoutingTable. A pure function with Istio's semantics (istiod's gateway
# code, pilot/pkg/networking/core/{gateway.go,route/route.go,cluster_builder.go},
# pilot/pkg/model/{gateway,virtualservice}.go and pilot/pkg/config/validation/validation.go).
#
# Stages, in the order driver.py runs them, and the module of each:
#   1. index      (driver.py) resources sorted by creation: (creationTimestamp, load order when there is
#                 none, name, namespace); duplicates rejected
#   2. admission  (admission.py) each resource validated on its own, as Istio's webhook does (Gateways,
#                 ServiceEntries and DestinationRules here; VirtualServices as stage 4 prepares them)
#   3. registry   (clusters.py) ServiceEntry hosts indexed (first wins), DestinationRules merged per host
#   4. bind       (virtual_services.py) VirtualService hosts and destinations resolved (`reviews` →
#                 reviews.<ns>.svc.<domain>), `gateways` resolved to `<ns>/<name>`, delegate routes merged
#                 into their root, each root bound to its gateways
#   5. rules      (http_rules.py, for stage 4) every HTTP rule translated once, as far as it goes without
#                 the gateway and port: matches, header operations, rewrite, redirect, retries, fault, CORS
#   6. gateways   (servers.py) Gateways whose selector ⊆ the gateway labels (empty selector = all); server
#                 hosts sanitised (`./h` → `<gw-ns>/h`, `*/h` → `h`)
#   7. servers    (servers.py) servers merged into listeners keyed (bind, port) as mergeGateways does: plain
#                 HTTP servers share one RouteConfig `http.<port>`; TLS servers (HTTPS, TLS) share a port and
#                 are told apart by SNI; any other mix on one (bind, port) is a conflict (error, later server
#                 skipped)
#   8. listeners  (listeners.py) per server, domains = server hosts ∩ VS hosts (the more specific name is
#                 kept; `*.x` does not match `x`); the routes of every bound VS appended in creation order;
#                 catch-alls moved last (stable); vhosts with identical routes collapsed; no vhost at all →
#                 `*` blackhole; TLS filter chains by SNI; tcp and tls routes
#   9. routes     (routes.py, for stage 8) per (VS, gateway, port): a match block whose `port` differs from
#                 the server port or whose `gateways` omit the gateway is dropped; translation stops at the
#                 VS's first catch-all; action = redirect, else direct response, else forward
#  10. clusters   (clusters.py, on demand from stages 8 and 9) destination → ServiceEntry port (given, else
#                 the only port, else the server port) → `outbound|<port>|<subset>|<host>`; DestinationRule
#                 policy: top level, then the subset per top-level field, each replaced wholesale by its
#                 portLevelSettings entry; endpoints
#  11. analyze    (servers.py) istioctl analyze's binding checks: gateways not defined or not selected,
#                 VirtualService hosts no server exposes
# Below the stages: report.py (diagnostics and where they point), model.py (the records the stages hand
# each other, shared constants, options and result), hosts.py (host names), regex.py (RE2).
# Imports form a DAG, bottom up: report, model, hosts, regex → admission → http_rules → virtual_services;
# clusters → routes; servers; listeners (routes, servers, admission's cipher check) → driver.
#
# Rules:
# - Every diagnostic names the resource's file and line and, where it can, the `$.spec…` path.
# - Errors fail the compile (CompileResult.table is None); warnings never do. A destination that does not
#   resolve (unknown host, port or subset) is a warning and its WeightedCluster has cluster "" (503 NC), as
#   Istio still serves the route and Envoy answers 503 NC.
# - The table depends only on the set of resources, never on the order of the input list.
# - Regexes are checked with RE2 and carried into the table as written (the workers match with RE2, as
#   Envoy does); only a uriRegexRewrite substitution is translated (`\1` → Python's `\g<1>`), see regex.py.
from edge.compiler.driver import compile_resources, load_and_compile
from edge.compiler.hosts import (
    host_matches,
    names_for_namespace,
    resolve_gateway_name,
    resolve_shortname,
    sanitize_server_hosts,
    selector_matches,
)
from edge.compiler.model import CompileOptions, CompileResult

__all__ = [
    "CompileOptions",
    "CompileResult",
    "compile_resources",
    "host_matches",
    "load_and_compile",
    "names_for_namespace",
    "resolve_gateway_name",
    "resolve_shortname",
    "sanitize_server_hosts",
    "selector_matches",
]
