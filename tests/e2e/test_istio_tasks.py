# End to end: istio.io's traffic-management tasks, replayed against the real `edge run` with the YAML those pages
# apply and the outcomes they describe: request-routing, traffic-shifting, circuit-breaking and mirroring. The
# fault-injection and request-timeouts tasks, whose outcomes are seconds of waiting (7 s, 2 s, 0.5 s), are replayed
# with the same YAML (imported from here) against the real proxy in memory on trio's autojump clock:
# tests/workers/http/test_proxy_faults.py.
#
# The YAML below is copied as published (istio/istio samples/bookinfo/networking/*.yaml, samples/httpbin/
# httpbin-gateway.yaml, and the inline YAML of the istio.io task pages). Adaptations, all mechanical:
# - Bookinfo's and the mirroring task's VirtualServices are mesh-only (no `gateways:`), so a gateway would never
#   use them; `bind_to_gateway` inserts `gateways: [<gateway>]` into each, the one line Istio users add to
#   expose such a VirtualService at an ingress gateway. Nothing else in them changes.
# - There is no Kubernetes: ServiceEntries stand in for the Services and pods (`reviews` → reviews.default.svc.
#   cluster.local:9080, endpoints labelled version v1/v2/v3 as the Deployments are), on sample backends named
#   after the versions (reviews-v1, …), which report the instance that served each request.
# - Bookinfo's services call each other (productpage → reviews → ratings); the sample backends make no calls, so
#   the client plays the caller and talks to each service through the gateway (Host: reviews.default.svc...,
#   with the `end-user` header productpage sets for a logged-in user). Where the page's outcome comes from a
#   downstream wait (reviews-v2 waiting on a delayed ratings), the backend's /delay/S stands in for that wait.
# - `kubectl apply` / `kubectl delete` are emulated by `Cluster`: resources keyed by (kind, name), written to one
#   config file, then a SIGHUP reload; applying a resource of the same kind and name replaces it, as kubectl does.
# One gateway process with ONE worker, so the circuit-breaking limits (maxConnections: 1, http1MaxPendingRequests:
# 1) are the page's exact numbers: edge divides per-gateway limits across workers.
from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

# ------------------------------------------------------------------------------ YAML as published (verbatim)

# istio/istio samples/bookinfo/networking/bookinfo-gateway.yaml
BOOKINFO_GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  # The selector matches the ingress gateway pod labels.
  # If you installed Istio using Helm following the standard documentation, this would be "istio=ingress"
  selector:
    istio: ingressgateway # use istio default controller
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"""

# samples/bookinfo/networking/destination-rule-all.yaml
DESTINATION_RULE_ALL = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
"""

# samples/bookinfo/networking/virtual-service-all-v1.yaml
VIRTUAL_SERVICE_ALL_V1 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
spec:
  hosts:
  - productpage
  http:
  - route:
    - destination:
        host: productpage
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - route:
    - destination:
        host: ratings
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - route:
    - destination:
        host: details
        subset: v1
---
"""

# samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml
VIRTUAL_SERVICE_REVIEWS_TEST_V2 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"""

# samples/bookinfo/networking/virtual-service-reviews-50-v3.yaml
VIRTUAL_SERVICE_REVIEWS_50_V3 = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
"""

# samples/bookinfo/networking/virtual-service-reviews-v3.yaml
VIRTUAL_SERVICE_REVIEWS_V3 = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
"""

# samples/bookinfo/networking/virtual-service-reviews-80-20.yaml
VIRTUAL_SERVICE_REVIEWS_80_20 = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
        subset: v2
      weight: 20
"""

# samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml
VIRTUAL_SERVICE_RATINGS_TEST_DELAY = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"""

# samples/bookinfo/networking/virtual-service-ratings-test-abort.yaml
VIRTUAL_SERVICE_RATINGS_TEST_ABORT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"""

# istio.io docs/tasks/traffic-management/request-timeouts, step 1, 2 and 4 (inline YAML of the page)
TIMEOUTS_REVIEWS_V2 = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
"""
TIMEOUTS_RATINGS_DELAY = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percent: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
"""
TIMEOUTS_REVIEWS_V2_HALF_SECOND = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
    timeout: 0.5s
"""

# istio/istio samples/httpbin/httpbin-gateway.yaml
HTTPBIN_GATEWAY = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
    - port:
        number: 80
        name: http
        protocol: HTTP
      hosts:
        - "*"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - "*"
  gateways:
    - httpbin-gateway
  http:
    - route:
        - destination:
            host: httpbin
            port:
              number: 8000
