"""workers/balance.py: load-balancing policies and passive outlier detection, driven with plain values
(explicit `now`, seeded random.Random) so that every outcome is deterministic."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edge.table import Endpoint, OutlierPolicy
from workers.balance import MIN_RING_SIZE, RING_POINTS_PER_WEIGHT_UNIT, Balancer, cumulative_weights, hash_key, pick_weighted

POLICIES = ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "CONSISTENT_HASH", "PASSTHROUGH"]


def eps(*weights: int) -> list[Endpoint]:
    return [Endpoint(address=f"10.0.0.{i}", port=8080, weight=w) for i, w in enumerate(weights, start=1)]


def balancer(endpoints, policy="ROUND_ROBIN", outlier=None, seed=1, previous=None) -> Balancer:
    return Balancer(endpoints, policy, outlier, rng=random.Random(seed), previous=previous)


def picks(b: Balancer, n: int, now: float = 0.0, **kw) -> list[int]:
    return [b.choose(now, **kw) for _ in range(n)]


def fail(b: Balancer, index: int, statuses, now: float = 0.0) -> None:
    for status in statuses:
        b.on_start(index)
        b.on_finish(index, status, now)


def outlier(**kw) -> OutlierPolicy:
    kw.setdefault("consecutive_5xx", 3)
    kw.setdefault("base_ejection_time_s", 10.0)
    kw.setdefault("max_ejection_percent", 100)
    return OutlierPolicy(**kw)


def keys(n: int) -> list[int]:
    return [hash_key(f"user-{k}".encode()) for k in range(n)]


# ---------------------------------------------------------------------------------------------------
# Empty clusters and basics


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("with_outlier", [False, True])
def test_empty_endpoint_list_answers_none(policy, with_outlier):
    b = balancer([], policy, outlier() if with_outlier else None)
    assert b.choose(0.0) is None
    assert b.choose(0.0, hash_value=hash_key(b"k")) is None
    assert b.choose(0.0, exclude=[0]) is None
    assert b.ejected_count(0.0) == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_single_endpoint_always_chosen(policy):
    b = balancer(eps(3), policy)
    assert set(picks(b, 50)) == {0}
    assert {b.choose(0.0, hash_value=h) for h in keys(50)} == {0}


def test_zero_weight_counts_as_one():
    b = balancer(eps(0, 1))
    assert [s.weight for s in b.states] == [1, 1]
    assert picks(b, 4) == [0, 1, 0, 1]


def test_hash_key_is_stable_64_bit():
    assert hash_key(b"user-1") == hash_key(b"user-1")
    assert hash_key(b"user-1") != hash_key(b"user-2")
    assert all(0 <= hash_key(bytes([i])) < 2**64 for i in range(256))
    # blake2b, not hash(): the same in every worker process and every run
    assert hash_key(b"") == 16476032584258269876


# ---------------------------------------------------------------------------------------------------
# ROUND_ROBIN


@pytest.mark.parametrize("n", [2, 3, 5])
def test_round_robin_equal_weights_cycles_exactly(n):
    b = balancer(eps(*[1] * n))
    assert picks(b, 3 * n) == list(range(n)) * 3


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "PASSTHROUGH"])
def test_round_robin_equal_weights_above_one(policy):
    b = balancer(eps(4, 4, 4), policy)
    assert picks(b, 6) == [0, 1, 2, 0, 1, 2]


def test_smooth_weighted_round_robin_sequence():
    # nginx's documented example: weights { a: 5, b: 1, c: 1 } give a a b a c a a
    b = balancer(eps(5, 1, 1))
    assert picks(b, 14) == [0, 0, 1, 0, 2, 0, 0] * 2


@pytest.mark.parametrize(
    "weights",
    [(5, 3, 2), (1, 2), (7, 1, 1, 1), (1, 1, 98), (3, 3, 4)],
)
def test_weighted_round_robin_distribution_exact(weights):
    b = balancer(eps(*weights))
    total = sum(weights)
    n = 100 * total  # a whole number of periods
    assert Counter(picks(b, n)) == {i: 100 * w for i, w in enumerate(weights)}
    # smooth: every single period already has the exact counts
    assert Counter(picks(b, total)) == {i: w for i, w in enumerate(weights)}


def test_weighted_round_robin_1000_picks():
    b = balancer(eps(5, 3, 2))
    assert Counter(picks(b, 1000)) == {0: 500, 1: 300, 2: 200}


def test_weighted_round_robin_interleaves():
    b = balancer(eps(1, 1, 2))
    seq = picks(b, 400)
    assert all(seq[i] != seq[i + 1] or seq[i] == 2 for i in range(len(seq) - 1))
    assert not any(seq[i] == seq[i + 1] == seq[i + 2] for i in range(len(seq) - 2))


def test_consistent_hash_without_key_falls_back_to_round_robin():
    b = balancer(eps(1, 1, 1), "CONSISTENT_HASH")
    assert picks(b, 6) == [0, 1, 2, 0, 1, 2]


# ---------------------------------------------------------------------------------------------------
# RANDOM


@pytest.mark.parametrize(("weights", "seed"), [((1, 2, 7), 1), ((1, 1), 2), ((5, 3, 2), 3), ((1, 1, 1, 1), 4)])
def test_random_weighted_distribution(weights, seed):
    b = balancer(eps(*weights), "RANDOM", seed=seed)
    n = 20000
    counts = Counter(picks(b, n))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert counts[i] / n == pytest.approx(w / total, abs=0.02)


def test_random_is_reproducible_with_the_same_seed():
    assert picks(balancer(eps(1, 2, 3), "RANDOM", seed=7), 200) == picks(balancer(eps(1, 2, 3), "RANDOM", seed=7), 200)


def test_random_weighted_among_available_only():
    b = balancer(eps(1, 1, 3), "RANDOM", outlier=outlier(), seed=5)
    fail(b, 1, [503] * 3)
    counts = Counter(picks(b, 20000, now=1.0))
    assert 1 not in counts
    assert counts[0] / 20000 == pytest.approx(0.25, abs=0.02)
    assert counts[2] / 20000 == pytest.approx(0.75, abs=0.02)


# ---------------------------------------------------------------------------------------------------
# LEAST_REQUEST


def test_least_request_prefers_fewer_active_two_endpoints():
    b = balancer(eps(1, 1), "LEAST_REQUEST")
    for _ in range(3):
        b.on_start(0)
    assert set(picks(b, 50)) == {1}
    for _ in range(3):
        b.on_finish(0, 200, 0.0)
    b.on_start(1)
    assert [s.active for s in b.states] == [0, 1]
    assert set(picks(b, 50)) == {0}


def test_least_request_busiest_never_chosen():
    b = balancer(eps(1, 1, 1, 1), "LEAST_REQUEST", seed=3)
    for _ in range(9):
        b.on_start(2)
    counts = Counter(picks(b, 1000))
    assert counts[2] == 0
    assert set(counts) == {0, 1, 3}


def test_least_request_idle_endpoint_wins_whenever_drawn():
    # active [5, 5, 0]: two of the three possible pairs contain the idle endpoint
    b = balancer(eps(1, 1, 1), "LEAST_REQUEST", seed=11)
    for i in (0, 1):
        for _ in range(5):
            b.on_start(i)
    counts = Counter(picks(b, 3000))
    assert counts[2] / 3000 == pytest.approx(2 / 3, abs=0.04)


def test_least_request_keeps_load_even():
    b = balancer(eps(1, 1, 1, 1), "LEAST_REQUEST", seed=5)
    for _ in range(400):
        b.on_start(b.choose(0.0))
    actives = [s.active for s in b.states]
    assert sum(actives) == 400
    assert max(actives) - min(actives) <= 3


@pytest.mark.parametrize(
    ("weights", "active", "seed"),
    [
        ((1, 4), (0, 0), 9),
        ((1, 4), (0, 9), 10),  # 4 / 10 < 1 / 1: the heavy but busy endpoint loses most picks
        ((1, 4), (0, 3), 11),  # 4 / 4 == 1 / 1: even
        ((1, 2, 3), (2, 0, 5), 12),
    ],
)
def test_least_request_weighted_by_weight_over_active(weights, active, seed):
    b = balancer(eps(*weights), "LEAST_REQUEST", seed=seed)
    for i, n in enumerate(active):
        for _ in range(n):
            b.on_start(i)
    n = 20000
    counts = Counter(picks(b, n))
    dynamic = [w / (a + 1) for w, a in zip(weights, active)]
    for i, d in enumerate(dynamic):
        assert counts[i] / n == pytest.approx(d / sum(dynamic), abs=0.02)


def test_least_request_weighted_busy_heavy_endpoint_gets_little():
    b = balancer(eps(1, 4), "LEAST_REQUEST", seed=3)
    for _ in range(99):
        b.on_start(1)  # 4 / 100 against 1 / 1
    assert Counter(picks(b, 2000))[1] < 0.1 * 2000


def test_bookkeeping_start_finish_cancel():
    b = balancer(eps(1, 1), "LEAST_REQUEST")
    b.on_start(0)
    b.on_start(0)
    b.on_start(1)
    assert [s.active for s in b.states] == [2, 1]
    b.on_cancel(0)
    assert [s.active for s in b.states] == [1, 1]
    assert b.states[0].total == 0  # a cancelled try is no verdict
    b.on_finish(0, 200, 0.0)
    assert [s.active for s in b.states] == [0, 1]
    assert b.states[0].total == 1
    b.on_cancel(0)
    b.on_finish(0, 200, 0.0)
    assert b.states[0].active == 0  # never below zero


def test_cancel_is_not_an_outlier_failure():
    b = balancer(eps(1, 1), outlier=outlier(consecutive_5xx=1))
    b.on_start(0)
    b.on_cancel(0)
    assert b.states[0].consecutive_5xx == 0
    assert b.ejected_count(0.0) == 0


# ---------------------------------------------------------------------------------------------------
# CONSISTENT_HASH


def test_consistent_hash_same_key_same_endpoint():
    b = balancer(eps(1, 1, 1, 1), "CONSISTENT_HASH")
    for h in keys(200):
        first = b.choose(0.0, hash_value=h)
        assert all(b.choose(0.0, hash_value=h) == first for _ in range(3))
    # and the same in another balancer (another worker process builds the same ring)
    other = balancer(eps(1, 1, 1, 1), "CONSISTENT_HASH", seed=99)
    assert [b.choose(0.0, hash_value=h) for h in keys(500)] == [other.choose(0.0, hash_value=h) for h in keys(500)]


def test_consistent_hash_ring_size():
    assert len(balancer(eps(1, 1), "CONSISTENT_HASH")._ring) == MIN_RING_SIZE
    assert len(balancer(eps(*[1] * 10), "CONSISTENT_HASH")._ring) == 10 * RING_POINTS_PER_WEIGHT_UNIT
    assert len(balancer(eps(3, 5), "CONSISTENT_HASH")._ring) == 8 * RING_POINTS_PER_WEIGHT_UNIT


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 1, 2), (1, 3), (2, 1, 1, 4)])
def test_consistent_hash_distribution_follows_weights(weights):
    b = balancer(eps(*weights), "CONSISTENT_HASH")
    n = 20000
    counts = Counter(b.choose(0.0, hash_value=h) for h in keys(n))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert counts[i] / n == pytest.approx(w / total, rel=0.2)


def test_consistent_hash_wraps_around_the_ring():
    b = balancer(eps(1, 1, 1), "CONSISTENT_HASH")
    top = b.choose(0.0, hash_value=2**64 - 1)  # past the last point: the first point of the ring
    assert top == b._ring[0] == b.choose(0.0, hash_value=0)


def test_consistent_hash_removal_remaps_only_the_removed_endpoints_keys():
    endpoints = eps(*[1] * 8)
    before = balancer(endpoints, "CONSISTENT_HASH")
    after = balancer(endpoints[:3] + endpoints[4:], "CONSISTENT_HASH")
    moved_from_removed = moved_other = 0
    for h in keys(10000):
        old = endpoints[before.choose(0.0, hash_value=h)]
        new = after.states[after.choose(0.0, hash_value=h)].endpoint
        if old == endpoints[3]:
            moved_from_removed += 1
            assert new != old
        elif new != old:
            moved_other += 1
    assert moved_other == 0  # the ring keeps RING_POINTS_PER_WEIGHT_UNIT per unit: nothing else moves
    assert moved_from_removed > 0


def test_consistent_hash_removal_small_cluster_mostly_stable():
    # Below MIN_RING_SIZE / RING_POINTS_PER_WEIGHT_UNIT weight units the ring is scaled up to MIN_RING_SIZE
    # points (as Envoy's ring hash does), so a removal adds points to the others and moves a few more keys.
    endpoints = eps(1, 1, 1)
    before = balancer(endpoints, "CONSISTENT_HASH")
    after = balancer(endpoints[1:], "CONSISTENT_HASH")
    stayed = moved = 0
    for h in keys(10000):
        old = before.choose(0.0, hash_value=h)
        if old == 0:
            continue
        if after.choose(0.0, hash_value=h) + 1 == old:
            stayed += 1
        else:
            moved += 1
    assert moved < 0.25 * (stayed + moved)


def test_consistent_hash_skips_ejected_and_excluded_endpoints():
    b = balancer(eps(1, 1, 1), "CONSISTENT_HASH", outlier=outlier())
    hashes = keys(300)
    home = {h: b.choose(0.0, hash_value=h) for h in hashes}
    for h in hashes:
        alt = b.choose(0.0, hash_value=h, exclude=[home[h]])
        assert alt != home[h]
        assert alt == b.choose(0.0, hash_value=h, exclude=[home[h]])  # the next one on the ring, every time
    fail(b, 1, [500] * 3, now=0.0)
    for h in hashes:
        chosen = b.choose(1.0, hash_value=h)
        assert chosen != 1
        if home[h] != 1:
            assert chosen == home[h]  # keys of healthy endpoints do not move
    assert {b.choose(20.0, hash_value=h) for h in hashes if home[h] == 1} == {1}  # back after the ejection


# ---------------------------------------------------------------------------------------------------
# exclude (retryIgnorePreviousHosts)


@pytest.mark.parametrize("policy", POLICIES)
def test_exclude_prefers_untried(policy):
    b = balancer(eps(1, 1, 1), policy)
    assert set(picks(b, 30, exclude=[0, 1])) == {2}
    assert set(picks(b, 30, exclude=[2])) <= {0, 1}
    assert {b.choose(0.0, hash_value=h, exclude=[0, 2]) for h in keys(50)} == {1}


@pytest.mark.parametrize("policy", POLICIES)
def test_exclude_falls_back_when_all_tried(policy):
    b = balancer(eps(1, 1, 1), policy)
    chosen = picks(b, 30, exclude=[0, 1, 2])
    assert None not in chosen
    assert set(chosen) <= {0, 1, 2}


@pytest.mark.parametrize("policy", POLICIES)
def test_exclude_and_ejection(policy):
    b = balancer(eps(1, 1, 1), policy, outlier=outlier())
    fail(b, 2, [503] * 3)
    assert set(picks(b, 30, now=1.0, exclude=[0])) == {1}
    assert set(picks(b, 30, now=1.0, exclude=[0, 1])) <= {0, 1}  # all healthy tried: choose again, not 2


def test_weighted_round_robin_with_exclude():
    b = balancer(eps(5, 3, 2))
    assert Counter(picks(b, 500, exclude=[0])) == {1: 300, 2: 200}


# ---------------------------------------------------------------------------------------------------
# Outlier detection

# (id, policy kwargs, statuses sent to one endpoint, ejected afterwards)
OUTLIER_CASES = [
    ("3x500", {}, [500, 500, 500], True),
    ("2x500", {}, [500, 500], False),
    ("connect-failures", {}, [0, 0, 0], True),
    ("mixed-5xx", {}, [503, 0, 599], True),
    ("success-resets", {}, [500, 500, 200, 500, 500], False),
    ("4xx-resets", {}, [500, 500, 404, 500, 500], False),
    ("reset-then-3", {}, [500, 500, 200, 500, 500, 500], True),
    ("gw-off-by-default", {"consecutive_5xx": 0}, [502] * 10, False),
    ("gw-2", {"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, [502, 503], True),
    ("gw-connect-failure", {"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, [0, 504], True),
    ("gw-ignores-500", {"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, [500, 500, 500, 500], False),
    ("gw-500-resets", {"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, [502, 500, 502], False),
    ("gw-200-resets", {"consecutive_5xx": 0, "consecutive_gateway_errors": 2}, [504, 200, 504], False),
    ("both-gw-first", {"consecutive_gateway_errors": 2}, [500, 502, 503], True),
    ("both-5xx-first", {"consecutive_gateway_errors": 3}, [502, 500, 503], True),
    ("error-codes-only-listed", {"error_codes": (500,)}, [503, 503, 503], False),
    ("error-codes-listed", {"error_codes": (500,)}, [500, 500, 500], True),
    ("error-codes-connect-failure", {"error_codes": (500,)}, [0, 0, 0], True),
    ("error-codes-unlisted-resets", {"error_codes": (500,)}, [500, 500, 503, 500], False),
]


@pytest.mark.parametrize(("kw", "statuses", "ejected"), [c[1:] for c in OUTLIER_CASES],
                         ids=[c[0] for c in OUTLIER_CASES])
def test_outlier_trips(kw, statuses, ejected):
    b = balancer(eps(1, 1, 1), outlier=outlier(**kw))
    fail(b, 0, statuses, now=0.0)
    assert b.ejected_count(0.0) == (1 if ejected else 0)
    assert b.ejections_total == (1 if ejected else 0)
    assert (0 in picks(b, 30, now=0.0)) is not ejected


def test_ejects_on_the_nth_failure_exactly():
    b = balancer(eps(1, 1), outlier=outlier(consecutive_5xx=5))
    for n in range(1, 5):
        fail(b, 0, [500], now=float(n))
        assert b.ejected_count(float(n)) == 0
    fail(b, 0, [500], now=5.0)
    assert b.states[0].ejected_until == 15.0


def test_no_outlier_policy_never_ejects():
    b = balancer(eps(1, 1))
    fail(b, 0, [500] * 50)
    assert set(picks(b, 10)) == {0, 1}
    assert b.ejections_total == 0


def test_ejection_time_grows_with_times_ejected():
    b = balancer(eps(1, 1, 1), outlier=outlier(base_ejection_time_s=10.0))
    fail(b, 0, [500] * 3, now=100.0)
    assert b.states[0].ejected_until == 110.0
    for now in (100.0, 105.0, 109.999):
        assert 0 not in picks(b, 30, now=now)
        assert b.ejected_count(now) == 1
    assert 0 in picks(b, 3, now=110.0)  # exactly when its time is up
    assert b.ejected_count(110.0) == 0

    fail(b, 0, [500] * 3, now=200.0)
    assert b.states[0].ejected_until == 220.0  # 2 × base
    assert 0 not in picks(b, 30, now=219.0)
    assert 0 in picks(b, 3, now=220.0)

    fail(b, 0, [500] * 3, now=300.0)
    assert b.states[0].ejected_until == 330.0  # 3 × base
    assert b.states[0].times_ejected == 3
    assert b.ejections_total == 3


def test_failures_while_ejected_do_not_extend_the_ejection():
    b = balancer(eps(1, 1), outlier=outlier())
    for _ in range(3):
        b.on_start(0)
    for _ in range(3):
        b.on_finish(0, 500, 0.0)
    fail(b, 0, [500] * 6, now=5.0)  # late answers of requests already in flight
    assert b.states[0].ejected_until == 10.0
    assert b.states[0].times_ejected == 1
    assert b.ejections_total == 1


def test_ejection_resets_the_counters():
    b = balancer(eps(1, 1), outlier=outlier())
    fail(b, 0, [500] * 3, now=0.0)
    assert b.states[0].consecutive_5xx == 0
    fail(b, 0, [500] * 2, now=10.0)  # back, two new failures are not enough
    assert b.ejected_count(10.0) == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_ejected_endpoint_never_chosen(policy):
    b = balancer(eps(1, 1, 1), policy, outlier=outlier())
    fail(b, 1, [503] * 3, now=0.0)
    assert 1 not in picks(b, 100, now=9.0)
    assert {b.choose(9.0, hash_value=h) for h in keys(100)} <= {0, 2}


@pytest.mark.parametrize(
    ("n_endpoints", "max_percent", "allowed"),
    [
        (10, 10, 1),
        (10, 20, 2),
        (10, 25, 2),
        (10, 100, 10),
        (4, 50, 2),
        (3, 50, 1),  # a second would be 66 % > 50 %
        (3, 10, 1),  # at least one may always be ejected
        (2, 0, 1),
        (1, 10, 1),
    ],
)
def test_max_ejection_percent(n_endpoints, max_percent, allowed):
    b = balancer(eps(*[1] * n_endpoints), outlier=outlier(max_ejection_percent=max_percent))
    for i in range(n_endpoints):
        fail(b, i, [500] * 3, now=0.0)
    assert b.ejected_count(0.0) == allowed
    assert b.ejections_total == allowed
    assert [s.ejected_until > 0.0 for s in b.states] == [True] * allowed + [False] * (n_endpoints - allowed)


def test_max_ejection_percent_frees_up_when_time_passes():
    b = balancer(eps(*[1] * 10), outlier=outlier(max_ejection_percent=10))
    fail(b, 0, [500] * 3, now=0.0)
    fail(b, 1, [500] * 3, now=1.0)
    assert b.ejected_count(1.0) == 1
    fail(b, 1, [500] * 3, now=10.0)  # endpoint 0 is back at 10.0, so endpoint 1 may go
    assert b.ejected_count(10.0) == 1
    assert b.states[1].ejected_until == 20.0
    assert b.ejections_total == 2


def test_single_endpoint_ejected_answers_none():
    b = balancer(eps(1), outlier=outlier())
    fail(b, 0, [0] * 3, now=0.0)
    assert b.choose(5.0) is None
    assert b.choose(5.0, exclude=[0]) is None
    assert b.choose(10.0) == 0


@pytest.mark.parametrize(
    ("ejected", "min_health", "expected"),
    [
        (3, 50, {0, 1, 2, 3}),  # 25 % healthy < 50 %: panic, everyone gets traffic
        (2, 50, {2, 3}),  # 50 % is not below 50 %
        (1, 80, {0, 1, 2, 3}),  # 75 % < 80 %
        (1, 75, {1, 2, 3}),
        (3, 0, {3}),  # 0 = panic mode off
        (4, 0, {None}),
        (4, 1, {0, 1, 2, 3}),
    ],
)
def test_min_health_percent_panic(ejected, min_health, expected):
    b = balancer(eps(1, 1, 1, 1), outlier=outlier(min_health_percent=min_health))
    for i in range(ejected):
        fail(b, i, [500] * 3, now=0.0)
    assert b.ejected_count(1.0) == ejected
    assert set(picks(b, 40, now=1.0)) == expected


# ---------------------------------------------------------------------------------------------------
# State carried over to the next table generation


def test_previous_state_carried_over():
    a, b_, c, d = eps(1, 1, 1, 1)
    old = balancer([a, b_, c], outlier=outlier())
    fail(old, 0, [500] * 3, now=0.0)  # a ejected until 10
    old.on_start(1)
    old.on_start(1)
    fail(old, 2, [500, 500], now=0.0)  # c one failure away from ejection

    new = balancer([d, c, Endpoint(address=a.address, port=a.port, weight=5), b_], outlier=outlier(), previous=old)
    assert new.ejections_total == 1
    by_addr = {s.endpoint.address: s for s in new.states}
    assert by_addr[a.address].ejected_until == 10.0
    assert by_addr[a.address].times_ejected == 1
    assert by_addr[a.address].weight == 5  # the new generation's weight
    assert by_addr[b_.address].active == 2
    assert by_addr[c.address].consecutive_5xx == 2
    assert by_addr[d.address].active == 0 and by_addr[d.address].ejected_until == 0.0

    assert 2 not in picks(new, 50, now=5.0)  # a is index 2 now, and still ejected
    fail(new, 1, [500], now=5.0)  # c's third failure
    assert new.states[1].ejected_until == 15.0
    assert new.ejections_total == 2

    fail(new, 2, [500] * 3, now=20.0)  # a again: its second ejection, 2 × base
    assert new.states[2].ejected_until == 40.0


def test_previous_matches_address_and_port():
    old = balancer([Endpoint(address="10.0.0.1", port=80)], outlier=outlier())
    fail(old, 0, [500] * 3)
    new = balancer([Endpoint(address="10.0.0.1", port=81), Endpoint(address="10.0.0.2", port=80)],
                   outlier=outlier(), previous=old)
    assert new.ejected_count(1.0) == 0
    assert new.ejections_total == 1  # the counter is the cluster's, not an endpoint's


def test_previous_active_finishes_on_new_generation():
    old = balancer(eps(1, 1), "LEAST_REQUEST")
    old.on_start(0)
    new = balancer(eps(1, 1), "LEAST_REQUEST", previous=old)
    assert set(picks(new, 20)) == {1}
    new.on_finish(0, 200, 0.0)  # the request that started under the old table ends under the new one
    assert new.states[0].active == 0


# ---------------------------------------------------------------------------------------------------------
# Weighted destinations (a route's or a TCP route's clusters): cumulative_weights + pick_weighted


@pytest.mark.parametrize(
    "weights, expected_share",
    [
        ((80, 20), (0.8, 0.2)),
        ((1, 1, 2), (0.25, 0.25, 0.5)),
        ((5,), (1.0,)),
        ((0,), (1.0,)),  # a lone destination takes everything whatever its weight
        ((0, 3), (0.0, 1.0)),  # a zero weight beside others gets nothing
        ((3, 0, 1), (0.75, 0.0, 0.25)),
    ],
)
def test_pick_weighted_shares(weights, expected_share):
    cumulative = cumulative_weights(weights)
    rng = random.Random(7)
    n = 20_000
    counts = Counter(pick_weighted(cumulative, rng) for _ in range(n))
    for i, share in enumerate(expected_share):
        assert abs(counts[i] / n - share) < 0.02


@pytest.mark.parametrize(
    "weights, cumulative",
    [((), ()), ((5,), (5,)), ((80, 20), (80, 100)), ((-1, 2), (0, 2)), ((0, 0), (0, 0))],
)
def test_cumulative_weights(weights, cumulative):
    assert cumulative_weights(weights) == cumulative


def test_pick_weighted_edges():
    rng = random.Random(1)
    assert pick_weighted((), rng) == 0  # nothing to pick from: the caller checks for destinations first
    assert pick_weighted((0, 0), rng) == 0  # all zero (the compiler allows it for one destination only)

