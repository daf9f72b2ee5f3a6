# edge/dns.py: the pure table rewrite (table-driven), and the resolver loop with a fake resolver function — no
# lookup here ever reaches the system resolver or the network. The loop tests use the real clock with intervals
# of a few tens of milliseconds: lookups run in threads, and trio's autojump clock would jump over a thread's
# work straight to the lookup timeout.
from __future__ import annotations

import socket
import threading

import pytest
import trio

from edge import dns
from edge.dns import DnsResolver, apply_resolution, dns_names, is_literal
from edge.table import Cluster, Endpoint, RoutingTable
from tests.edge.routing import compiled as compile_yaml


def cluster(name: str, resolution: str, *endpoints: Endpoint, refresh_s: float = 60.0) -> Cluster:
    return Cluster(name=name, service=name, port=80, resolution=resolution, endpoints=endpoints, dns_refresh_s=refresh_s)


def ep(address: str, port: int = 80, weight: int = 1, **labels: str) -> Endpoint:
    return Endpoint(address=address, port=port, weight=weight, labels=labels)


def table(*clusters: Cluster) -> RoutingTable:
    return RoutingTable(clusters={c.name: c for c in clusters})


# --------------------------------------------------------------------------------------------- pure part


@pytest.mark.parametrize(
    "address, literal",
    [("127.0.0.1", True), ("::1", True), ("unix:///run/app.sock", True), ("localhost", False), ("api.example.com", False), ("10.0.0", False)],
)
def test_is_literal(address, literal):
    assert is_literal(address) is literal


def test_dns_names_lists_names_of_dns_clusters_with_the_shortest_interval():
    t = table(
        cluster("a", "DNS", ep("api.example.com"), ep("10.0.0.1"), refresh_s=30),
        cluster("b", "DNS_ROUND_ROBIN", ep("api.example.com"), refresh_s=10),
        cluster("c", "DNS", ep("other.example.com"), ep("unix:///x.sock")),
        cluster("s", "STATIC", ep("10.0.0.2"), ep("static-name.example.com")),
    )
    assert dns_names(t) == {"api.example.com": 10, "other.example.com": 60}


CACHE = {"api.example.com": ("10.1.0.1", "10.1.0.2"), "b.example.com": ("10.2.0.1",)}


@pytest.mark.parametrize(
    "resolution, endpoints, expected",
    [
        # DNS: every address of every endpoint name, keeping port, weight and labels.
        (
            "DNS",
            (ep("api.example.com", 8080, 3, version="v1"),),
            (ep("10.1.0.1", 8080, 3, version="v1"), ep("10.1.0.2", 8080, 3, version="v1")),
        ),
        (
            "DNS",
            (ep("api.example.com", 81), ep("b.example.com", 82), ep("10.9.9.9", 83)),
            (ep("10.1.0.1", 81), ep("10.1.0.2", 81), ep("10.2.0.1", 82), ep("10.9.9.9", 83)),
        ),
        # A name never resolved gives no endpoint; the others still serve.
        ("DNS", (ep("missing.example.com"), ep("b.example.com")), (ep("10.2.0.1"),)),
        ("DNS", (ep("missing.example.com"),), ()),
        # DNS_ROUND_ROBIN: the first address only.
        ("DNS_ROUND_ROBIN", (ep("api.example.com", 8080, version="v2"),), (ep("10.1.0.1", 8080, version="v2"),)),
        ("DNS_ROUND_ROBIN", (ep("missing.example.com"),), ()),
    ],
)
def test_apply_resolution(resolution, endpoints, expected):
    t = table(cluster("c", resolution, *endpoints), cluster("s", "STATIC", ep("10.0.0.1")))
    out = apply_resolution(t, CACHE)
    assert out.clusters["c"].endpoints == expected
    assert out.clusters["s"] is t.clusters["s"]  # other clusters untouched
    assert t.clusters["c"].endpoints == endpoints  # the input is not changed


def test_apply_resolution_without_dns_clusters_returns_the_same_table():
    t = table(cluster("s", "STATIC", ep("10.0.0.1")))
    assert apply_resolution(t, CACHE) is t


SERVICE_ENTRIES = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: with-endpoints}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: https, protocol: HTTPS, targetPort: 8443}]
  endpoints:
  - {address: eu.api.example.com, labels: {region: eu}, weight: 2}
  - {address: 10.0.0.7, ports: {https: 9443}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: host-only}