"""

# istio.io docs/tasks/traffic-management/circuit-breaking, "Configuring the circuit breaker"
CIRCUIT_BREAKER = """\
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""

# istio.io docs/tasks/traffic-management/mirroring, "Creating a default routing policy"
MIRRORING_DEFAULT = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"""

# istio.io docs/tasks/traffic-management/mirroring, "Mirroring traffic to v2"
MIRRORING_TO_V2 = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
"""

# ------------------------------------------------------------------------------------------- adaptation


def bind_to_gateway(text: str, gateway: str) -> str:
    """Insert `gateways: [gateway]` into every VirtualService that has none (mesh-only → this gateway)."""
    out = []
    for doc in text.split("\n---\n"):
        if "kind: VirtualService" in doc and "\n  gateways:" not in doc:
            head, sep, rest = doc.partition("\nspec:\n")
            assert sep, doc
            doc = f"{head}\nspec:\n  gateways:\n  - {gateway}\n{rest}"
        out.append(doc)
    return "\n---\n".join(out)


def service_entry(name: str, port: int, endpoints: list[tuple[int, str]]) -> str:
    """What the Kubernetes Service `name` (port `port`) and its version-labelled pods give Istio."""
    eps = "".join(f"  - address: 127.0.0.1\n    ports: {{http: {p}}}\n    labels: {{app: {name}, version: {v}}}\n" for p, v in endpoints)
    return (
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n"
        f"  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
        f"  ports:\n  - {{number: {port}, name: http, protocol: HTTP}}\n  endpoints:\n{eps}"
    )


class Cluster:
    """`kubectl apply -f` / `kubectl delete -f` against edge's config directory: resources keyed by (kind,
    name), all written to one file, then a SIGHUP reload that returns once every worker serves the result."""

    FILE = "applied.yaml"

    def __init__(self, edge: EdgeProcess, resources: dict[tuple[str, str], str]):
        self.edge = edge
        self.resources = dict(resources)

    @staticmethod
    def _documents(text: str):
        for doc in text.split("\n---\n"):
            doc = "\n".join(line for line in doc.splitlines() if line.strip() != "---")
            if not doc.strip():
                continue
            kind = doc.split("kind:", 1)[1].split("\n", 1)[0].strip()
            name = doc.split("metadata:", 1)[1].split("name:", 1)[1].split("\n", 1)[0].strip()
            yield (kind, name), doc + "\n"

    @classmethod
    def collect(cls, *texts: str) -> dict[tuple[str, str], str]:
        return {key: doc for text in texts for key, doc in cls._documents(text)}

    @staticmethod
    def render(resources: dict[tuple[str, str], str]) -> str:
        return "---\n".join(resources.values())

    def apply(self, *texts: str) -> None:
        for text in texts:
            for key, doc in self._documents(text):
                self.resources[key] = doc
        self._publish()

    def delete(self, *texts: str) -> None:
        for text in texts:
            for key, _ in self._documents(text):
                self.resources.pop(key, None)
        self._publish()

    def _publish(self) -> None:
        self.edge.write_config(self.FILE, self.render(self.resources))
        outcome = self.edge.reload()
        assert "failed" not in outcome, f"{outcome}\n{self.edge.log_tail()}"


# ------------------------------------------------------------------------------------------------ stack

BOOKINFO = "bookinfo-gateway"
HTTPBIN = "httpbin-gateway"
INSTANCES = ["productpage-v1", "details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3", "httpbin-v1", "httpbin-v2"]
REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
HTTPBIN_HOST = "httpbin.default.svc.cluster.local:8000"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("istio-tasks")
    with SampleBackends(work, http=INSTANCES) as backends:
        p = backends.port
        bookinfo_services = "---\n".join(
            [
                service_entry("productpage", 9080, [(p("productpage-v1"), "v1")]),
                service_entry("details", 9080, [(p("details-v1"), "v1")]),
                service_entry("ratings", 9080, [(p("ratings-v1"), "v1")]),
                service_entry("reviews", 9080, [(p("reviews-v1"), "v1"), (p("reviews-v2"), "v2"), (p("reviews-v3"), "v3")]),
            ]
        )
        # samples/httpbin/httpbin.yaml: one Deployment (version v1) behind Service httpbin, port 8000.
        httpbin_service = service_entry("httpbin", 8000, [(p("httpbin-v1"), "v1")])
        # `kubectl apply` of the samples before any task: the Bookinfo app with its gateway and default
        # destination rules, and httpbin with its gateway.
        initial = Cluster.collect(bookinfo_services, BOOKINFO_GATEWAY, DESTINATION_RULE_ALL, httpbin_service, HTTPBIN_GATEWAY)
        with EdgeProcess(work, {Cluster.FILE: Cluster.render(initial)}, workers=1, gateway_ports=(8080, 80)) as edge:
            cluster = Cluster(edge, initial)
            yield Tasks(edge, backends, cluster)


