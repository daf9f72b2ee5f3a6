# Endpoint choice for one cluster: load-balancing policies and passive outlier detection. Pure: no I/O,
# the caller passes the time and a random source, so tests drive it with plain values.
#
# Rules:
# - Endpoint weights are relative (0 was turned into 1 by the compiler).
# - ROUND_ROBIN: smooth weighted round robin (nginx's), so weights interleave instead of bursting.
#   LEAST_REQUEST (Istio's default): power of two choices on active requests when all weights are equal,
#   else a weighted pick over weight / (active + 1), as Envoy does.
#   RANDOM: weighted random. CONSISTENT_HASH: a weighted ring (ketama style, RING_POINTS_PER_WEIGHT_UNIT
#   points per weight unit, at least MIN_RING_SIZE in all); the caller hashes its key (header, cookie, source
#   IP, query parameter) with `hash_key`. PASSTHROUGH has no original destination at a gateway: round robin.
# - `exclude` holds endpoints already tried by this request (retryIgnorePreviousHosts); it is a preference,
#   not a rule: when every healthy endpoint was tried, one of them is chosen again.
# - Outlier detection (Envoy semantics, as Istio configures it): consecutive 5xx (or connect failures) or
#   consecutive gateway errors (502/503/504) eject an endpoint at once for base_ejection_time × times
#   ejected; at least one endpoint may always be ejected, more only while the ejected share stays within
#   max_ejection_percent. An ejected endpoint gets no traffic until its time is up. Below min_health_percent
#   healthy endpoints (when > 0), ejection is ignored and all endpoints are used (Envoy's panic mode).
# - A cluster with no endpoints left answers None (→ 503 "no healthy upstream", flag UH).
# - Weighted destinations (a route's or a TCP route's clusters) are picked once per request or connection with
#   pick_weighted over cumulative weights computed at table load: the one place that rule lives.
from __future__ import annotations

import bisect
import hashlib
import random as _random
from typing import Sequence

from edge.table import Endpoint, OutlierPolicy

# One random source for every balancer of the process (a worker is its own process, started by exec, so each
# seeds its own): a Mersenne Twister is 2.5 KiB of state, which per cluster was 49 MiB of a worker with 20,000
# clusters. Balancers draw from it one call at a time (no sequence of one cluster depends on another's).
_SHARED_RANDOM = _random.Random()

RING_POINTS_PER_WEIGHT_UNIT = 160
MIN_RING_SIZE = 1024
MAX_RING_SIZE = 8 * 1024 * 1024


class Lease:
    """Balancer.lease: exactly one on_start and one on_finish or on_cancel per try."""

    __slots__ = ("balancer", "index", "clock", "verdict")

    def __init__(self, balancer: "Balancer", index: int, clock) -> None:
        self.balancer = balancer
        self.index = index
        self.clock = clock
        self.verdict = -1

    def __enter__(self) -> "Lease":
        self.balancer.on_start(self.index)
        return self

    def __exit__(self, *exc_info) -> None:
        self.balancer.settle(self.index, self.verdict, self.clock())


def cumulative_weights(weights) -> tuple[int, ...]:
    """Running totals of destination weights (negative ones count as 0), for pick_weighted."""
    total = 0
    out = []
    for weight in weights:
        total += max(0, weight)
        out.append(total)
    return tuple(out)


def pick_weighted(cumulative: Sequence[int], rng) -> int:
    """The index of the destination of one request or connection: weight/total of the time. A lone destination,
    or weights that are all 0 (the compiler allows that only for one destination), give index 0."""
    n = len(cumulative)
    if n <= 1 or cumulative[-1] <= 0:
        return 0
    return bisect.bisect_right(cumulative, rng.randrange(cumulative[-1]))


