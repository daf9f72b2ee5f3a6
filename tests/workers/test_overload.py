"""workers/overload.py: idle timeouts under connection pressure (Envoy's reduce_timeouts), table-driven."""

from __future__ import annotations

import pytest

from workers.overload import MIN_IDLE_TIMEOUT_S, scaled_idle_timeout


@pytest.mark.parametrize(("timeout", "connections", "limit", "expected"), [
    (3600.0, 0, 100, 3600.0),
    (3600.0, 84, 100, 3600.0),  # below the scaling threshold (85 %)
    (3600.0, 85, 100, 3600.0),  # at it: nothing scaled yet
    (3600.0, 90, 100, MIN_IDLE_TIMEOUT_S + (3600.0 - MIN_IDLE_TIMEOUT_S) * 0.5),  # half way
    (3600.0, 95, 100, MIN_IDLE_TIMEOUT_S),  # saturation (95 %)
    (3600.0, 100, 100, MIN_IDLE_TIMEOUT_S),
    (3600.0, 250, 100, MIN_IDLE_TIMEOUT_S),
    (1.0, 100, 100, 1.0),  # already shorter than the minimum: never raised
    (0.0, 100, 100, 0.0),  # off stays off
    (60.0, 10, 0, 60.0),  # no limit known
])  # fmt: skip
def test_scaled_idle_timeout(timeout, connections, limit, expected):
    assert scaled_idle_timeout(timeout, connections, limit) == pytest.approx(expected)


def test_monotonic_in_pressure():
    values = [scaled_idle_timeout(3600.0, n, 1000) for n in range(0, 1001, 10)]
    assert values == sorted(values, reverse=True)