class Tasks:
    def __init__(self, edge: EdgeProcess, backends: SampleBackends, cluster: Cluster):
        self.edge = edge
        self.backends = backends
        self.cluster = cluster

    def call(self, host: str, path: str = "/", *, user: str | None = None, port: int = 8080, timeout_s: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
        """One request through the gateway, as the calling service would make it (end-user for a logged-in user)."""
        headers = {"end-user": user} if user else {}
        return http_get(self.edge.port(port), path, host=host, headers=headers, timeout_s=timeout_s)

    def instances(self, host: str, n: int, *, user: str | None = None, path: str = "/") -> Counter:
        out = Counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.edge.port(8080), timeout=10)
        try:
            for _ in range(n):
                conn.request("GET", path, headers={"Host": host, **({"end-user": user} if user else {})})
                response = conn.getresponse()
                body = response.read()
                assert response.status == 200, (response.status, body)
                out[json.loads(body)["instance"]] += 1
        finally:
            conn.close()
        return out


def within(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(count - n * p) <= sigmas * (n * p * (1 - p)) ** 0.5


# ===================================================================================== request routing


def test_request_routing(stack):
    """docs/tasks/traffic-management/request-routing: all-v1, then reviews-test-v2 (jason sees reviews v2)."""
    stack.cluster.apply(bind_to_gateway(VIRTUAL_SERVICE_ALL_V1, BOOKINFO))
    # The productpage itself, through the Bookinfo gateway's own VirtualService.
    status, body, _ = stack.call("bookinfo.example.com", "/productpage")
    assert status == 200 and json.loads(body)["instance"] == "productpage-v1"
    # "route all traffic to v1": reviews without stars, however often the page is refreshed.
    assert stack.instances(REVIEWS, 30) == Counter({"reviews-v1": 30})
    assert stack.instances(REVIEWS, 10, user="jason") == Counter({"reviews-v1": 10})
    # "log in as user jason … the star ratings appear next to each review" (reviews v2); everyone else v1.
    stack.cluster.apply(bind_to_gateway(VIRTUAL_SERVICE_REVIEWS_TEST_V2, BOOKINFO))
    assert stack.instances(REVIEWS, 20, user="jason") == Counter({"reviews-v2": 20})
    assert stack.instances(REVIEWS, 20, user="someone-else") == Counter({"reviews-v1": 20})
    assert stack.instances(REVIEWS, 20) == Counter({"reviews-v1": 20})
    stack.cluster.delete(VIRTUAL_SERVICE_ALL_V1)


# ===================================================================================== traffic shifting


def test_traffic_shifting(stack):
    """docs/tasks/traffic-management/traffic-shifting: all-v1 → 50 % v3 → 100 % v3 (and the 80/20 sample)."""
    stack.cluster.apply(bind_to_gateway(VIRTUAL_SERVICE_ALL_V1, BOOKINFO))
    assert stack.instances(REVIEWS, 20) == Counter({"reviews-v1": 20})
    stack.cluster.apply(bind_to_gateway(VIRTUAL_SERVICE_REVIEWS_50_V3, BOOKINFO))
    n = 300
    counts = stack.instances(REVIEWS, n)
    assert set(counts) == {"reviews-v1", "reviews-v3"}, counts  # red stars about half of the time
    assert within(counts["reviews-v3"], n, 0.5), counts
    stack.cluster.apply(bind_to_gateway(VIRTUAL_SERVICE_REVIEWS_80_20, BOOKINFO))
    counts = stack.instances(REVIEWS, n)
    assert set(counts) == {"reviews-v1", "reviews-v2"}, counts
    assert within(counts["reviews-v2"], n, 0.2), counts
    stack.cluster.apply(bind_to_gateway(VIRTUAL_SERVICE_REVIEWS_V3, BOOKINFO))
    assert stack.instances(REVIEWS, 30) == Counter({"reviews-v3": 30})  # red stars every time
    stack.cluster.delete(VIRTUAL_SERVICE_ALL_V1)


# ===================================================================================== circuit breaking


def fortio_load(port: int, host: str, path: str, connections: int, calls: int) -> tuple[Counter, list[dict[str, str]]]:
    """`fortio load -c C -qps 0 -n N URL`: C keep-alive connections sending N calls in all as fast as they can.
    Returns the status codes and the headers of every 503."""
    codes: Counter = Counter()
    overflow_headers: list[dict[str, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(connections)

    def worker(count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        barrier.wait(5)
        try:
            for _ in range(count):
                conn.request("GET", path, headers={"Host": host})
                response = conn.getresponse()
                response.read()
                with lock:
                    codes[response.status] += 1
                    if response.status == 503:
                        overflow_headers.append({k.lower(): v for k, v in response.getheaders()})
                if response.will_close:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(calls // connections,)) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return codes, overflow_headers


def test_circuit_breaking(stack):
    """docs/tasks/traffic-management/circuit-breaking: maxConnections 1, http1MaxPendingRequests 1."""
    stack.cluster.apply(CIRCUIT_BREAKER)
    port = stack.edge.port(80)
    # `fortio curl http://httpbin:8000/get`: one call succeeds.
    status, body, _ = http_get(port, "/get", host=HTTPBIN_HOST)
    assert status == 200 and json.loads(body)["instance"] == "httpbin-v1"
    # `-c 2 -n 20`: "almost all requests made it through".
    codes, _ = fortio_load(port, HTTPBIN_HOST, "/get", 2, 20)
    assert sum(codes.values()) == 20 and set(codes) <= {200, 503}, codes
    assert codes[200] >= 10, codes
    # `-c 3 -n 30`: "Now you start to see the expected circuit breaking behavior": some calls get 503 from the
    # gateway itself, with x-envoy-overloaded.
    codes, overflow = fortio_load(port, HTTPBIN_HOST, "/get", 3, 30)
    assert sum(codes.values()) == 30 and set(codes) <= {200, 503}, codes
    assert codes[503] >= 1 and codes[200] >= 1, codes
    assert all(h.get("x-envoy-overloaded") == "true" for h in overflow), overflow
    # Overflow is the gateway's answer, not an upstream error: outlier detection (consecutive5xxErrors: 1,
    # baseEjectionTime 3m) did not eject the only endpoint.
    status, _, _ = http_get(port, "/get", host=HTTPBIN_HOST)
    assert status == 200
    stack.cluster.delete(CIRCUIT_BREAKER)


# ============================================================================================= mirroring


def test_mirroring(stack):
    """docs/tasks/traffic-management/mirroring: all traffic to httpbin v1, then mirrored to v2."""
    p = stack.backends.port
    # "Before you begin": httpbin-v1 and httpbin-v2 Deployments behind the httpbin Service.
    stack.cluster.apply(service_entry("httpbin", 8000, [(p("httpbin-v1"), "v1"), (p("httpbin-v2"), "v2")]))
    stack.cluster.apply(bind_to_gateway(MIRRORING_DEFAULT, HTTPBIN))
    for name in ("httpbin-v1", "httpbin-v2"):
        stack.backends.reset(name)
    port = stack.edge.port(80)
    status, body, _ = http_get(port, "/headers", host=HTTPBIN_HOST)
    assert status == 200 and json.loads(body)["instance"] == "httpbin-v1"
    # The v1 log shows the request, the v2 log shows "<none>".
    assert stack.backends.stats("httpbin-v1")["requests_total"] == 1
    assert stack.backends.stats("httpbin-v2")["requests_total"] == 0
    stack.cluster.apply(bind_to_gateway(MIRRORING_TO_V2, HTTPBIN))
    status, body, _ = http_get(port, "/headers", host=HTTPBIN_HOST)
    assert status == 200 and json.loads(body)["instance"] == "httpbin-v1"  # the client sees v1's answer
    # Both logs now show the new request: v1 served it, v2 got the mirrored copy.
    deadline = time.monotonic() + 3
    while stack.backends.stats("httpbin-v2")["requests_total"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stack.backends.stats("httpbin-v1")["requests_total"] == 2
    assert stack.backends.stats("httpbin-v2")["requests_total"] == 1
    stack.cluster.delete(MIRRORING_DEFAULT)
