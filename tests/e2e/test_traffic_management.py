# End to end: every VirtualService HTTP feature and every DestinationRule / ServiceEntry policy of issue 4, through
# the real `edge run` (2 workers) to real backends on loopback that report which instance served each request.
# Distributions are asserted with counts: the instance in each answer, and each backend's own /__stats.
#
# One gateway for the module, with one combined config (a host per feature), so the suite stays fast. Tests that
# count requests at a backend reset its counters first and use an instance no other test routes to while they
# run. Tolerances are set at ≥ 4.5 standard deviations of the binomial, so a correct gateway fails them about
# once in 100,000 runs.
#
# What takes waiting to show (per-try timeouts, an ejection running out, mirrors landing after the response) is
# specified against the real proxy in memory on trio's autojump clock, with these configs: tests/workers/http/
# test_proxy_retries.py, test_proxy_upstreams.py, test_proxy_mirrors.py. Here, one end-to-end test per feature.
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.fixed_backend import FixedBackend
from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

WORKERS = 2

# ------------------------------------------------------------------------------------------------- config

GATEWAYS = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 81, name: http-redirect, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw2}
spec:
  servers:
  - port: {number: 82, name: http-82, protocol: HTTP}
    hosts: ["*"]
"""


MATCHES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: matches}
spec:
  hosts: [match.example.com]
  gateways: [gw, gw2]
  http:
  - {name: exact, match: [{uri: {exact: /exact}}], directResponse: {status: 200, body: {string: exact}}}
  - {name: prefix, match: [{uri: {prefix: /prefix}}], directResponse: {status: 200, body: {string: prefix}}}
  - {name: regex, match: [{uri: {regex: "/items/[0-9]+"}}], directResponse: {status: 200, body: {string: regex}}}
  # Nested repetition: linear for RE2 (Envoy's engine, and edge's); exponential for a backtracking engine.
  - {name: nested, match: [{uri: {regex: "/nested/([a-z]+/?)+"}}], directResponse: {status: 200, body: {string: nested}}}
  - name: nocase
    match: [{uri: {exact: /CaseLess}, ignoreUriCase: true}, {uri: {prefix: /NoCase/}, ignoreUriCase: true}]
    directResponse: {status: 200, body: {string: nocase}}
  - {name: post, match: [{uri: {prefix: /m}, method: {exact: POST}}], directResponse: {status: 200, body: {string: post}}}
  - {name: get-or-head, match: [{uri: {prefix: /m}, method: {regex: "GET|HEAD"}}], directResponse: {status: 200, body: {string: get}}}
  - {name: https, match: [{uri: {prefix: /s}, scheme: {exact: https}}], directResponse: {status: 200, body: {string: https}}}
  - {name: http, match: [{uri: {prefix: /s}, scheme: {exact: http}}], directResponse: {status: 200, body: {string: http}}}
  - name: authority-port
    match: [{uri: {prefix: /a}, authority: {regex: "match\\\\.example\\\\.com:[0-9]+"}}]
    directResponse: {status: 200, body: {string: authority-with-port}}
  - {name: authority, match: [{uri: {prefix: /a}, authority: {exact: match.example.com}}], directResponse: {status: 200, body: {string: authority}}}
  - {name: jason, match: [{uri: {prefix: /h}, headers: {x-user: {exact: jason}}}], directResponse: {status: 200, body: {string: jason}}}
  - {name: admin, match: [{uri: {prefix: /h}, headers: {x-user: {prefix: adm}}}], directResponse: {status: 200, body: {string: admin}}}
  - {name: numbered, match: [{uri: {prefix: /h}, headers: {x-user: {regex: "u[0-9]+"}}}], directResponse: {status: 200, body: {string: numbered}}}
  - {name: present, match: [{uri: {prefix: /h}, headers: {x-user: {}}}], directResponse: {status: 200, body: {string: present}}}
  - {name: empty, match: [{uri: {prefix: /e}, headers: {x-flag: {exact: ""}}}], directResponse: {status: 200, body: {string: empty-flag}}}
  - {name: allowed, match: [{uri: {prefix: /w}, withoutHeaders: {x-block: {exact: "yes"}}}], directResponse: {status: 200, body: {string: allowed}}}
  - {name: blocked, match: [{uri: {prefix: /w}}], directResponse: {status: 200, body: {string: blocked}}}
  - {name: numeric-id, match: [{uri: {prefix: /q}, queryParams: {id: {regex: "[0-9]+"}}}], directResponse: {status: 200, body: {string: numeric-id}}}
  - {name: flag, match: [{uri: {prefix: /q}, queryParams: {flag: {exact: ""}}}], directResponse: {status: 200, body: {string: flag}}}
  - {name: v2, match: [{uri: {prefix: /q}, queryParams: {v: {prefix: "2."}}}], directResponse: {status: 200, body: {string: v2}}}
  - name: or-and
    match: [{uri: {prefix: /or1}}, {uri: {prefix: /or2}, headers: {x-and: {exact: "1"}}}]
    directResponse: {status: 200, body: {string: or}}
  - {name: port-82, match: [{uri: {prefix: /port}, port: 82}], directResponse: {status: 200, body: {string: port-82}}}
  - {name: port-80, match: [{uri: {prefix: /port}, port: 80}], directResponse: {status: 200, body: {string: port-80}}}
  - {name: on-gw2, match: [{uri: {prefix: /gw}, gateways: [gw2]}], directResponse: {status: 200, body: {string: gw2}}}
  - {name: on-any, match: [{uri: {prefix: /gw}}], directResponse: {status: 200, body: {string: gw}}}
"""

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: weights}
spec:
  hosts: [weights.example.com]
  gateways: [gw]
  http:
  - route:
    - {destination: {host: app.local, subset: a}, weight: 3}
    - {destination: {host: app.local, subset: b}, weight: 1}
    - {destination: {host: app.local, subset: c}, weight: 0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: headers}
spec:
  hosts: [headers.example.com]
  gateways: [gw]
  http:
  - headers:
      request:
        set: {x-route-set: route}
        add: {x-route-add: added}
        remove: [x-remove-me]
      response:
        set: {x-resp-set: route}
        add: {x-resp-add: r}
        remove: [x-served-by]
    route:
    - destination: {host: app.local, subset: a}
      headers:
        request: {set: {x-dest: a, x-route-set: destination-wins}}
        response: {set: {x-dest-resp: a}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: headers-weighted}
