# Timeouts that shrink under connection pressure: Envoy's overload manager action `reduce_timeouts` for
# HTTP_DOWNSTREAM_CONNECTION_IDLE, with the thresholds of Envoy's overload-manager documentation, driven by how
# full the worker's connection table is (Envoy's downstream-connections resource monitor). Pure.
#
# Rules:
# - pressure = open connections / the worker's cap (--max-connections-per-worker).
# - Below SCALING_THRESHOLD the configured idle timeout holds; from there it falls linearly, reaching
#   MIN_IDLE_TIMEOUT_S at SATURATION_THRESHOLD and staying there above it (Envoy's scaled trigger:
#   min + (max − min) × (1 − (pressure − scaling) / (saturation − scaling))).
# - A timeout already shorter than the minimum is never raised; 0 (off) stays off.
# So idle keep-alive and silent new connections cannot hold the table full: at saturation they are closed
# after about MIN_IDLE_TIMEOUT_S (plus the sweep interval), and new clients get their slots.
from __future__ import annotations

SCALING_THRESHOLD = 0.85
SATURATION_THRESHOLD = 0.95
MIN_IDLE_TIMEOUT_S = 2.0  # min_timeout of the reduce_timeouts example in Envoy's overload-manager docs


def scaled_idle_timeout(timeout_s: float, connections: int, limit: int) -> float:
    """The idle timeout to apply now (see the module comment)."""
    if timeout_s <= 0 or limit <= 0:
        return timeout_s
    pressure = connections / limit
    if pressure < SCALING_THRESHOLD or timeout_s <= MIN_IDLE_TIMEOUT_S:
        return timeout_s
    value = min(1.0, (pressure - SCALING_THRESHOLD) / (SATURATION_THRESHOLD - SCALING_THRESHOLD))
    return MIN_IDLE_TIMEOUT_S + (timeout_s - MIN_IDLE_TIMEOUT_S) * (1.0 - value)
