"""workers/tableview.py: what a worker derives from each table generation (TableSnapshot: listener, route and cluster
runtimes), what carries over to the next generation (a cluster's Circuit and its balancer's endpoint health), the
pool key and SNI of TLS origination (ClusterRuntime.origination), and TableView following the generation (a table
that cannot be decoded or built is skipped; the worker keeps the snapshot it has).

Tables are compiled from Istio YAML with the real compiler (tests/workers/http/proxy_pair.compile_payload).
"""

from __future__ import annotations

import msgspec
import pytest

from edge.table import Endpoint, Options, decode_table, decode_table_lazy, decode_virtual_host
from tests.security.tools import gateway
from tests.workers.http.proxy_pair import StaticReader, compile_payload, service_entry
from workers.tableview import TableSnapshot, TableView

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: [app.example.com]
  gateways: [gw]
  http:
  - name: split
    match: [{uri: {prefix: /split}}]
    timeout: 1.5s
    route:
    - {destination: {host: app.local, subset: a}, weight: 75}
    - {destination: {host: app.local, subset: b}, weight: 25, headers: {request: {set: {x-b: "1"}}}}
    mirror: {host: copy.local}
    mirrorPercentage: {value: 10}
    corsPolicy: {allowOrigins: [{exact: "https://ok.example"}], allowMethods: [GET]}
  - name: secure
    match: [{uri: {prefix: /tls}}]
    route: [{destination: {host: tls.local}}]
  - name: pinned
    match: [{uri: {prefix: /sni}}]
    route: [{destination: {host: sni.local}}]
  - name: rest
    route: [{destination: {host: app.local}}]
"""

DR = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app}
spec:
  host: app.local
  trafficPolicy:
    loadBalancer: {simple: %(lb)s}
    connectionPool: {tcp: {maxConnections: %(max)d}}
    outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tls}
spec:
  host: tls.local
  trafficPolicy: {tls: {mode: SIMPLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: sni}
spec:
  host: sni.local
  trafficPolicy: {tls: {mode: SIMPLE, sni: pinned.example.com}}
"""


def app_entry(*endpoints: tuple[str, str]) -> str:
    eps = "".join(f"  - {{address: {ip}, ports: {{http: 80}}, labels: {{version: {version}}}}}\n" for ip, version in endpoints)
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: app}\nspec:\n  hosts: [app.local]\n"
        f"  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n{eps}"
    )


def config(lb: str = "ROUND_ROBIN", max_connections: int = 10, endpoints=(("10.0.0.1", "a"), ("10.0.0.2", "b"))) -> str:
    return "---\n".join([
        gateway(), VS, DR % {"lb": lb, "max": max_connections}, app_entry(*endpoints),
        service_entry("copy.local", "10.0.9.1"), service_entry("tls.local", "10.0.9.2", port=443), service_entry("sni.local", "10.0.9.3", port=443),
    ])  # fmt: skip


@pytest.fixture
def payload(tmp_path):
    def make(name: str = "t", **kw) -> bytes:
        return compile_payload(tmp_path / name, config(**kw), Options(workers=2))

    return make


def routes_by_name(snapshot: TableSnapshot) -> dict:
    vhost = snapshot.listeners["0.0.0.0:80"].router.find_virtual_host("app.example.com")
    return {route.name: snapshot.route_runtime(route) for route in vhost.routes}