spec:
  hosts: [headers-weighted.example.com]
  gateways: [gw]
  http:
  - route:
    - destination: {host: app.local, subset: a}
      weight: 1
      headers: {request: {set: {x-dest: a}}, response: {set: {x-dest-resp: a}}}
    - destination: {host: app.local, subset: b}
      weight: 1
      headers: {request: {set: {x-dest: b}}, response: {set: {x-dest-resp: b}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: redirects}
spec:
  hosts: [redirect.example.com]
  gateways: [gw]
  http:
  - {match: [{uri: {exact: /uri}}], redirect: {uri: /new-path}}
  - {match: [{uri: {prefix: /auth}}], redirect: {authority: other.example.com, redirectCode: 302}}
  - {match: [{uri: {prefix: /port}}], redirect: {scheme: https, port: 8443}}
  - {match: [{uri: {prefix: /derive}}], redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}}
  - {match: [{uri: {prefix: /old/}}], redirect: {prefixRewrite: /new/, redirectCode: 307}}
  - match: [{uri: {prefix: /perm}}]
    redirect: {uri: /permanent, redirectCode: 308}
    headers: {response: {set: {x-redirect: "yes"}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: direct}
spec:
  hosts: [direct.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {exact: /string}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}
    headers: {response: {set: {content-type: text/plain}}}
  - {match: [{uri: {exact: /bytes}}], directResponse: {status: 200, body: {bytes: "%(bytes_body)s"}}}
  - {match: [{uri: {exact: /empty}}], directResponse: {status: 204}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rewrites}
spec:
  hosts: [rewrite.example.com]
  gateways: [gw]
  http:
  - {match: [{uri: {prefix: /api/}}], rewrite: {uri: /v2/}, route: [{destination: {host: app.local, subset: a}}]}
  - match: [{uri: {prefix: /service/}}]
    rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\\\2/instance/\\\\1"}}
    route: [{destination: {host: app.local, subset: a}}]
  - {match: [{uri: {prefix: /host}}], rewrite: {authority: internal.example.com}, route: [{destination: {host: app.local, subset: a}}]}
  - {match: [{uri: {exact: /exact-old}}], rewrite: {uri: /exact-new}, route: [{destination: {host: app.local, subset: a}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: delegate-root}
spec:
  hosts: [delegate.example.com]
  gateways: [gw]
  http:
  - {match: [{uri: {prefix: /shop}}], delegate: {name: shop-routes}}
  - {match: [{uri: {prefix: /other}}], directResponse: {status: 200, body: {string: root}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop-routes}
spec:
  http:
  - {match: [{uri: {prefix: /shop/cart}}], route: [{destination: {host: app.local, subset: b}}]}
  - route: [{destination: {host: app.local, subset: a}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: timeouts}
spec:
  hosts: [timeout.example.com]
  gateways: [gw]
  http:
  - {timeout: 0.5s, route: [{destination: {host: app.local, subset: a}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: retries}
spec:
  hosts: [retry.example.com]
  gateways: [gw]
  http:
  - {match: [{uri: {prefix: /status/418}}], retries: {attempts: 2, retryOn: "418"}, route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {prefix: /status/409}}], retries: {attempts: 2, retryOn: retriable-4xx}, route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {prefix: /status/502}}], retries: {attempts: 2, retryOn: gateway-error}, route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {prefix: /status/500}}], retries: {attempts: 2, retryOn: gateway-error}, route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {prefix: /status/503}}], route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {prefix: /none/}}], retries: {attempts: 0}, route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {exact: /drop}, headers: {x-default-policy: {}}}], route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {exact: /drop}, headers: {x-gateway-error: {}}}], retries: {attempts: 2, retryOn: gateway-error}, route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {exact: /drop}}], retries: {attempts: 2, retryOn: reset}, route: [{destination: {host: retry-target.local}}]}
  - {match: [{uri: {exact: /garbage}}], retries: {attempts: 2, retryOn: 5xx}, route: [{destination: {host: retry-target.local}}]}
  - match: [{uri: {prefix: /delay/}}]
    retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: 5xx}
    route: [{destination: {host: retry-target.local}}]
  - {retries: {attempts: 3, retryOn: 5xx}, route: [{destination: {host: flaky.local}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faults}
spec:
  hosts: [fault.example.com]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 0.5s, percentage: {value: 100}}}
    route: [{destination: {host: app.local, subset: a}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: fault-target.local}}]
  - match: [{uri: {prefix: /half}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 50}}}
    route: [{destination: {host: fault-target.local}}]
  - match: [{uri: {prefix: /grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: fault-target.local}}]
  - match: [{uri: {prefix: /never}}]
    fault: {abort: {httpStatus: 500}}
    route: [{destination: {host: fault-target.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mirrors}
spec:
  hosts: [mirror.example.com]
  gateways: [gw]
  http:
  - {match: [{uri: {prefix: /single}}], route: [{destination: {host: mirror-primary.local}}], mirror: {host: mirror-copy.local}}
  - match: [{uri: {prefix: /half}}]
    route: [{destination: {host: mirror-primary.local}}]
    mirror: {host: mirror-copy.local}
    mirrorPercentage: {value: 50}
  - match: [{uri: {prefix: /many}}]
    route: [{destination: {host: mirror-primary.local}}]
    mirrors:
    - {destination: {host: mirror-copy.local}}
    - {destination: {host: mirror-copy2.local}, percentage: {value: 100}}
  - {match: [{uri: {prefix: /slow}}], route: [{destination: {host: mirror-primary.local}}], mirror: {host: mirror-slow.local}}
  - {match: [{uri: {prefix: /seen}}], route: [{destination: {host: mirror-primary.local}}], mirror: {host: mirror-seen.local}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cors}
spec:
  hosts: [cors.example.com]
  gateways: [gw]
  http:
  - corsPolicy:
      allowOrigins:
      - exact: https://ok.example
      - prefix: https://pre.
      - regex: "https://[a-z]+\\\\.rx\\\\.example"
      allowMethods: [GET, POST]
      allowHeaders: [x-custom, content-type]
      exposeHeaders: [x-exposed]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: cors-target.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: balancing}
spec:
  hosts: [rr.example.com, random.example.com, subsets.example.com, lr.example.com, portlevel.example.com]
  gateways: [gw]
  http:
  - {match: [{authority: {prefix: rr.}}], route: [{destination: {host: rr.local}}]}
  - {match: [{authority: {prefix: random.}}], route: [{destination: {host: app.local}}]}
  - {match: [{authority: {prefix: subsets.}}], route: [{destination: {host: app.local, subset: all}}]}
  - {match: [{authority: {prefix: lr.}}], route: [{destination: {host: lr.local}}]}
  - {match: [{uri: {prefix: /alt}}], route: [{destination: {host: ports.local, port: {number: 8080}}}]}
  - route: [{destination: {host: ports.local, port: {number: 80}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hashing}
spec:
  hosts: [hash-header.example.com, hash-cookie.example.com, hash-ip.example.com, hash-query.example.com]
  gateways: [gw]
  http:
  - {match: [{authority: {prefix: hash-header.}}], route: [{destination: {host: hash-header.local}}]}
  - {match: [{authority: {prefix: hash-cookie.}}], route: [{destination: {host: hash-cookie.local}}]}
  - {match: [{authority: {prefix: hash-ip.}}], route: [{destination: {host: hash-ip.local}}]}
  - route: [{destination: {host: hash-query.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pools}
spec:
  hosts: [cb.example.com, mrpc.example.com, idle.example.com, outlier.example.com, gwerrors.example.com, connect-timeout.example.com,
          keepalive.example.com, weighted-endpoints.example.com, passthrough.example.com, warmup.example.com, max-ejection.example.com]
  gateways: [gw]
  http:
  - {match: [{authority: {prefix: connect-timeout.}}], retries: {attempts: 0}, route: [{destination: {host: blackhole.local}}]}
  - {match: [{authority: {prefix: keepalive.}}], route: [{destination: {host: ka.local}}]}
  - {match: [{authority: {prefix: weighted-endpoints.}}], route: [{destination: {host: weighted-endpoints.local}}]}
  - {match: [{authority: {prefix: passthrough.}}], route: [{destination: {host: passthrough.local}}]}
  - {match: [{authority: {prefix: warmup.}}], route: [{destination: {host: warmup.local}}]}
  - {match: [{authority: {prefix: max-ejection.}}], route: [{destination: {host: max-ejection.local}}]}
  - {match: [{authority: {prefix: cb.}}], route: [{destination: {host: cb.local}}]}
  - {match: [{authority: {prefix: mrpc.}}], route: [{destination: {host: mrpc.local}}]}
  - {match: [{authority: {prefix: idle.}}], route: [{destination: {host: idle.local}}]}
  - {match: [{authority: {prefix: outlier.}}], route: [{destination: {host: outlier.local}}]}
  - route: [{destination: {host: gwerrors.local}}]
"""

DESTINATION_RULES = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app}
spec:
  host: app.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
  - {name: c, labels: {version: c}}
  - name: all
    labels: {group: app}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: rr}
spec:
  host: rr.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: lr}
spec:
  host: lr.local
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ports}
spec:
  host: ports.local
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool: {http: {maxRequestsPerConnection: 1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky}
spec:
  host: flaky.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hash-header}
spec:
  host: hash-header.local
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hash-cookie}
spec:
  host: hash-cookie.local
  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hash-ip}
spec:
  host: hash-ip.local
  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hash-query}
spec:
  host: hash-query.local
  trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: user}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cb}
spec:
  host: cb.local
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mrpc}
spec:
  host: mrpc.local
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: idle}
spec:
  host: idle.local
  trafficPolicy: {connectionPool: {http: {idleTimeout: 1s}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier}
spec:
  host: outlier.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: gwerrors}
spec:
  host: gwerrors.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: blackhole}
spec:
  host: blackhole.local
  trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0.3s}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ka}
spec:
  host: ka.local
  trafficPolicy: {connectionPool: {tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 4}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: weighted-endpoints}
spec:
  host: weighted-endpoints.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: passthrough}
spec:
  host: passthrough.local
  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: warmup}
spec:
  host: warmup.local
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s, minimumPercent: 20, aggression: 1.5}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: max-ejection}
spec:
  host: max-ejection.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 10}
"""

BYTES_BODY = b"\x00\x01binary\xff\xfe"

SAMPLE_INSTANCES = [
    "a", "b", "c", "rt", "good", "ft", "mp", "m1", "m2", "cors", "p1", "p2", "lr1", "lr2", "cb", "mrpc", "idle", "od-good", "gwe-good",
    "ka", "wa", "wb",
]  # fmt: skip


def service_entry(host: str, endpoints: list[tuple[int, dict[str, str]]], *, ports: tuple[tuple[int, str], ...] = ((80, "http"),)) -> str:
    """A STATIC ServiceEntry on 127.0.0.1; every service port of an endpoint maps to the same backend port."""
    port_lines = "".join(f"  - {{number: {number}, name: {name}, protocol: HTTP}}\n" for number, name in ports)
    eps = ""
    for backend_port, labels in endpoints:
        mapping = ", ".join(f"{name}: {backend_port}" for _, name in ports)
        label_text = ", ".join(f"{k}: {v}" for k, v in labels.items())
        eps += f"  - {{address: 127.0.0.1, ports: {{{mapping}}}, labels: {{{label_text}}}}}\n"
    name = host.replace(".", "-")
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n"
        f"  hosts: [{host}]\n  resolution: STATIC\n  ports:\n{port_lines}  endpoints:\n{eps}"
    )


def service_entries(backends: SampleBackends, fixed: dict[str, FixedBackend], blackhole_port: int) -> str:
    p = backends.port

    def one(name: str) -> list[tuple[int, dict[str, str]]]:
        return [(p(name), {"version": name})]

    abc = [(p(n), {"version": n, "group": "app"}) for n in ("a", "b", "c")]
    docs = [
        service_entry("app.local", abc),
        service_entry("rr.local", abc),
        service_entry("hash-header.local", abc),
        service_entry("hash-cookie.local", abc),
        service_entry("hash-ip.local", abc),
        service_entry("hash-query.local", abc),
        service_entry("retry-target.local", one("rt")),
        service_entry("flaky.local", [(fixed["retry-bad"].port, {"version": "bad"}), (p("good"), {"version": "good"})]),
        service_entry("fault-target.local", one("ft")),
        service_entry("mirror-primary.local", one("mp")),
        service_entry("mirror-copy.local", one("m1")),
        service_entry("mirror-copy2.local", one("m2")),
        service_entry("mirror-slow.local", [(fixed["mirror-slow"].port, {"version": "slow"})]),
        service_entry("mirror-seen.local", [(fixed["mirror-seen"].port, {"version": "seen"})]),
        service_entry("cors-target.local", one("cors")),
        service_entry("ports.local", [(p("p1"), {"version": "p1"}), (p("p2"), {"version": "p2"})], ports=((80, "http"), (8080, "http-alt"))),
        service_entry("lr.local", [(p("lr1"), {"version": "lr1"}), (p("lr2"), {"version": "lr2"})]),
        service_entry("cb.local", one("cb")),
        service_entry("mrpc.local", one("mrpc")),
        service_entry("idle.local", one("idle")),
        service_entry("outlier.local", [(p("od-good"), {"version": "good"}), (fixed["od-bad"].port, {"version": "bad"})]),
        service_entry(
            "gwerrors.local",
            [(p("gwe-good"), {"version": "good"}), (fixed["gwe-502"].port, {"version": "bad502"}), (fixed["gwe-500"].port, {"version": "bad500"})],
        ),
        service_entry("blackhole.local", [(blackhole_port, {"version": "blackhole"})]),
        service_entry("ka.local", one("ka")),
        weighted_service_entry("weighted-endpoints.local", [(p("wa"), 3), (p("wb"), 1)]),
        service_entry("passthrough.local", one("a")),
        service_entry("warmup.local", [(p("a"), {"version": "a"}), (p("b"), {"version": "b"})]),
        service_entry("max-ejection.local", [(fixed["mx-1"].port, {"version": "mx-1"}), (fixed["mx-2"].port, {"version": "mx-2"})]),
    ]
    return "---\n".join(docs)


def weighted_service_entry(host: str, endpoints: list[tuple[int, int]]) -> str:
    eps = "".join(f"  - {{address: 127.0.0.1, ports: {{http: {port}}}, weight: {weight}}}\n" for port, weight in endpoints)
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {host.replace('.', '-')}}}\nspec:\n"
        f"  hosts: [{host}]\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  endpoints:\n{eps}"
    )


def blackhole_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A port whose accept queue is full: the kernel drops further SYNs, so a connect there hangs (until the
    connect timeout) instead of being refused."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    return listener, fillers


FIXED = {
    "retry-bad": {"status": 503},
    "od-bad": {"status": 500},
    "gwe-502": {"status": 502},
    "gwe-500": {"status": 500},
    "mirror-slow": {"status": 500, "delay_s": 2.0},
    "mirror-seen": {"status": 200},
    "mx-1": {"status": 500},
    "mx-2": {"status": 500},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("traffic")
    fixed = {name: FixedBackend(name, **kw) for name, kw in FIXED.items()}
    for backend in fixed.values():
        backend.__enter__()
    blackhole, fillers = blackhole_listener()
    try:
        with SampleBackends(work, http=SAMPLE_INSTANCES) as backends:
            config = {
                "gateways.yaml": GATEWAYS,
                "matches.yaml": MATCHES,
                "routes.yaml": ROUTES.replace("%(bytes_body)s", base64.b64encode(BYTES_BODY).decode()),
                "destination-rules.yaml": DESTINATION_RULES,
                "service-entries.yaml": service_entries(backends, fixed, blackhole.getsockname()[1]),
            }
            with EdgeProcess(work, config, workers=WORKERS, gateway_ports=(80, 81, 82)) as edge:
                yield Stack(edge, backends, fixed)
    finally:
        for backend in fixed.values():
            backend.stop()
        for sock in (blackhole, *fillers):
            sock.close()


class Stack:
    def __init__(self, edge: EdgeProcess, backends: SampleBackends, fixed: dict[str, FixedBackend]):
        self.edge = edge
        self.backends = backends
        self.fixed = fixed

    @property
    def port(self) -> int:
        return self.edge.port(80)

    def get(self, path: str, host: str, **kw) -> tuple[int, bytes, dict[str, str]]:
        return http_get(self.port, path, host=host, **kw)

    def client(self, host: str, **kw) -> "KeepAlive":
        return KeepAlive(self.port, host, **kw)


class KeepAlive:
    """One client connection reused for many requests (so they all reach the same worker)."""

    def __init__(self, port: int, host: str, source_ip: str | None = None):
        self.host = host
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source_ip, 0) if source_ip else None)

    def request(self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
        self.conn.request(method, path, body=body, headers={"Host": self.host, **(headers or {})})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, data, {k.lower(): v for k, v in response.getheaders()}

    def instance(self, path: str = "/", **kw) -> str:
        status, body, _ = self.request(path, **kw)
        assert status == 200, (status, body)
        return json.loads(body)["instance"]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "KeepAlive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def instance_of(body: bytes) -> str:
    return json.loads(body)["instance"]


def within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    """Is `count` successes of n within `sigmas` standard deviations of the binomial mean n·p?"""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def wait_until(predicate, timeout_s: float = 5.0, poll_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def concurrently(calls: int, fn) -> list:
    """fn(i) for i in range(calls), all started at once on their own threads; results in order."""
    barrier = threading.Barrier(calls)

    def run(i):
        barrier.wait(5)
        return fn(i)

    with ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(run, range(calls)))


# ================================================================================================== match


def body_of(stack: Stack, path: str, host: str = "match.example.com", port: int | None = None, **kw) -> tuple[int, str]:
    status, body, _ = http_get(port or stack.port, path, host=host, **kw)
    return status, body.decode()


@pytest.mark.parametrize(
    "path, headers, method, expected",
    [
        ("/exact", {}, "GET", (200, "exact")),
        ("/exact/more", {}, "GET", (404, "")),  # exact is exact (query excluded below)
        ("/exact?x=1", {}, "GET", (200, "exact")),
        ("/prefixed/and/more", {}, "GET", (200, "prefix")),  # a plain string prefix: /prefix matches /prefixed
        ("/items/42", {}, "GET", (200, "regex")),
        ("/items/42x", {}, "GET", (404, "")),  # RE2 full match, not a search
        ("/x/items/42", {}, "GET", (404, "")),
        ("/nested/abc/def/", {}, "GET", (200, "nested")),
        # 60 letters and a mismatch at the end: Python's re would backtrack ~2^60 times and hang the worker.
        ("/nested/" + "a" * 60 + "!", {}, "GET", (404, "")),
        ("/caseless", {}, "GET", (200, "nocase")),
        ("/NOCASE/thing", {}, "GET", (200, "nocase")),
        ("/m", {}, "POST", (200, "post")),
        ("/m", {}, "GET", (200, "get")),
        ("/m", {}, "DELETE", (404, "")),
        ("/s", {}, "GET", (200, "http")),  # the scheme of a plain-text listener is http
        ("/h", {"x-user": "jason"}, "GET", (200, "jason")),
        ("/h", {"x-user": "admin7"}, "GET", (200, "admin")),
        ("/h", {"x-user": "u12"}, "GET", (200, "numbered")),
        ("/h", {"x-user": "xu12"}, "GET", (200, "present")),  # regex is a full match; {} only needs presence
        ("/h", {"x-user": ""}, "GET", (200, "present")),
        ("/h", {}, "GET", (404, "")),
        ("/e", {"x-flag": ""}, "GET", (200, "empty-flag")),
        ("/e", {"x-flag": "1"}, "GET", (404, "")),
        ("/e", {}, "GET", (404, "")),
        ("/w", {}, "GET", (200, "allowed")),  # withoutHeaders: a missing header is "", which is not "yes"
        ("/w", {"x-block": "no"}, "GET", (200, "allowed")),
        ("/w", {"x-block": "yes"}, "GET", (200, "blocked")),
        ("/q?id=123", {}, "GET", (200, "numeric-id")),
        ("/q?id=a123", {}, "GET", (404, "")),
        ("/q?flag", {}, "GET", (200, "flag")),
        ("/q?flag=", {}, "GET", (200, "flag")),
        ("/q?flag=1", {}, "GET", (404, "")),
        ("/q?v=2.5&id=x", {}, "GET", (200, "v2")),
        ("/or1", {}, "GET", (200, "or")),  # blocks are OR'ed
        ("/or2", {"x-and": "1"}, "GET", (200, "or")),  # conditions inside one block are AND'ed
        ("/or2", {}, "GET", (404, "")),
        ("/port", {}, "GET", (200, "port-80")),
        ("/gw", {}, "GET", (200, "gw")),
    ],
)
def test_match_conditions(stack, path, headers, method, expected):
    status, body, _ = http_get(stack.port, path, host="match.example.com", headers=headers, method=method)
    assert (status, body.decode()) == expected


def test_match_authority_is_the_raw_host_with_its_port(stack):
    assert body_of(stack, "/a", host="match.example.com") == (200, "authority")
    assert body_of(stack, "/a", host="match.example.com:8080") == (200, "authority-with-port")


def test_match_port_and_gateways_select_blocks_per_listener(stack):
    port82 = stack.edge.port(82)
    # Port 82 is served by Gateway gw2 only: the `port: 80` block is dropped there, `port: 82` kept.
    assert body_of(stack, "/port", port=port82) == (200, "port-82")
    assert body_of(stack, "/port") == (200, "port-80")
    # A block with `gateways: [gw2]` applies on gw2's listener only.
    assert body_of(stack, "/gw", port=port82) == (200, "gw2")
    assert body_of(stack, "/gw") == (200, "gw")


# ================================================================================================== route


def test_weighted_destinations_split_3_to_1_and_weight_0_gets_nothing(stack):
    n = 400
    counts = Counter()
    with stack.client("weights.example.com") as client:
        for _ in range(n):
            counts[client.instance()] += 1
    assert set(counts) <= {"a", "b"}, counts  # weight 0 is dropped
    assert counts["a"] + counts["b"] == n
    assert within(counts["a"], n, 0.75), counts


def test_route_and_destination_header_operations(stack):
    status, body, headers = stack.get("/headers", "headers.example.com", headers={"x-remove-me": "1", "x-route-add": "client"})
    assert status == 200
    seen = json.loads(body)["headers"]
    assert "x-remove-me" not in seen
    assert seen["x-route-add"] == "client, added"  # add appends to what the client sent
    assert seen["x-dest"] == "a"
    assert seen["x-route-set"] == "destination-wins"  # destination operations come after the route's
    assert headers["x-resp-set"] == "route"
    assert headers["x-resp-add"] == "r"
    assert headers["x-dest-resp"] == "a"
    assert "x-served-by" not in headers  # response remove


def test_weighted_destinations_carry_their_own_header_operations(stack):
    seen_instances = set()
    with stack.client("headers-weighted.example.com") as client:
        for _ in range(40):
            status, body, headers = client.request("/headers")
            doc = json.loads(body)
            assert status == 200
            assert doc["headers"]["x-dest"] == doc["instance"]
            assert headers["x-dest-resp"] == doc["instance"]
            seen_instances.add(doc["instance"])
    assert seen_instances == {"a", "b"}


# ============================================================================================= redirect


@pytest.mark.parametrize(
    "path, status, location",
    [
        ("/uri?x=1", 301, "http://redirect.example.com/new-path?x=1"),  # default code 301, query kept
        ("/auth/z", 302, "http://other.example.com/auth/z"),
        ("/port/x", 301, "https://redirect.example.com:8443/port/x"),
        ("/derive", 301, "https://redirect.example.com:80/derive"),  # FROM_REQUEST_PORT: the listener port
        ("/old/x?q=1", 307, "http://redirect.example.com/new/x?q=1"),  # prefixRewrite replaces the matched prefix
        ("/perm", 308, "http://redirect.example.com/permanent"),
    ],
)
def test_redirects(stack, path, status, location):
    got, body, headers = stack.get(path, "redirect.example.com")
    assert got == status
    assert headers["location"] == location
    assert body == b""


def test_redirect_carries_route_response_headers(stack):
    _, _, headers = stack.get("/perm", "redirect.example.com")
    assert headers["x-redirect"] == "yes"


def test_https_redirect_on_an_http_server(stack):
    # Port 81's server has tls.httpsRedirect: every host on it, bound to a VirtualService or not, gets a 301.
    for host in ("anything.example.com", "weights.example.com"):
        status, body, headers = http_get(stack.edge.port(81), "/some/path?q=1", host=host)
        assert status == 301 and body == b""
        assert headers["location"] == f"https://{host}/some/path?q=1"


def test_https_redirect_keeps_the_host_header_as_sent(stack):
    # Envoy's require_tls answer is "https://" + the Host header + :path (Utility::createSslRedirectPath): the
    # host keeps its case and its port, and the path is the normalised one.
    status, _, headers = http_get(stack.edge.port(81), "/a/../b?q=1", host="Secure.Example.com:8080")
    assert status == 301
    assert headers["location"] == "https://Secure.Example.com:8080/b?q=1"


# ====================================================================================== direct response


def test_direct_response_string_bytes_and_empty(stack):
    status, body, headers = stack.get("/string", "direct.example.com")
    assert (status, body) == (503, b"down for maintenance")
    assert headers["content-type"] == "text/plain"
    status, body, _ = stack.get("/bytes", "direct.example.com")
    assert (status, body) == (200, BYTES_BODY)
    status, body, _ = stack.get("/empty", "direct.example.com")
    assert (status, body) == (204, b"")


# ============================================================================================== rewrite


def test_rewrite_uri_prefix_and_original_path(stack):
    status, body, _ = stack.get("/api/users", "rewrite.example.com")
    doc = json.loads(body)
    assert status == 200 and doc["instance"] == "a"
    assert doc["path"] == "/v2/users"
    assert doc["headers"]["x-envoy-original-path"] == "/api/users"


def test_rewrite_keeps_the_query_and_the_original_path_has_it(stack):
    # Envoy copies the whole original :path, query included, into x-envoy-original-path (finalizePathHeader).
    doc = json.loads(stack.get("/api/users?id=7", "rewrite.example.com")[1])
    assert doc["path"] == "/v2/users?id=7"
    assert doc["headers"]["x-envoy-original-path"] == "/api/users?id=7"


def test_no_original_path_without_a_rewrite(stack):
    # Path normalisation is no rewrite: Envoy adds x-envoy-original-path only when a route rewrites the path.
    doc = json.loads(stack.get("/x/../headers", "weights.example.com")[1])
    assert doc["path"] == "/headers"
    assert "x-envoy-original-path" not in doc["headers"]


def test_rewrite_uri_with_exact_match_replaces_the_whole_path(stack):
    doc = json.loads(stack.get("/exact-old", "rewrite.example.com")[1])
    assert doc["path"] == "/exact-new"


def test_uri_regex_rewrite(stack):
    # Envoy's own example (RegexMatchAndSubstitute): ^/service/([^/]+)(/.*)$ with \2/instance/\1 turns
    # /service/foo/v1/api into /v1/api/instance/foo. The substitution applies to the path; the query stays.
    doc = json.loads(stack.get("/service/foo/v1/api", "rewrite.example.com")[1])
    assert doc["path"] == "/v1/api/instance/foo"
    assert doc["headers"]["x-envoy-original-path"] == "/service/foo/v1/api"
    doc = json.loads(stack.get("/service/foo/v1/api?x=1", "rewrite.example.com")[1])
    assert doc["path"] == "/v1/api/instance/foo?x=1"


def test_rewrite_authority(stack):
    doc = json.loads(stack.get("/host", "rewrite.example.com")[1])
    assert doc["headers"]["host"] == "internal.example.com"
    assert doc["path"] == "/host"


# ============================================================================================= delegate


def test_delegate_routes_replace_the_root_route(stack):
    status, body, _ = stack.get("/shop/cart/1", "delegate.example.com")
    assert status == 200 and instance_of(body) == "b"
    status, body, _ = stack.get("/shop/items", "delegate.example.com")
    assert status == 200 and instance_of(body) == "a"  # the delegate's catch-all, inside the root's /shop
    assert stack.get("/other", "delegate.example.com")[:2] == (200, b"root")
    assert stack.get("/elsewhere", "delegate.example.com")[0] == 404


# ===================================================================================== timeout, retries


def test_route_timeout_answers_504(stack):
    started = time.monotonic()
    status, body, _ = stack.get("/delay/3", "timeout.example.com")
    elapsed = time.monotonic() - started
    assert (status, body) == (504, b"upstream request timeout")
    assert 0.5 <= elapsed < 2.5
    status, body, _ = stack.get("/delay/0.05", "timeout.example.com")
    assert status == 200


def _retry_count(stack: Stack, path: str, expected_status: int) -> int:
    stack.backends.reset("rt")
    status, _, _ = stack.get(path, "retry.example.com")
    assert status == expected_status
    return stack.backends.stats("rt")["requests_total"]


def test_retry_on_status_codes_and_gateway_error(stack):
    assert _retry_count(stack, "/status/418", 418) == 3  # a numeric code in retryOn: 1 try + 2 retries
    assert _retry_count(stack, "/status/409", 409) == 3  # retriable-4xx is 409
    assert _retry_count(stack, "/status/502", 502) == 3  # gateway-error: 502, 503, 504
    assert _retry_count(stack, "/status/500", 500) == 1  # ... but not 500


def test_default_retry_policy_does_not_retry_503_and_attempts_0_disables(stack):
    assert _retry_count(stack, "/status/503", 503) == 1  # Istio ≥ 1.24: 503 is not in the default policy
    assert _retry_count(stack, "/none/status", 200) == 1


def test_retry_on_reset(stack):
    # The backend's /drop closes the connection without an answer: `reset` retries it; the default policy
    # (connect-failure, refused-stream, unavailable, cancelled) does not.
    stack.backends.reset("rt")
    assert stack.get("/drop", "retry.example.com")[0] == 503
    assert stack.backends.stats("rt")["requests_total"] == 3
    stack.backends.reset("rt")
    assert stack.get("/drop", "retry.example.com", headers={"x-default-policy": "1"})[0] == 503
    assert stack.backends.stats("rt")["requests_total"] == 1


def test_gateway_error_retries_a_reset(stack):
    # Envoy (RetryStateImpl::wouldRetryFromReset) counts an upstream reset as a 5xx: 5xx and gateway-error
    # retry it as well as `reset` does.
    stack.backends.reset("rt")
    assert stack.get("/drop", "retry.example.com", headers={"x-gateway-error": "1"})[0] == 503
    assert stack.backends.stats("rt")["requests_total"] == 3


def test_5xx_retries_a_protocol_error(stack):
    # An upstream answer that is not HTTP resets the stream (reason protocol error): 5xx retries it.
    stack.backends.reset("rt")
    assert stack.get("/garbage", "retry.example.com")[0] == 502
    assert stack.backends.stats("rt")["requests_total"] == 3


def test_retries_carry_the_attempt_count(stack):
    stack.backends.reset("rt")
    status, body, _ = stack.get("/status/418", "retry.example.com")
    assert status == 418
    assert json.loads(body)["headers"]["x-envoy-attempt-count"] == "3"


def test_5xx_is_retried_on_another_endpoint(stack):
    bad = stack.fixed["retry-bad"]
    bad.reset()
    stack.backends.reset("good")
    n = 20
    with stack.client("retry.example.com") as client:
        for _ in range(n):
            status, body, _ = client.request("/")
            assert status == 200 and instance_of(body) == "good"
    # ROUND_ROBIN puts every request on `bad` first (the retry skipped to `good`, then the turn comes back);
    # the retry never goes back to the host that failed, and each request ends on `good` exactly once.
    assert bad.count() == n
    assert stack.backends.stats("good")["requests_total"] == n
    assert all(s.headers.get("x-envoy-attempt-count") == "1" for s in bad.requests())


def test_post_body_is_replayed_on_retry(stack):
    bad = stack.fixed["retry-bad"]
    bad.reset()
    payload = bytes(range(256)) * 40
    with stack.client("retry.example.com") as client:
        for _ in range(4):
            status, body, _ = client.request("/sha256", method="POST", body=payload)
            assert status == 200
            doc = json.loads(body)
            assert doc["bytes"] == len(payload)
            assert doc["sha256"] == hashlib.sha256(payload).hexdigest()
    assert bad.count() == 4
    assert all(s.body_bytes == len(payload) for s in bad.requests())


def test_a_body_too_large_to_keep_is_not_replayed(stack):
    # Envoy keeps a request body for replay only up to its buffer limit (1 MiB here): a larger body streams
    # to the first endpoint, and that endpoint's 503 is the answer, with no retry.
    bad = stack.fixed["retry-bad"]
    bad.reset()
    stack.backends.reset("good")
    payload = b"z" * (2 * 1024 * 1024)
    with stack.client("retry.example.com") as client:
        status, body, _ = client.request("/sha256", method="POST", body=payload)
    assert status == 503 and instance_of(body) == "retry-bad"
    assert bad.count() == 1 and bad.requests()[0].body_bytes == len(payload)
    assert stack.backends.stats("good")["requests_total"] == 0


# ================================================================================================ fault


def test_fault_delay(stack):
    started = time.monotonic()
    status, body, _ = stack.get("/slow", "fault.example.com")
    assert status == 200 and instance_of(body) == "a"
    assert time.monotonic() - started >= 0.5


def test_fault_abort_answers_without_reaching_the_backend(stack):
    stack.backends.reset("ft")
    status, body, _ = stack.get("/abort", "fault.example.com")
    assert (status, body) == (503, b"fault filter abort")
    status, body, headers = stack.get("/grpc", "fault.example.com")
    assert status == 200 and headers["grpc-status"] == "14"  # UNAVAILABLE
    status, _, _ = stack.get("/never", "fault.example.com")  # no percentage: no request is aborted
    assert status == 200
    assert stack.backends.stats("ft")["requests_total"] == 1


def test_fault_abort_percentage_50(stack):
    stack.backends.reset("ft")
    n = 200
    statuses = Counter()
    with stack.client("fault.example.com") as client:
        for _ in range(n):
            status, body, _ = client.request("/half")
            statuses[status] += 1
            if status == 500:
                assert body == b"fault filter abort"
    assert statuses[200] + statuses[500] == n
    assert within(statuses[500], n, 0.5), statuses
    assert stack.backends.stats("ft")["requests_total"] == statuses[200]


# =============================================================================================== mirror


def _mirror_counts(stack: Stack, path: str, n: int) -> tuple[int, int, int]:
    for name in ("mp", "m1", "m2"):
        stack.backends.reset(name)
    with stack.client("mirror.example.com") as client:
        for _ in range(n):
            status, body, _ = client.request(path)
            assert status == 200 and instance_of(body) == "mp"  # the client only ever sees the primary

    def stats() -> tuple[int, int, int]:
        return tuple(stack.backends.stats(name)["requests_total"] for name in ("mp", "m1", "m2"))

    # Mirrors are fire-and-forget, sent after the primary finished: let the last ones land, then stop changing.
    previous = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        current = stats()
        if current == previous:
            break
        previous = current
        time.sleep(0.2)
    return stats()


def test_mirror_sends_a_copy_of_every_request(stack):
    assert _mirror_counts(stack, "/single", 30) == (30, 30, 0)


def test_shadow_host_suffix_switch(tmp_path):
    with FixedBackend("seen") as seen, SampleBackends(tmp_path, http=["mp"]) as backends:
        vs = (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: m}\nspec:\n"
            "  hosts: [mirror.example.com]\n  gateways: [gw]\n  http:\n"
            "  - {route: [{destination: {host: mirror-primary.local}}], mirror: {host: mirror-seen.local}}\n"
        )
        config = {
            "gw.yaml": GATEWAYS,
            "vs.yaml": vs,
            "se.yaml": service_entry("mirror-primary.local", [(backends.port("mp"), {"version": "mp"})])
            + "---\n"
            + service_entry("mirror-seen.local", [(seen.port, {"version": "seen"})]),
        }
        with EdgeProcess(tmp_path, config, workers=1, gateway_ports=(80, 81, 82), extra_args=("--shadow-host-suffix",)) as edge:
            status, _, _ = http_get(edge.port(80), "/x", host="mirror.example.com")
            assert status == 200
            assert wait_until(lambda: seen.count() == 1)
            assert seen.requests()[0].headers["host"] == "mirror.example.com-shadow"


