# RequestAuthentication jwksUri fetching and OpenID discovery, done by the supervisor, never by workers (as istiod
# does it for its gateways with PILOT_JWT_ENABLE_REMOTE_JWKS unset: pilot/pkg/model/jwks_resolver.go).
#
# Rules:
# - The compiler leaves a jwksUri rule's `jwks` empty, and a rule with an issuer but neither `jwks` nor `jwksUri`
#   too; the supervisor puts the last good JWKS document of each *source* into the table before it publishes it,
#   the way edge/dns.py puts addresses in, so a worker parses keys once per table and never fetches anything on the
#   request path. A source is a jwksUri, or an issuer's OpenID configuration URL (`<issuer>` +
#   "/.well-known/openid-configuration", concatenated as istiod does, trailing "/" and all) for a rule without keys.
# - Pure part, values in and out: `jwks_sources(table)` lists the sources with their fetch timeout (the shortest
#   JwtRule.fetch_timeout_s of the rules using one) and whether they are discovered; `apply_jwks(table, cache)`
#   returns the table with each such rule's `jwks` taken from `cache` ({source: document}). A source never fetched
#   successfully leaves `jwks` empty: that issuer's tokens fail verification (istiod publishes a key nobody holds,
#   CreateFakeJwks, for the same effect). A table without such rules comes back as the same object.
# - OpenID discovery (istiod's resolveJwksURIUsingOpenID): GET the configuration; its `jwks_uri` member must be a
#   string (here also an http(s) URL with a host, as a jwksUri must be); then GET that JWKS as for a jwksUri. Both
#   GETs are bounded by the rule's timeout (istiod: 5 s each, its client's fixed timeout; the rule's default is
#   the same 5 s). Discovery is done again at every refresh (istiod's refresh re-resolves issuer-keyed entries), so
#   an issuer that moves its jwks_uri is followed; a failed discovery keeps the last good keys, like a failed fetch.
#   An issuer that is not an http(s) URL has nothing to discover (istiod's GET fails): no source, the compiler
#   warns, its tokens fail.
# - I/O part, `JwksFetcher`: GETs run in threads (urllib blocks), each bounded by the rule's timeout (Istio's
#   JWTRule.timeout, 5 s by default) and by MAX_DOCUMENT_BYTES. An answer counts when it is a 2xx whose body is a
#   JWKS with at least one usable key (workers/jwt.parse_jwks); anything else is a failure that keeps the last
#   good document and is retried after min(refresh interval, FAILURE_RETRY_S) (istiod: 1 min on failure).
#   `resolve_new(table)` fetches the sources not seen before, with a bounded wait, before a table is published;
#   `follow(table)` makes a published table the one refreshed; `serve_refresh(on_change)` fetches every source
#   again each refresh interval (--jwks-refresh-interval, istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL: 20 min)
#   and calls on_change() only when a document changed, so the supervisor publishes a new generation then and only
#   then.
# - `statistics()` is what /config_dump and the metrics port show: per source its fetches, failures, last success
#   (wall clock), last error and, for a discovered one, the jwks_uri found (istiod counts
#   pilot_jwks_resolver_network_fetch_success_total / _fail_total per GET; edge counts per source fetch).
# - The fetch is injected (JwksFetcher(fetch=…)): a blocking function (uri, timeout_s) → bytes raising OSError or
#   ValueError; the default is urllib with the system trust store for https.
from __future__ import annotations

import json
import math
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import NamedTuple

import msgspec
import trio

from edge.compiler.authentication import discovery_url, jwks_uri_problem
from edge.table import JwtRule, RoutingTable
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


class Source(NamedTuple):
    timeout_s: float
    discover: bool  # the source is an issuer's OpenID configuration: its jwks_uri is fetched next


def rule_source(rule: JwtRule) -> str | None:
    """The source of a rule's keys: its jwksUri, its issuer's OpenID configuration, or None (inline keys, or
    nothing that can be fetched)."""
    if rule.jwks_uri:
        return rule.jwks_uri
    if rule.jwks:
        return None
    return discovery_url(rule.issuer)


