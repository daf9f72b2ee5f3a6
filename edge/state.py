# What the supervisor knows of itself and its workers: SupervisorState, which the status, metrics and admin
# ports read, the records of its worker slots, and the rules on them (readiness, restart backoff, crash loop).
#
# Rules:
# - Plain values and pure rules: no I/O, no clock of its own (times are passed in; worker times are on trio's
#   clock, wall-clock times are time.time()). edge/supervisor.py is the only writer; the ports only read.
# - Readiness: not before every slot's worker serves the current generation; once reached it holds across
#   reloads and worker restarts (as Istio's pilot-agent does) until the drain starts.
# - Restart backoff: RESTART_BACKOFF_MIN_S, doubling while a slot's worker keeps dying within STABLE_RUN_S of its
#   start, capped at RESTART_BACKOFF_MAX_S. A slot is crash looping while its backoff is above the minimum and
#   its current worker (if any) has not yet lived STABLE_RUN_S.
from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge.table import RoutingTable

RESTART_BACKOFF_MIN_S = 0.1
RESTART_BACKOFF_MAX_S = 5.0
STABLE_RUN_S = 5.0  # a worker that lived this long before dying restarts the backoff from the minimum

# Worker states as SupervisorState shows them.
STARTING = "starting"
SERVING = "serving"
DRAINING = "draining"


def restart_delay(previous_delay_s: float, lifetime_s: float) -> float:
    """How long to wait before restarting a slot whose worker lived lifetime_s (crash-loop backoff)."""
    if lifetime_s >= STABLE_RUN_S or previous_delay_s <= 0:
        return RESTART_BACKOFF_MIN_S
    return min(previous_delay_s * 2, RESTART_BACKOFF_MAX_S)


@dataclass
class WorkerRecord:
    slot: int
    pid: int
    started_at: float  # trio clock
    state: str = STARTING
    serving_generation: int = 0
    keys: tuple[str, ...] = ()
    last_pong_at: float = 0.0


@dataclass
class SlotRecord:
    slot: int
    worker: WorkerRecord | None = None
    restarts: int = 0
    backoff_s: float = 0.0
    last_exit: str = ""


@dataclass
class ReloadError:
    lines: tuple[str, ...]  # `file:line: message`
    at: float  # wall-clock time.time()
    generation: int  # the generation that stayed served


@dataclass
class SupervisorState:
    """What the status, metrics and admin ports read."""

    config_paths: tuple[str, ...]
    workers: int
    generation: int = 0
    table: RoutingTable | None = None
    source_files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    slots: list[SlotRecord] = field(default_factory=list)
    draining: bool = False
    ever_ready: bool = False
    reloads_total: int = 0  # attempts, failed ones included
    reload_failures_total: int = 0
    last_reload_error: ReloadError | None = None  # the latest failure; kept after later successes
    last_reload_ok: bool = True
    last_reload_success_at: float = 0.0  # wall clock of the last publish (the first one included)
    started_at: float = field(default_factory=time.time)

    @property
    def restarts_total(self) -> int:
        return sum(slot.restarts for slot in self.slots)

    def serving_count(self, generation: int) -> int:
        return sum(1 for s in self.slots if s.worker is not None and s.worker.serving_generation >= generation)

    def all_serving(self, generation: int) -> bool:
        return generation > 0 and self.serving_count(generation) == len(self.slots)

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if self.ever_ready:
            return True, ""
        if self.generation == 0:
            return False, "starting: no table published yet"
        return False, (
            f"starting: {self.serving_count(self.generation)} of {len(self.slots)} workers "
            f"serve generation {self.generation}"
        )


def crash_looping(slot: SlotRecord, now: float) -> bool:
    """Backing off, and the current worker (if any) has not yet lived long enough to reset the backoff; `now`
    on the clock of WorkerRecord.started_at."""
    if slot.backoff_s <= RESTART_BACKOFF_MIN_S:
        return False
    return slot.worker is None or now - slot.worker.started_at < STABLE_RUN_S
