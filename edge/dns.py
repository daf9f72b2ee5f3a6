# ServiceEntry DNS resolution (`resolution: DNS` and `DNS_ROUND_ROBIN`), done by the supervisor, never by workers.
#
# Rules:
# - The compiler leaves DNS names as endpoint addresses (a DNS ServiceEntry without endpoints gets one endpoint:
#   its host). The supervisor replaces them with addresses before it publishes a table, so a worker never
#   resolves a name on the request path.
# - Pure part, values in and out: `dns_names(table)` lists the names to resolve with their refresh interval (the
#   shortest Cluster.dns_refresh_s among the clusters using the name); `apply_resolution(table, cache)` returns
#   the table with each DNS cluster's endpoints rebuilt from `cache` ({name: (address, …)}):
#     DNS (Envoy STRICT_DNS): every address of every endpoint name is an endpoint, in endpoint order, then in
#       resolver order, each keeping the endpoint's port, weight and labels;
#     DNS_ROUND_ROBIN (Envoy LOGICAL_DNS): the first address only.
#   IP literals and unix:// addresses pass through. A name with nothing in the cache (never resolved) gives no
#   endpoint: the cluster answers 503 UH until a lookup succeeds. A table without DNS clusters comes back as
#   the same object.
# - I/O part, `DnsResolver`: lookups run in threads (the system resolver blocks), at most MAX_CONCURRENT_LOOKUPS
#   at once, each bounded by LOOKUP_TIMEOUT_S. `resolve_new(table)` looks up the names not seen before, with a
#   bounded wait (FIRST_LOOKUP_WAIT_S), before a table is published; `follow(table)` makes a published table the
#   one refreshed; `serve_refresh(on_change)` looks every name up again when its interval is up and calls
#   on_change() only when some name's addresses changed, so the supervisor publishes a new generation then and
#   only then.
# - Python's resolver (getaddrinfo) does not report the answer's TTL, so the refresh interval stands in for it:
#   Cluster.dns_refresh_s, 60 s by default like Istio's meshConfig.dnsRefreshRate.
# - A lookup that fails or times out keeps the last good addresses (and is retried after at most
#   FAILURE_RETRY_S); an empty answer counts as a failure.
# - The resolver is a blocking function name → addresses, raising OSError when the name does not resolve. It is
#   injected (DnsResolver(resolve=…)); tests pass a fake and never touch the network. The default asks the
#   system for IPv4 addresses only: Istio's gateways use V4_ONLY lookups unless the proxy is dual-stack.
from __future__ import annotations

import ipaddress
import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence

import msgspec
import trio

from edge.table import RoutingTable

DNS_RESOLUTIONS = frozenset({"DNS", "DNS_ROUND_ROBIN"})
LOOKUP_TIMEOUT_S = 5.0
FIRST_LOOKUP_WAIT_S = 5.0
FAILURE_RETRY_S = 5.0
MAX_CONCURRENT_LOOKUPS = 16

Resolver = Callable[[str], Sequence[str]]


def system_resolve(name: str) -> list[str]:
    """The system resolver's IPv4 addresses for `name`, in its order, without duplicates (OSError if none)."""
    infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# What DnsResolver uses when it is given no resolver (tests/e2e/dns_helper.py replaces it in its own process).
DEFAULT_RESOLVER: Resolver = system_resolve


# ------------------------------------------------------------------------------------------------ pure part


def is_literal(address: str) -> bool:
    """An address that needs no lookup: an IP literal or a unix:// path."""
    if address.startswith("unix://"):
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def dns_names(table: RoutingTable) -> dict[str, float]:
    """Every name to resolve → its refresh interval (the shortest among the DNS clusters that use it)."""
    names: dict[str, float] = {}
    for cluster in table.clusters.values():
        if cluster.resolution not in DNS_RESOLUTIONS:
            continue
        for endpoint in cluster.endpoints:
            if not is_literal(endpoint.address):
                names[endpoint.address] = min(names.get(endpoint.address, math.inf), cluster.dns_refresh_s)
    return names


def apply_resolution(table: RoutingTable, cache: Mapping[str, Sequence[str]]) -> RoutingTable:
    """The table with the endpoints of its DNS clusters rebuilt from the resolved addresses in `cache`."""
    if not any(c.resolution in DNS_RESOLUTIONS for c in table.clusters.values()):
        return table
    clusters = {}
    for key, cluster in table.clusters.items():
        if cluster.resolution not in DNS_RESOLUTIONS:
            clusters[key] = cluster
            continue
        first_only = cluster.resolution == "DNS_ROUND_ROBIN"
        endpoints = []
        for endpoint in cluster.endpoints:
            if is_literal(endpoint.address):
                endpoints.append(endpoint)
                continue
            addresses = tuple(cache.get(endpoint.address, ()))
            for address in addresses[:1] if first_only else addresses:
                endpoints.append(msgspec.structs.replace(endpoint, address=address))
        if first_only:
            endpoints = endpoints[:1]
        clusters[key] = msgspec.structs.replace(cluster, endpoints=tuple(endpoints))
    return msgspec.structs.replace(table, clusters=clusters)


# ------------------------------------------------------------------------------------------------- I/O part