def jwks_sources(table: RoutingTable) -> dict[str, Source]:
    """Every source to fetch → its timeout (the shortest among the rules that use it) and kind."""
    sources: dict[str, Source] = {}
    for rule in table.jwt_rules:
        source = rule_source(rule)
        if source is not None:
            seen = sources.get(source)
            timeout = min(seen.timeout_s if seen else math.inf, rule.fetch_timeout_s)
            sources[source] = Source(timeout, (seen is not None and seen.discover) or not rule.jwks_uri)
    return sources


def jwks_uris(table: RoutingTable) -> dict[str, float]:
    """Every source to fetch → its timeout."""
    return {source: s.timeout_s for source, s in jwks_sources(table).items()}


def apply_jwks(table: RoutingTable, cache: Mapping[str, str]) -> RoutingTable:
    """The table with each fetched rule's document from `cache` ("" when never fetched)."""
    sources = [rule_source(rule) for rule in table.jwt_rules]
    if not any(sources):
        return table
    rules = tuple(msgspec.structs.replace(rule, jwks=cache.get(source, "")) if source else rule for rule, source in zip(table.jwt_rules, sources))
    return msgspec.structs.replace(table, jwt_rules=rules)


def openid_jwks_uri(body: bytes) -> str:
    """The `jwks_uri` of an OpenID configuration document (ValueError when there is none usable)."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"OpenID configuration is not JSON: {exc}") from None
    uri = document.get("jwks_uri") if isinstance(document, dict) else None
    if not isinstance(uri, str):
        raise ValueError(f"invalid jwks_uri {uri!r} in the OpenID configuration")
    problem = jwks_uri_problem(uri)
    if problem is not None:
        raise ValueError(f"OpenID configuration: {problem}")
    return uri


# ------------------------------------------------------------------------------------------------- I/O part


class JwksFetcher:
    """The supervisor's JWKS state: the last good document of every source, and when to fetch each again."""

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
        self.cache: dict[str, str] = {}  # source → last good document
        self.errors: dict[str, str] = {}  # source → why its last fetch failed (cleared by a success)
        self.fetched_at: dict[str, float] = {}  # source → wall-clock time of the last good answer
        self.discovered: dict[str, str] = {}  # OpenID configuration → the jwks_uri it named last
        self.counts: dict[str, list[int]] = {}  # source → [fetches, failures]
        self.sources: dict[str, Source] = {}  # of the followed table
        self.due: dict[str, float] = {}  # source → trio time of its next fetch
        self.fetches_total = 0
        self.failures_total = 0
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_FETCHES)
        self._wake = trio.Event()

    def apply(self, table: RoutingTable) -> RoutingTable:
        return apply_jwks(table, self.cache)

    async def resolve_new(self, table: RoutingTable) -> RoutingTable:
        """`table` with documents, after fetching the sources never fetched before (each bounded by its timeout)."""
        new = {uri: s for uri, s in jwks_sources(table).items() if uri not in self.cache and uri not in self.errors}
        if new:
            await self._fetch_all(new)
        return apply_jwks(table, self.cache)

    def follow(self, table: RoutingTable) -> None:
        """`table` (as compiled) is published: refresh its sources from now on, forget the ones it dropped."""
        sources = jwks_sources(table)
        now = trio.current_time()
        for uri in {*self.due, *self.cache, *self.errors, *self.counts}:
            if uri not in sources:
                for record in (self.due, self.cache, self.errors, self.fetched_at, self.discovered, self.counts):
                    record.pop(uri, None)
        for uri in sources:
            if uri not in self.due:
                self.due[uri] = now + (self.refresh_s if uri in self.cache else self.failure_retry_s)
        self.sources = sources
        self._wake.set()

    async def serve_refresh(self, on_change: Callable[[], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forever: fetch sources again when they are due; on_change() after a round that changed a document."""
        task_status.started()
        while True:
            now = trio.current_time()
            due = {uri: self.sources[uri] for uri, at in self.due.items() if at <= now and uri in self.sources}
            if due:
                if await self._fetch_all(due):
                    on_change()
                continue
            wake = self._wake = trio.Event()
            with trio.move_on_at(min(self.due.values(), default=math.inf)):
                await wake.wait()

    async def _fetch_all(self, sources: Mapping[str, Source | float]) -> bool:
        changed = False

        async def one(uri: str, source: Source) -> None:
            nonlocal changed
            if await self._fetch(uri, source):
                changed = True

        async with trio.open_nursery() as nursery:
            for uri, source in sources.items():
                nursery.start_soon(one, uri, source if isinstance(source, Source) else Source(source, False))
        return changed

    async def _get(self, uri: str, timeout_s: float) -> bytes:
        try:
            with trio.fail_after(timeout_s):
                return await trio.to_thread.run_sync(self.fetch, uri, timeout_s, limiter=self._limiter, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise OSError(f"no answer within {timeout_s:g} s") from None

    async def _document(self, uri: str, source: Source) -> tuple[str, str]:
        """(the JWKS text, the URI it came from) of one source; OSError/ValueError when it cannot be had."""
        if not source.discover:
            return await self._jwks(uri, source.timeout_s), uri
        jwks_uri = openid_jwks_uri(await self._get(uri, source.timeout_s))
        self.discovered[uri] = jwks_uri
        try:
            return await self._jwks(jwks_uri, source.timeout_s), jwks_uri
        except (OSError, ValueError) as exc:
            raise ValueError(f"its jwks_uri {jwks_uri}: {str(exc) or type(exc).__name__}") from None

    async def _jwks(self, uri: str, timeout_s: float) -> str:
        document = (await self._get(uri, timeout_s)).decode("utf-8")
        keys, why = parse_jwks(document)
        if not keys:
            raise ValueError(f"not a usable JWKS: {why}")
        return document

    async def _fetch(self, uri: str, source: Source) -> bool:
        self.fetches_total += 1
        counts = self.counts.setdefault(uri, [0, 0])
        counts[0] += 1
        problem = None
        document = jwks_uri = ""
        try:
            document, jwks_uri = await self._document(uri, source)
        except (OSError, ValueError) as exc:  # urllib's URLError/HTTPError are OSErrors; UnicodeDecodeError a ValueError
            problem = str(exc) or type(exc).__name__
        if uri in self.sources:
            self.due[uri] = trio.current_time() + (self.refresh_s if problem is None else self.failure_retry_s)
        what = "OpenID discovery" if source.discover else "fetch"
        if problem is not None:
            self.failures_total += 1
            counts[1] += 1
            if self.errors.get(uri) != problem:
                kept = "; keeping the last good keys" if uri in self.cache else "; its tokens fail verification until a fetch succeeds"
                self.log(f"jwks: {uri}: {what} failed: {problem}{kept}")
            self.errors[uri] = problem
            return False
        self.errors.pop(uri, None)
        self.fetched_at[uri] = time.time()
        if self.cache.get(uri) == document:
            return False
        self.cache[uri] = document
        found = f" (jwks_uri {jwks_uri})" if source.discover else ""
        self.log(f"jwks: {uri}{found}: {len(parse_jwks(document)[0])} key(s)")
        return True

    def statistics(self) -> dict[str, object]:
        """Per source of the followed table: fetches, failures, last success, last error, and what discovery found."""
        sources = {}
        for uri in sorted(self.sources):
            fetches, failures = self.counts.get(uri, (0, 0))
            sources[uri] = {
                "discovery": self.sources[uri].discover,
                "jwks_uri": self.discovered.get(uri, "") if self.sources[uri].discover else uri,
                "fetched": uri in self.cache,
                "fetches": fetches,
                "failures": failures,
                "last_success_at": self.fetched_at.get(uri, 0.0),
                "error": self.errors.get(uri, ""),
            }
        return {"uris": sources, "fetches_total": self.fetches_total, "failures_total": self.failures_total}