@pytest.mark.parametrize("decode", [decode_table, decode_table_lazy])
def test_a_snapshot_precomputes_what_requests_need(payload, decode):
    table = decode(payload())
    snapshot = TableSnapshot(7, table, None)
    assert snapshot.generation == 7 and snapshot.options.workers == 2 and snapshot.server_header == b"istio-envoy"
    assert list(snapshot.listeners) == ["0.0.0.0:80"] and snapshot.listeners["0.0.0.0:80"].router is not None
    routes = routes_by_name(snapshot)
    assert set(routes) == {"split", "secure", "pinned", "rest"}
    split = routes["split"]
    assert split.cumulative == (75, 100) and split.total_weight == 100 and split.timeout_ms == 1500
    assert [d.cluster_runtime.cluster.name for d in split.destinations] == ["outbound|80|a|app.local", "outbound|80|b|app.local"]
    assert split.destinations[1].request_ops is not None and split.destinations[0].request_ops is None
    [(mirror, mirror_rt)] = split.mirrors
    assert mirror.ppm == 100_000 and mirror_rt is snapshot.clusters["outbound|80||copy.local"]
    assert split.cors is not None and split.cors.origin_allowed("https://ok.example") and not split.cors.origin_allowed("https://no.example")
    # Every destination of the table shares its cluster's runtime (one balancer and one circuit per cluster).
    assert routes["rest"].destinations[0].cluster_runtime is snapshot.clusters["outbound|80||app.local"]
    # A route object the router built itself is compiled on first use, then kept.
    first_vhost = decode_virtual_host(table.listeners[0].route_config.virtual_hosts[0])
    built = msgspec.structs.replace(first_vhost.routes[0], name="built")
    assert id(built) not in snapshot.routes
    rt = snapshot.route_runtime(built)
    assert rt.route is built and snapshot.route_runtime(built) is rt and rt.destinations[0].cluster_runtime is not None


def test_a_lazy_table_decodes_a_virtual_host_and_its_routes_on_first_use(payload):
    plain = decode_table(payload())
    table = decode_table_lazy(payload())
    [raw] = table.listeners[0].route_config.virtual_hosts
    assert type(raw) is msgspec.Raw and decode_virtual_host(raw) == plain.listeners[0].route_config.virtual_hosts[0]
    # Everything but the encoded hosts is the table as decode_table gives it.
    lazy_rc, plain_rc = (msgspec.structs.replace(t.listeners[0].route_config, virtual_hosts=()) for t in (table, plain))
    assert msgspec.to_builtins(lazy_rc) == msgspec.to_builtins(plain_rc) and lazy_rc.exact_hosts == {"app.example.com": 0}
    assert table.clusters == plain.clusters and table.options == plain.options
    snapshot = TableSnapshot(1, table, None)
    assert snapshot.routes == {}  # nothing built before a request
    router = snapshot.listeners["0.0.0.0:80"].router
    vhost = router.find_virtual_host("app.example.com")
    assert vhost == plain.listeners[0].route_config.virtual_hosts[0]
    assert router.find_virtual_host("APP.example.com:80") is vhost  # decoded once, kept for the generation
    route = router.match(vhost, type("Req", (), {"path": "/split/x", "headers": [], "query": ""})())
    assert route.name == "split" and snapshot.route_runtime(route) is snapshot.route_runtime(route)
    assert len(snapshot.routes) == 1
    assert router.find_virtual_host("other.example.com") is None


def test_circuit_limits_are_per_worker(payload):
    snapshot = TableSnapshot(1, decode_table(payload(max_connections=5)), None)
    assert snapshot.clusters["outbound|80||app.local"].circuit.max_connections == 3  # ceil(5 / 2 workers)


def test_cluster_state_carries_over_to_the_next_generation(payload):
    first = TableSnapshot(1, decode_table(payload()), None)
    rt = first.clusters["outbound|80||app.local"]
    rt.circuit.connections = 2  # open connections point at their circuit: it must outlive the generation
    state = rt.balancer.states[1]
    state.ejected_until, state.times_ejected, state.active = 99.0, 1, 3
    second = TableSnapshot(2, decode_table(payload("u", max_connections=4)), first)
    carried = second.clusters["outbound|80||app.local"]
    assert carried is not rt and carried.circuit is rt.circuit
    assert (carried.circuit.connections, carried.circuit.max_connections) == (2, 2)  # reconfigured: ceil(4 / 2)
    again = carried.balancer.states[1]
    assert (again.endpoint.address, again.ejected_until, again.times_ejected, again.active) == ("10.0.0.2", 99.0, 1, 3)