spec:
  hosts: [www.example.org]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: [x.example.com]
  gateways: [gw]
  http:
  - {match: [{uri: {prefix: /a}}], route: [{destination: {host: api.example.com}}]}
  - route: [{destination: {host: www.example.org}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"""


def test_compiled_dns_service_entries_resolve_through_the_cache():
    compiled = compile_yaml(SERVICE_ENTRIES, labels={})
    assert dns_names(compiled) == {"eu.api.example.com": 60.0, "www.example.org": 60.0}
    resolved = apply_resolution(compiled, {"eu.api.example.com": ("192.0.2.1", "192.0.2.2"), "www.example.org": ("198.51.100.1", "198.51.100.2")})
    api = resolved.clusters["outbound|443||api.example.com"]
    assert [(e.address, e.port, e.weight, e.labels) for e in api.endpoints] == [
        ("192.0.2.1", 8443, 2, {"region": "eu"}),
        ("192.0.2.2", 8443, 2, {"region": "eu"}),
        ("10.0.0.7", 9443, 1, {}),
    ]
    www = resolved.clusters["outbound|80||www.example.org"]
    assert [(e.address, e.port) for e in www.endpoints] == [("198.51.100.1", 80)]  # the host itself, first address


# ----------------------------------------------------------------------------------------------- I/O part


class FakeDns:
    """A resolver function over a dict the test edits: a list of addresses, or an OSError to raise; names not
    in it fail like the system resolver does. `block` holds lookups until it is set (a resolver that hangs)."""

    def __init__(self, answers: dict):
        self.answers = dict(answers)
        self.calls: list[str] = []
        self.block: threading.Event | None = None
        self._lock = threading.Lock()

    def __call__(self, name: str) -> list[str]:
        with self._lock:
            self.calls.append(name)
        if self.block is not None:
            self.block.wait(10)
        answer = self.answers.get(name, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)

    def count(self, name: str) -> int:
        with self._lock:
            return self.calls.count(name)


async def test_resolve_new_looks_up_only_names_never_seen():
    fake = FakeDns({"a.test": ["10.0.0.1"], "b.test": ["10.0.0.2", "10.0.0.3"]})
    resolver = DnsResolver(fake)
    t = table(cluster("a", "DNS", ep("a.test")), cluster("b", "DNS", ep("b.test")))
    out = await resolver.resolve_new(t)
    assert [e.address for e in out.clusters["b"].endpoints] == ["10.0.0.2", "10.0.0.3"]
    await resolver.resolve_new(t)
    assert sorted(fake.calls) == ["a.test", "b.test"]


async def test_a_name_that_fails_has_no_endpoints_and_does_not_stop_the_others():
    lines = []
    fake = FakeDns({"good.test": ["10.0.0.1"]})
    resolver = DnsResolver(fake, log=lines.append)
    t = table(cluster("c", "DNS", ep("good.test", 81), ep("missing.test", 82)))
    out = await resolver.resolve_new(t)
    assert out.clusters["c"].endpoints == (ep("10.0.0.1", 81),)
    assert resolver.errors == {"missing.test": "Name or service not known"}
    assert sorted(lines) == ["dns: good.test → 10.0.0.1", "dns: missing.test: lookup failed: Name or service not known; it has no endpoints until it resolves"]


async def test_the_first_lookup_wait_is_bounded():
    fake = FakeDns({"slow.test": ["10.0.0.1"]})
    fake.block = threading.Event()
    resolver = DnsResolver(fake, first_wait_s=0.1, lookup_timeout_s=5)
    t = table(cluster("c", "DNS", ep("slow.test")))
    try:
        with trio.fail_after(2):
            out = await resolver.resolve_new(t)
        assert out.clusters["c"].endpoints == ()  # published without it; the refresher will get it
    finally:
        fake.block.set()


async def test_lookup_timeout_counts_as_a_failure():
    fake = FakeDns({"slow.test": ["10.0.0.1"]})
    fake.block = threading.Event()
    resolver = DnsResolver(fake, lookup_timeout_s=0.05)
    try:
        with trio.fail_after(2):
            await resolver.resolve_new(table(cluster("c", "DNS", ep("slow.test"))))
        assert resolver.errors == {"slow.test": "no answer within 0.05 s"}
    finally:
        fake.block.set()


async def _refresh_until(resolver: DnsResolver, done, timeout_s: float = 3.0) -> list[int]:
    """Run the refresher until done() holds; the generation-like counter of on_change calls, over time."""
    changes: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(resolver.serve_refresh, lambda: changes.append(1))
        with trio.fail_after(timeout_s):
            while not done(changes):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return changes


async def test_refresh_republishes_only_on_change():
    fake = FakeDns({"api.test": ["10.0.0.1"]})
    resolver = DnsResolver(fake)
    t = table(cluster("c", "DNS", ep("api.test"), refresh_s=0.05))
    resolver.follow(t)  # never resolved: due at once
    changes = await _refresh_until(resolver, lambda ch: len(ch) == 1)
    assert resolver.resolved().clusters["c"].endpoints == (ep("10.0.0.1"),)
    # Same answer again and again: lookups, but no republish.
    changes = await _refresh_until(resolver, lambda ch: fake.count("api.test") >= 4)
    assert changes == []
    # The answer changes: one republish, with the new addresses.
    fake.answers["api.test"] = ["10.0.0.2", "10.0.0.1"]
    changes = await _refresh_until(resolver, lambda ch: len(ch) == 1)
    assert [e.address for e in resolver.resolved().clusters["c"].endpoints] == ["10.0.0.2", "10.0.0.1"]


async def test_a_failed_refresh_keeps_the_last_good_addresses():
    lines = []
    fake = FakeDns({"api.test": ["10.0.0.1"]})
    resolver = DnsResolver(fake, failure_retry_s=0.02, log=lines.append)
    t = table(cluster("c", "DNS", ep("api.test"), refresh_s=0.05))
    await resolver.resolve_new(t)
    resolver.follow(t)
    fake.answers["api.test"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    before = fake.count("api.test")
    changes = await _refresh_until(resolver, lambda ch: fake.count("api.test") >= before + 3)
    assert changes == []
    assert resolver.resolved().clusters["c"].endpoints == (ep("10.0.0.1"),)
    assert resolver.errors["api.test"] == "Temporary failure in name resolution"
    failures = [line for line in lines if "lookup failed" in line]
    assert failures == ["dns: api.test: lookup failed: Temporary failure in name resolution; keeping 10.0.0.1"]  # logged once
    # An empty answer is no answer either.
    fake.answers["api.test"] = []
    await _refresh_until(resolver, lambda ch: resolver.errors.get("api.test") == "no addresses")
    assert resolver.resolved().clusters["c"].endpoints == (ep("10.0.0.1"),)
    # It recovers with a new address: republished.
    fake.answers["api.test"] = ["10.0.0.9"]
    changes = await _refresh_until(resolver, lambda ch: len(ch) == 1)
    assert resolver.resolved().clusters["c"].endpoints == (ep("10.0.0.9"),)
    assert "api.test" not in resolver.errors


async def test_follow_forgets_names_the_new_table_dropped_and_picks_up_new_ones():
    fake = FakeDns({"old.test": ["10.0.0.1"], "new.test": ["10.0.0.2"]})
    resolver = DnsResolver(fake)
    first = table(cluster("c", "DNS", ep("old.test"), refresh_s=0.05))
    await resolver.resolve_new(first)
    resolver.follow(first)
    second = table(cluster("c", "DNS", ep("new.test"), refresh_s=0.05))
    resolver.follow(second)  # published without resolve_new (e.g. its first lookup did not finish in time)
    assert "old.test" not in resolver.cache and "old.test" not in resolver.due
    await _refresh_until(resolver, lambda ch: len(ch) == 1)
    assert resolver.resolved().clusters["c"].endpoints == (ep("10.0.0.2"),)
    calls_old = fake.count("old.test")
    await _refresh_until(resolver, lambda ch: fake.count("new.test") >= 3)
    assert fake.count("old.test") == calls_old  # no longer refreshed


async def test_refresh_override_replaces_every_interval():
    fake = FakeDns({"api.test": ["10.0.0.1"]})
    resolver = DnsResolver(fake, refresh_override_s=0.02)
    t = table(cluster("c", "DNS", ep("api.test"), refresh_s=3600))
    await resolver.resolve_new(t)
    resolver.follow(t)
    await _refresh_until(resolver, lambda ch: fake.count("api.test") >= 4, timeout_s=2)


def test_the_default_resolver_is_the_system_one_for_ipv4():
    # Only the function identity is checked: calling it would ask the system resolver.
    assert DnsResolver().resolve is dns.system_resolve
