# RequestAuthentication jwksUri fetching, done by the supervisor, never by workers (as istiod does it for its
# gateways with PILOT_JWT_ENABLE_REMOTE_JWKS unset: pilot/pkg/model/jwks_resolver.go).
#
# Rules:
# - The compiler leaves a jwksUri rule's `jwks` empty; the supervisor puts the last good JWKS document of the URI
#   into the table before it publishes it, the way edge/dns.py puts addresses in, so a worker parses keys once per
#   table and never fetches anything on the request path.
# - Pure part, values in and out: `jwks_uris(table)` lists the URIs with their fetch timeout (the shortest
#   JwtRule.fetch_timeout_s of the rules using one); `apply_jwks(table, cache)` returns the table with each such
#   rule's `jwks` taken from `cache` ({uri: document}). A URI never fetched successfully leaves `jwks` empty: that
#   issuer's tokens fail verification (istiod publishes a key nobody holds, PublicOnlyJwks, for the same effect).
#   A table without jwksUri rules comes back as the same object.
# - I/O part, `JwksFetcher`: GETs run in threads (urllib blocks), each bounded by the rule's timeout (Istio's
#   JWTRule.timeout, 5 s by default) and by MAX_DOCUMENT_BYTES. An answer counts when it is a 2xx whose body is a
#   JWKS with at least one usable key (workers/jwt.parse_jwks); anything else is a failure that keeps the last
#   good document and is retried after min(refresh interval, FAILURE_RETRY_S) (istiod: 1 min on failure).
#   `resolve_new(table)` fetches the URIs not seen before, with a bounded wait, before a table is published;
#   `follow(table)` makes a published table the one refreshed; `serve_refresh(on_change)` fetches every URI again
#   each refresh interval (--jwks-refresh-interval, istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL: 20 min) and calls
#   on_change() only when a document changed, so the supervisor publishes a new generation then and only then.
# - The fetch is injected (JwksFetcher(fetch=…)): a blocking function (uri, timeout_s) → bytes raising OSError or
#   ValueError; the default is urllib with the system trust store for https.
from __future__ import annotations

import math
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping

import msgspec
import trio

from edge.table import RoutingTable
from workers.jwt import parse_jwks

REFRESH_INTERVAL_S = 20 * 60.0  # istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL default
FAILURE_RETRY_S = 60.0  # istiod's JwtPubKeyRefreshIntervalOnFailure
MAX_DOCUMENT_BYTES = 1 << 20
MAX_CONCURRENT_FETCHES = 8

Fetch = Callable[[str, float], bytes]