def hash_key(value: bytes) -> int:
    """64-bit hash of a consistent-hash key (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "big")


class EndpointState:
    __slots__ = ("endpoint", "address_text", "weight", "active", "current", "consecutive_5xx", "consecutive_gateway", "ejected_until", "times_ejected", "total", "failures")

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.address_text = f"{endpoint.address}:{endpoint.port}"  # the access log's %UPSTREAM_HOST%, made once
        self.weight = max(1, endpoint.weight)
        self.active = 0  # requests in flight (LEAST_REQUEST)
        self.current = 0  # smooth weighted round-robin credit
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejected_until = 0.0
        self.times_ejected = 0
        self.total = 0
        self.failures = 0


class Balancer:
    __slots__ = ("policy", "states", "outlier", "random", "_ring", "_ring_keys", "_weights_equal", "_rr_next", "_cum_weights", "ejections_total")

    def __init__(self, endpoints: Sequence[Endpoint], policy: str = "LEAST_REQUEST", outlier: OutlierPolicy | None = None, rng: _random.Random | None = None, previous: "Balancer | None" = None):
        self.policy = policy
        self.outlier = outlier
        self.random = rng or _SHARED_RANDOM
        old = {}
        if previous is not None:
            old = {(s.endpoint.address, s.endpoint.port): s for s in previous.states}
        self.states: list[EndpointState] = []
        for ep in endpoints:
            state = EndpointState(ep)
            prior = old.get((ep.address, ep.port))
            if prior is not None:  # keep health and load across table generations
                state.active = prior.active
                state.consecutive_5xx = prior.consecutive_5xx
                state.consecutive_gateway = prior.consecutive_gateway
                state.ejected_until = prior.ejected_until
                state.times_ejected = prior.times_ejected
            self.states.append(state)
        self._weights_equal = len({s.weight for s in self.states}) <= 1
        self._rr_next = 0
        self._cum_weights: list[int] = []
        total = 0
        for s in self.states:
            total += s.weight
            self._cum_weights.append(total)
        self._ring: list[int] = []
        self._ring_keys: list[int] = []
        self.ejections_total = previous.ejections_total if previous is not None else 0
        if policy == "CONSISTENT_HASH":
            self._build_ring()

    # ------------------------------------------------------------------ choice

    def choose(self, now: float, hash_value: int | None = None, exclude: Sequence[int] = ()) -> int | None:
        """Index of the endpoint for the next try, or None when no endpoint can take traffic."""
        states = self.states
        if not states:
            return None
        candidates = self._available(now)
        if not candidates:
            return None
        if exclude:
            preferred = [i for i in candidates if i not in exclude]
            if preferred:
                candidates = preferred
        all_available = len(candidates) == len(states)
        policy = self.policy
        if policy == "CONSISTENT_HASH" and hash_value is not None and self._ring:
            return self._ring_pick(hash_value, candidates, all_available)
        if policy == "RANDOM":
            return self._weighted_random(candidates, all_available)
        if policy in ("ROUND_ROBIN", "PASSTHROUGH", "CONSISTENT_HASH"):
            return self._round_robin(candidates, all_available)
        return self._least_request(candidates)

    def _available(self, now: float) -> list[int]:
        states = self.states
        if self.outlier is None:
            return list(range(len(states)))
        healthy = [i for i, s in enumerate(states) if s.ejected_until <= now]
        minimum = self.outlier.min_health_percent
        if minimum and len(healthy) * 100 < minimum * len(states):
            return list(range(len(states)))  # panic: use everyone
        return healthy

    def _round_robin(self, candidates: list[int], all_available: bool) -> int:
        states = self.states
        if self._weights_equal:
            n = len(states)
            for _ in range(n):
                i = self._rr_next % n
                self._rr_next = i + 1
                if all_available or i in candidates:
                    return i
            return candidates[0]
        total = 0
        best = -1
        best_current = 0
        for i in candidates:
            s = states[i]
            s.current += s.weight
            total += s.weight
            if best < 0 or s.current > best_current:
                best, best_current = i, s.current
        states[best].current -= total
        return best

    def _weighted_random(self, candidates: list[int], all_available: bool) -> int:
        if all_available:
            r = self.random.randrange(self._cum_weights[-1])
            return bisect.bisect_right(self._cum_weights, r)
        weights = [self.states[i].weight for i in candidates]
        return self.random.choices(candidates, weights)[0]

    def _least_request(self, candidates: list[int]) -> int:
        if len(candidates) == 1:
            return candidates[0]
        states = self.states
        if self._weights_equal:
            a, b = self.random.sample(candidates, 2)
            return a if states[a].active <= states[b].active else b
        # Envoy's weighted least request: with unequal weights it is no power of two choices but a weighted
        # pick over the dynamic weights weight / (active + 1) (active_request_bias 1.0). Two picks weighted by
        # the static weight alone would ignore a busy heavy endpoint whenever it is drawn twice.
        weights = [states[i].weight / (states[i].active + 1) for i in candidates]
        return self.random.choices(candidates, weights)[0]

    def _build_ring(self) -> None:
        total_weight = sum(s.weight for s in self.states) or 1
        per_unit = max(RING_POINTS_PER_WEIGHT_UNIT, -(-MIN_RING_SIZE // total_weight))
        points: list[tuple[int, int]] = []
        for i, s in enumerate(self.states):
            base = f"{s.endpoint.address}:{s.endpoint.port}".encode()
            for n in range(min(s.weight * per_unit, MAX_RING_SIZE)):
                points.append((hash_key(base + b"_" + str(n).encode()), i))
        points.sort()
        self._ring_keys = [p[0] for p in points]
        self._ring = [p[1] for p in points]

    def _ring_pick(self, hash_value: int, candidates: list[int], all_available: bool) -> int:
        keys = self._ring_keys
        pos = bisect.bisect_left(keys, hash_value)
        n = len(keys)
        allowed = None if all_available else set(candidates)
        for step in range(n):
            i = self._ring[(pos + step) % n]
            if allowed is None or i in allowed:
                return i
        return candidates[0]

    # ------------------------------------------------------------------ bookkeeping

    def lease(self, index: int, clock) -> "Lease":
        """One try or connection attempt on endpoint `index`, as a context manager: started on entry; on exit
        finished with `lease.verdict` (a status, 0 for a failure with no response) when the caller set one, else
        cancelled (no verdict: the client left, an overflow, an error of ours). `clock` gives the time then."""
        return Lease(self, index, clock)

    def on_start(self, index: int) -> None:
        self.states[index].active += 1

    def settle(self, index: int, verdict: int, now: float) -> None:
        """The end of a try started with on_start: finished with its verdict (a status, 0 for a connect failure or
        a reset before a response), or cancelled when there is none (-1: the client left, an overflow, an error of
        ours). Every try ends here exactly once (Lease, or the HTTP forwarder's own try/finally on the hot path)."""
        s = self.states[index]
        if s.active > 0:
            s.active -= 1
        if verdict < 0:
            return
        s.total += 1
        outlier = self.outlier
        if outlier is None:
            return
        is_5xx = verdict == 0 or verdict >= 500
        if outlier.error_codes and verdict:
            is_5xx = verdict in outlier.error_codes
        is_gateway = verdict == 0 or verdict in (502, 503, 504)
        if is_5xx:
            s.failures += 1
            s.consecutive_5xx += 1
        else:
            s.consecutive_5xx = 0
        s.consecutive_gateway = s.consecutive_gateway + 1 if is_gateway else 0
        trip = (outlier.consecutive_5xx and s.consecutive_5xx >= outlier.consecutive_5xx) or (
            outlier.consecutive_gateway_errors and s.consecutive_gateway >= outlier.consecutive_gateway_errors
        )
        if trip and s.ejected_until <= now:
            self._eject(s, now)

    def on_cancel(self, index: int) -> None:
        """A try that ended without a verdict on the endpoint."""
        self.settle(index, -1, 0.0)

    def on_finish(self, index: int, status: int, now: float) -> None:
        """Record one try's outcome: status 0 = connect failure or reset before a response."""
        self.settle(index, status, now)

    def _eject(self, s: EndpointState, now: float) -> None:
        outlier = self.outlier
        assert outlier is not None
        ejected = sum(1 for x in self.states if x.ejected_until > now)
        if ejected > 0 and (ejected + 1) * 100 > outlier.max_ejection_percent * len(self.states):
            return
        s.times_ejected += 1
        s.ejected_until = now + outlier.base_ejection_time_s * s.times_ejected
        s.consecutive_5xx = 0
        s.consecutive_gateway = 0
        self.ejections_total += 1

    def ejected_count(self, now: float) -> int:
        return sum(1 for s in self.states if s.ejected_until > now)