# ================================================================================================= CORS


def _preflight(stack: Stack, origin: str) -> tuple[int, bytes, dict[str, str]]:
    return stack.get("/x", "cors.example.com", method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})


def test_cors_preflight_is_answered_at_the_gateway(stack):
    stack.backends.reset("cors")
    for origin in ("https://ok.example", "https://pre.fix.example", "https://abc.rx.example"):
        status, body, headers = _preflight(stack, origin)
        assert status == 200 and body == b""
        assert headers["access-control-allow-origin"] == origin
        assert headers["access-control-allow-methods"] == "GET,POST"
        assert headers["access-control-allow-headers"] == "x-custom,content-type"
        assert headers["access-control-max-age"] == "86400"
        assert headers["access-control-allow-credentials"] == "true"
    assert stack.backends.stats("cors")["requests_total"] == 0


def test_cors_unmatched_preflight_is_forwarded(stack):
    stack.backends.reset("cors")
    for origin in ("https://evil.example", "https://ABC.rx.example"):
        status, body, headers = _preflight(stack, origin)
        assert status == 200 and instance_of(body) == "cors"  # the upstream's answer
        assert "access-control-allow-origin" not in headers
    assert stack.backends.stats("cors")["requests_total"] == 2


def test_cors_actual_request_gets_allow_origin_and_expose_headers(stack):
    status, body, headers = stack.get("/data", "cors.example.com", headers={"Origin": "https://pre.fix.example"})
    assert status == 200 and instance_of(body) == "cors"
    assert headers["access-control-allow-origin"] == "https://pre.fix.example"
    assert headers["access-control-expose-headers"] == "x-exposed"
    status, _, headers = stack.get("/data", "cors.example.com", headers={"Origin": "https://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in headers


# ======================================================================================= load balancing


def _is_cycle(sequence: list[str], members: set[str]) -> bool:
    k = len(members)
    return set(sequence[:k]) == members and all(sequence[i] == sequence[i % k] for i in range(len(sequence)))


def test_round_robin_alternates_exactly(stack):
    with stack.client("rr.example.com") as client:
        sequence = [client.instance() for _ in range(30)]
    assert _is_cycle(sequence, {"a", "b", "c"}), sequence


def test_subset_with_its_own_traffic_policy(stack):
    # app.local is RANDOM at the top level; its subset `all` says ROUND_ROBIN, which applies when routed to it.
    with stack.client("subsets.example.com") as client:
        sequence = [client.instance() for _ in range(30)]
    assert _is_cycle(sequence, {"a", "b", "c"}), sequence


def test_random_spreads_without_a_fixed_order(stack):
    n = 300
    with stack.client("random.example.com") as client:
        sequence = [client.instance() for _ in range(n)]
    counts = Counter(sequence)
    assert set(counts) == {"a", "b", "c"}
    assert all(within(counts[i], n, 1 / 3) for i in "abc"), counts
    assert not _is_cycle(sequence, {"a", "b", "c"})


def test_least_request_balances_requests_in_flight(stack):
    # 30 slow requests at once: least request (power of two choices of 2 endpoints = the idler one) keeps each
    # worker's in-flight counts within 1 of each other, so the totals differ by at most the worker count.
    for name in ("lr1", "lr2"):
        stack.backends.reset(name)
    results = concurrently(30, lambda i: stack.get("/delay/0.5", "lr.example.com", timeout_s=10))
    assert all(status == 200 for status, _, _ in results)
    counts = Counter(instance_of(body) for _, body, _ in results)
    assert counts["lr1"] + counts["lr2"] == 30
    assert abs(counts["lr1"] - counts["lr2"]) <= WORKERS, counts


def test_port_level_settings_replace_the_policy_for_their_port(stack):
    for name in ("p1", "p2"):
        stack.backends.reset(name)
    with stack.client("portlevel.example.com") as client:
        sequence = [client.instance("/alt") for _ in range(20)]
    assert _is_cycle(sequence, {"p1", "p2"}), sequence  # port 8080: ROUND_ROBIN
    for name in ("p1", "p2"):
        stats = stack.backends.stats(name)
        assert stats["requests_total"] == 10
        assert stats["connections_total"] == 10  # port 8080: maxRequestsPerConnection 1
    for name in ("p1", "p2"):
        stack.backends.reset(name)
    with stack.client("portlevel.example.com") as client:
        for _ in range(20):
            client.instance("/default")
    total_requests = sum(stack.backends.stats(n)["requests_total"] for n in ("p1", "p2"))
    total_connections = sum(stack.backends.stats(n)["connections_total"] for n in ("p1", "p2"))
    assert total_requests == 20
    assert total_connections <= 4  # port 80 keeps the top-level policy: connections are reused


# ====================================================================================== consistent hash


def test_consistent_hash_on_a_header(stack):
    chosen = {}
    for key in range(30):
        instances = {instance_of(stack.get("/", "hash-header.example.com", headers={"x-user": f"user-{key}"})[1]) for _ in range(4)}
        assert len(instances) == 1, (key, instances)  # same key, same instance, whichever worker answers
        chosen[key] = instances.pop()
    assert len(set(chosen.values())) >= 2, chosen  # different keys spread


def test_consistent_hash_on_a_generated_cookie(stack):
    chosen = []
    for _ in range(20):
        status, body, headers = stack.get("/", "hash-cookie.example.com")
        assert status == 200
        cookie = headers["set-cookie"]
        assert cookie.startswith("session=") and "Max-Age=60" in cookie and "Path=/" in cookie
        value = cookie.split(";", 1)[0]
        first = instance_of(body)
        for _ in range(3):
            status, body, headers = stack.get("/", "hash-cookie.example.com", headers={"Cookie": value})
            assert instance_of(body) == first  # sticky from the first answer on
            assert "set-cookie" not in headers  # the client has it now
        chosen.append(first)
    assert len(set(chosen)) >= 2, chosen


def test_consistent_hash_on_the_source_ip(stack):
    chosen = {}
    for last in range(2, 32):
        source = f"127.0.0.{last}"
        instances = set()
        for _ in range(3):
            with stack.client("hash-ip.example.com", source_ip=source) as client:
                instances.add(client.instance())
        assert len(instances) == 1, (source, instances)
        chosen[source] = instances.pop()
    assert len(set(chosen.values())) >= 2, chosen


def test_consistent_hash_on_a_query_parameter(stack):
    chosen = {}
    for key in range(30):
        instances = {instance_of(stack.get(f"/?user=u{key}&x={i}", "hash-query.example.com")[1]) for i in range(4)}
        assert len(instances) == 1, (key, instances)
        chosen[key] = instances.pop()
    assert len(set(chosen.values())) >= 2, chosen


# ====================================================================================== connection pool


def test_circuit_breaker_overflow_is_503_with_x_envoy_overloaded(stack):
    # maxConnections 1 and http1MaxPendingRequests 1, per gateway; each of the 2 workers enforces its share
    # (ceil(1/2) = 1 each), so at most 2 workers × (1 active + 1 pending) = 4 of 8 concurrent slow requests pass.
    results = concurrently(8, lambda i: stack.get("/delay/0.5", "cb.example.com", timeout_s=10))
    ok = [r for r in results if r[0] == 200]
    overflow = [r for r in results if r[0] == 503]
    assert len(ok) + len(overflow) == 8
    assert 1 <= len(ok) <= 4
    assert len(overflow) >= 4
    for _, body, headers in overflow:
        assert headers["x-envoy-overloaded"] == "true"
        assert body == b"upstream connect error or disconnect/reset before headers. reset reason: overflow"


def test_max_requests_per_connection_1(stack):
    stack.backends.reset("mrpc")
    with stack.client("mrpc.example.com") as client:
        for _ in range(10):
            assert client.instance() == "mrpc"
    stats = stack.backends.stats("mrpc")
    assert stats["requests_total"] == 10
    assert stats["connections_total"] == 10


def test_pool_idle_timeout_closes_upstream_connections(stack):
    status, _, _ = stack.get("/", "idle.example.com")
    assert status == 200
    # The gateway's pooled connection and our /__stats connection.
    assert stack.backends.stats("idle")["connections_open"] >= 2
    # idleTimeout 1s: the reaper closes it within a second after that.
    assert wait_until(lambda: stack.backends.stats("idle")["connections_open"] == 1, timeout_s=4, poll_s=0.2)


def test_connect_timeout(stack):
    # connectTimeout 0.3s towards a port that never completes the handshake: 503 UF after 0.3 s, not 10 s.
    started = time.monotonic()
    status, body, _ = stack.get("/", "connect-timeout.example.com")
    elapsed = time.monotonic() - started
    assert status == 503
    assert body.startswith(b"upstream connect error or disconnect/reset before headers")
    assert 0.3 <= elapsed < 2.0


def _keepalive_timers(port: int) -> list[str]:
    """The timers of the gateway's sockets connected to `port` (ss shows SO_KEEPALIVE as timer:(keepalive,…))."""
    out = subprocess.run(["ss", "-Htno", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_tcp_keepalive_is_set_on_upstream_connections(stack):
    port = stack.backends.port("ka")
    with stack.client("keepalive.example.com") as client:
        assert client.instance() == "ka"
    sockets = _keepalive_timers(port)
    assert sockets, "no pooled upstream connection to the backend"
    assert all("timer:(keepalive" in line for line in sockets), sockets
    # The idle backend's cluster sets no tcpKeepalive: its connections have no keepalive timer.
    with stack.client("idle.example.com") as client:
        assert client.instance() == "idle"
    assert not any("keepalive" in line for line in _keepalive_timers(stack.backends.port("idle")))


def test_endpoint_weights(stack):
    # ServiceEntry endpoint weights 3 and 1 under ROUND_ROBIN: exactly 3 of every 4 requests to the first.
    with stack.client("weighted-endpoints.example.com") as client:
        counts = Counter(client.instance() for _ in range(40))
    assert counts == Counter({"wa": 30, "wb": 10})


def test_passthrough_and_warmup_are_accepted(stack):
    # PASSTHROUGH has no original destination at a gateway (Istio falls back to the endpoints); warmup is
    # slow start, accepted and served like its simple policy.
    assert instance_of(stack.get("/", "passthrough.example.com")[1]) == "a"
    with stack.client("warmup.example.com") as client:
        sequence = [client.instance() for _ in range(10)]
    assert _is_cycle(sequence, {"a", "b"}), sequence


# ==================================================================================== outlier detection


def test_max_ejection_percent_keeps_some_endpoints(stack):
    # Both endpoints answer 500 and one 5xx ejects, but maxEjectionPercent 10 lets at most one of the two be
    # ejected (Envoy always allows one): the other keeps taking traffic, so no request meets "no healthy upstream".
    statuses = Counter()
    for _ in range(30):
        status, body, _ = stack.get("/", "max-ejection.example.com")
        statuses[status] += 1
        assert status == 500 and instance_of(body) in {"mx-1", "mx-2"}, (status, body)
    assert statuses == Counter({500: 30})


def test_consecutive_gateway_errors_eject_only_on_502_503_504(stack):
    bad502, bad500 = stack.fixed["gwe-502"], stack.fixed["gwe-500"]
    for _ in range(30):
        stack.get("/", "gwerrors.example.com")
    bad502.reset()
    bad500.reset()
    stack.backends.reset("gwe-good")
    answers = Counter()
    for _ in range(30):
        status, body, _ = stack.get("/", "gwerrors.example.com")
        answers[status, instance_of(body) if body.startswith(b"{") else body[:60]] += 1
    assert bad502.count() == 0, answers  # consecutiveGatewayErrors 1: ejected for 30 s in every worker
    assert bad500.count() >= 5, answers  # a 500 is no gateway error, and consecutive5xxErrors is 0 (off)
    assert bad500.count() + stack.backends.stats("gwe-good")["requests_total"] == 30, answers