def test_balancer_state_is_kept_per_endpoint_and_dropped_with_a_new_policy(payload):
    first = TableSnapshot(1, decode_table(payload()), None)
    first.clusters["outbound|80||app.local"].balancer.states[0].ejected_until = 50.0
    moved = TableSnapshot(2, decode_table(payload("u", endpoints=(("10.0.0.3", "a"), ("10.0.0.1", "a")))), first)
    states = {s.endpoint.address: s.ejected_until for s in moved.clusters["outbound|80||app.local"].balancer.states}
    assert states == {"10.0.0.3": 0.0, "10.0.0.1": 50.0}  # keyed by address, not position
    other = TableSnapshot(3, decode_table(payload("v", lb="RANDOM")), moved)
    rt = other.clusters["outbound|80||app.local"]
    assert rt.balancer.policy == "RANDOM" and all(s.ejected_until == 0.0 for s in rt.balancer.states)
    assert rt.circuit is moved.clusters["outbound|80||app.local"].circuit


@pytest.mark.parametrize(
    ("cluster", "endpoint", "host", "key_tail", "server_name"),
    [
        ("outbound|80||app.local", ("10.0.0.1", 80), b"app.example.com", (), None),  # plain: no SNI, one pool per endpoint
        ("outbound|443||tls.local", ("10.0.9.2", 443), b"app.example.com:8443", ("app.example.com",), "app.example.com"),  # auto SNI: the Host
        ("outbound|443||tls.local", ("10.0.9.2", 443), b"[2001:db8::1]:443", ("[2001:db8::1]",), "[2001:db8::1]"),
        ("outbound|443||tls.local", ("10.0.9.2", 443), b"other.example.com", ("other.example.com",), "other.example.com"),
        ("outbound|443||sni.local", ("10.0.9.3", 443), b"app.example.com", (), "pinned.example.com"),  # the DestinationRule's sni
    ],
)
def test_origination_keys_and_sni(payload, cluster, endpoint, host, key_tail, server_name):
    snapshot = TableSnapshot(1, decode_table(payload()), None)
    rt = snapshot.clusters[cluster]
    key, sni = rt.origination(Endpoint(*endpoint), host)
    assert key == (*endpoint, cluster, rt.cluster.tls, *key_tail)
    assert sni == server_name


def test_auto_sni_keeps_connections_for_one_host_apart(payload):
    rt = TableSnapshot(1, decode_table(payload()), None).clusters["outbound|443||tls.local"]
    endpoint = Endpoint("10.0.9.2", 443)
    assert rt.origination(endpoint, b"a.example.com")[0] != rt.origination(endpoint, b"b.example.com")[0]
    assert rt.origination(endpoint, b"a.example.com")[0] == rt.origination(endpoint, b"a.example.com:443")[0]


class Reader(StaticReader):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.reads = 0
        self.fail = False

    def read(self):
        self.reads += 1
        if self.fail:
            raise OSError("segment gone")
        return super().read()


def test_table_view_follows_the_generation_and_keeps_the_last_good_table(payload):
    reader = Reader(payload())
    changes, logged = [], []
    view = TableView(reader, on_change=changes.append, log=logged.append)
    first = view.current()
    assert first is not None and first.generation == 1 and changes == [first]
    assert view.current() is first and reader.reads == 1  # same generation: no copy, no decode
    reader.publish(b"\x93not a table")
    assert view.current() is first  # a table that cannot be decoded is skipped
    assert view.generation == 2 and reader.reads == 2 and "table generation 2 rejected" in logged[-1]
    assert view.current() is first and reader.reads == 2  # and not read again for every request
    reader.fail = True
    reader.generation = 3
    assert view.current() is first and "cannot read the table: segment gone" in logged[-1]
    reader.fail = False
    reader.publish(payload("u", max_connections=4))
    second = view.current()
    assert second is not first and second.generation == 4 and changes == [first, second]
    assert second.clusters["outbound|80||app.local"].circuit is first.clusters["outbound|80||app.local"].circuit