class DnsResolver:
    """The supervisor's DNS state: the last good addresses of every name, and when to look each up again."""

    def __init__(
        self,
        resolve: Resolver | None = None,
        *,
        lookup_timeout_s: float = LOOKUP_TIMEOUT_S,
        first_wait_s: float = FIRST_LOOKUP_WAIT_S,
        failure_retry_s: float = FAILURE_RETRY_S,
        refresh_override_s: float | None = None,
        log: Callable[[str], None] = lambda line: None,
    ):
        self.resolve = resolve if resolve is not None else DEFAULT_RESOLVER
        self.lookup_timeout_s = lookup_timeout_s
        self.first_wait_s = first_wait_s
        self.failure_retry_s = failure_retry_s
        self.refresh_override_s = refresh_override_s  # replaces every Cluster.dns_refresh_s when set
        self.log = log
        self.cache: dict[str, tuple[str, ...]] = {}  # name → last good addresses
        self.errors: dict[str, str] = {}  # name → why its last lookup failed (cleared by a success)
        self.resolved_at: dict[str, float] = {}  # name → wall-clock time of the last good answer
        self.source: RoutingTable | None = None  # the published table, as compiled (names, not addresses)
        self.intervals: dict[str, float] = {}  # name → refresh interval
        self.due: dict[str, float] = {}  # name → trio time of its next lookup
        self.lookups_total = 0
        self.failures_total = 0
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_LOOKUPS)
        self._wake = trio.Event()

    def resolved(self) -> RoutingTable:
        """The followed table with the current addresses."""
        assert self.source is not None
        return apply_resolution(self.source, self.cache)

    async def resolve_new(self, table: RoutingTable) -> RoutingTable:
        """`table` with addresses, after looking up the names never resolved before (waits at most first_wait_s;
        names still unanswered then have no endpoints until the refresher gets them)."""
        names = dns_names(table)
        new = [name for name in names if name not in self.cache]
        if new:
            with trio.move_on_after(self.first_wait_s):
                await self._lookup_all(new)
        return apply_resolution(table, self.cache)

    def follow(self, table: RoutingTable) -> None:
        """`table` (as compiled) is published: refresh its names from now on, forget the names it dropped."""
        self.source = table
        intervals = dns_names(table)
        if self.refresh_override_s is not None:
            intervals = {name: self.refresh_override_s for name in intervals}
        now = trio.current_time()
        for name in {*self.due, *self.cache, *self.errors}:
            if name not in intervals:
                self.due.pop(name, None)
                self.cache.pop(name, None)
                self.errors.pop(name, None)
                self.resolved_at.pop(name, None)
        for name, interval in intervals.items():
            if name not in self.due or interval < self.intervals.get(name, math.inf):
                self.due[name] = now + (interval if name in self.cache else min(interval, self.failure_retry_s))
        self.intervals = intervals
        self._wake.set()

    async def serve_refresh(self, on_change: Callable[[], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: look names up again when they are due; on_change() after a round that changed addresses."""
        task_status.started()
        while True:
            now = trio.current_time()
            due = [name for name, at in self.due.items() if at <= now]
            if due:
                if await self._lookup_all(due) and self.source is not None:
                    on_change()
                continue
            wake = self._wake = trio.Event()
            with trio.move_on_at(min(self.due.values(), default=math.inf)):
                await wake.wait()

    async def _lookup_all(self, names: Sequence[str]) -> bool:
        """Look `names` up concurrently; True when any name's addresses changed."""
        changed = False

        async def one(name: str) -> None:
            nonlocal changed
            if await self._lookup(name):
                changed = True

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
        return changed

    async def _lookup(self, name: str) -> bool:
        self.lookups_total += 1
        interval = self.intervals.get(name, self.refresh_override_s or 60.0)
        problem = None
        addresses: tuple[str, ...] = ()
        try:
            with trio.fail_after(self.lookup_timeout_s):
                answer = await trio.to_thread.run_sync(self.resolve, name, limiter=self._limiter, abandon_on_cancel=True)
            addresses = tuple(dict.fromkeys(str(a) for a in answer))
            if not addresses:
                problem = "no addresses"
        except trio.TooSlowError:
            problem = f"no answer within {self.lookup_timeout_s:g} s"
        except OSError as exc:  # socket.gaierror included
            problem = exc.strerror or str(exc) or type(exc).__name__
        if name in self.intervals:  # followed: schedule the next lookup (follow() schedules the others)
            retry = interval if problem is None else min(interval, self.failure_retry_s)
            self.due[name] = trio.current_time() + retry
        if problem is not None:
            self.failures_total += 1
            if self.errors.get(name) != problem:
                kept = f"; keeping {', '.join(self.cache[name])}" if name in self.cache else "; it has no endpoints until it resolves"
                self.log(f"dns: {name}: lookup failed: {problem}{kept}")
            self.errors[name] = problem
            return False
        self.errors.pop(name, None)
        self.resolved_at[name] = time.time()
        if self.cache.get(name) == addresses:
            return False
        self.cache[name] = addresses
        self.log(f"dns: {name} → {', '.join(addresses)}")
        return True

    def statistics(self) -> dict[str, object]:
        return {
            "names": {name: {"addresses": list(self.cache.get(name, ())), "error": self.errors.get(name, "")} for name in sorted(self.intervals)},
            "lookups_total": self.lookups_total,
            "failures_total": self.failures_total,
        }