def http_fetch(uri: str, timeout_s: float) -> bytes:
    """GET `uri`: the body of a 2xx answer (OSError otherwise, ValueError when it is too large)."""
    context = ssl.create_default_context() if uri.startswith("https:") else None
    request = urllib.request.Request(uri, headers={"accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:  # noqa: S310 - http(s) only (the compiler checked the scheme)
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
    return body


# ------------------------------------------------------------------------------------------------ pure part


def jwks_uris(table: RoutingTable) -> dict[str, float]:
    """Every jwksUri to fetch → its timeout (the shortest among the rules that use it)."""
    uris: dict[str, float] = {}
    for rule in table.jwt_rules:
        if rule.jwks_uri:
            uris[rule.jwks_uri] = min(uris.get(rule.jwks_uri, math.inf), rule.fetch_timeout_s)
    return uris


def apply_jwks(table: RoutingTable, cache: Mapping[str, str]) -> RoutingTable:
    """The table with each jwksUri rule's document from `cache` ("" when never fetched)."""
    if not any(rule.jwks_uri for rule in table.jwt_rules):
        return table
    rules = tuple(msgspec.structs.replace(rule, jwks=cache.get(rule.jwks_uri, "")) if rule.jwks_uri else rule for rule in table.jwt_rules)
    return msgspec.structs.replace(table, jwt_rules=rules)


# ------------------------------------------------------------------------------------------------- I/O part


class JwksFetcher:
    """The supervisor's JWKS state: the last good document of every URI, and when to fetch each again."""

    def __init__(
        self,
        fetch: Fetch | None = None,
        *,
        refresh_s: float = REFRESH_INTERVAL_S,
        failure_retry_s: float = FAILURE_RETRY_S,
        log: Callable[[str], None] = lambda line: None,
    ):
        self.fetch = fetch if fetch is not None else http_fetch
        self.refresh_s = refresh_s
        self.failure_retry_s = min(failure_retry_s, refresh_s)
        self.log = log
        self.cache: dict[str, str] = {}  # uri → last good document
        self.errors: dict[str, str] = {}  # uri → why its last fetch failed (cleared by a success)
        self.fetched_at: dict[str, float] = {}  # uri → wall-clock time of the last good answer
        self.timeouts: dict[str, float] = {}  # uri → fetch timeout, of the followed table
        self.due: dict[str, float] = {}  # uri → trio time of its next fetch
        self.fetches_total = 0
        self.failures_total = 0
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_FETCHES)
        self._wake = trio.Event()

    def apply(self, table: RoutingTable) -> RoutingTable:
        return apply_jwks(table, self.cache)

    async def resolve_new(self, table: RoutingTable) -> RoutingTable:
        """`table` with documents, after fetching the URIs never fetched before (each bounded by its timeout)."""
        uris = jwks_uris(table)
        new = {uri: t for uri, t in uris.items() if uri not in self.cache and uri not in self.errors}
        if new:
            await self._fetch_all(new)
        return apply_jwks(table, self.cache)

    def follow(self, table: RoutingTable) -> None:
        """`table` (as compiled) is published: refresh its URIs from now on, forget the ones it dropped."""
        uris = jwks_uris(table)
        now = trio.current_time()
        for uri in {*self.due, *self.cache, *self.errors}:
            if uri not in uris:
                for record in (self.due, self.cache, self.errors, self.fetched_at):
                    record.pop(uri, None)
        for uri in uris:
            if uri not in self.due:
                self.due[uri] = now + (self.refresh_s if uri in self.cache else self.failure_retry_s)
        self.timeouts = uris
        self._wake.set()

    async def serve_refresh(self, on_change: Callable[[], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: fetch URIs again when they are due; on_change() after a round that changed a document."""
        task_status.started()
        while True:
            now = trio.current_time()
            due = {uri: self.timeouts.get(uri, 5.0) for uri, at in self.due.items() if at <= now}
            if due:
                if await self._fetch_all(due):
                    on_change()
                continue
            wake = self._wake = trio.Event()
            with trio.move_on_at(min(self.due.values(), default=math.inf)):
                await wake.wait()

    async def _fetch_all(self, uris: Mapping[str, float]) -> bool:
        changed = False

        async def one(uri: str, timeout_s: float) -> None:
            nonlocal changed
            if await self._fetch(uri, timeout_s):
                changed = True

        async with trio.open_nursery() as nursery:
            for uri, timeout_s in uris.items():
                nursery.start_soon(one, uri, timeout_s)
        return changed

    async def _fetch(self, uri: str, timeout_s: float) -> bool:
        self.fetches_total += 1
        problem = None
        document = ""
        try:
            with trio.fail_after(timeout_s):
                body = await trio.to_thread.run_sync(self.fetch, uri, timeout_s, limiter=self._limiter, abandon_on_cancel=True)
            document = body.decode("utf-8")
            keys, why = parse_jwks(document)
            if not keys:
                problem = f"not a usable JWKS: {why}"
        except trio.TooSlowError:
            problem = f"no answer within {timeout_s:g} s"
        except (OSError, ValueError) as exc:  # urllib's URLError/HTTPError are OSErrors; UnicodeDecodeError a ValueError
            problem = str(exc) or type(exc).__name__
        if uri in self.timeouts:
            self.due[uri] = trio.current_time() + (self.refresh_s if problem is None else self.failure_retry_s)
        if problem is not None:
            self.failures_total += 1
            if self.errors.get(uri) != problem:
                kept = "; keeping the last good keys" if uri in self.cache else "; its tokens fail verification until a fetch succeeds"
                self.log(f"jwks: {uri}: fetch failed: {problem}{kept}")
            self.errors[uri] = problem
            return False
        self.errors.pop(uri, None)
        self.fetched_at[uri] = time.time()
        if self.cache.get(uri) == document:
            return False
        self.cache[uri] = document
        self.log(f"jwks: {uri}: {len(parse_jwks(document)[0])} key(s)")
        return True

    def statistics(self) -> dict[str, object]:
        return {
            "uris": {uri: {"fetched": uri in self.cache, "error": self.errors.get(uri, "")} for uri in sorted(self.timeouts)},
            "fetches_total": self.fetches_total,
            "failures_total": self.failures_total,
        }
