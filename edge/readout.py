# What the metrics and admin ports read of a running supervisor besides SupervisorState: the stats segment summed
# over the slots, the status documents the workers publish, the SupervisorView the renderers take, and the live
# history of the admin page.
#
# Rules:
# - Read only: nothing here changes the supervisor. The supervisor creates the stats segment, sets `stats` and
#   closes it; with both ports off there is none, and every total is zero.
# - Counters are summed over every slot, gauges only over slots whose worker is alive (live_slots), so a dead
#   worker's connections do not linger while its slot keeps counting across restarts.
# - A worker's status document is shown only while that worker lives; one that does not decode is left out.
# - serve_live_samples keeps one LiveSample every LIVE_SAMPLE_INTERVAL_S for the admin page's live view.
from __future__ import annotations

import time

import msgspec
import trio

from edge.metrics import LiveHistory, SupervisorView, Totals, live_sample, sum_slots
from edge.state import SupervisorState, crash_looping
from edge.stats_shm import SlotSnapshot, StatsSegment

LIVE_SAMPLE_INTERVAL_S = 1.0  # the admin page's resolution


class Readout:
    def __init__(self, state: SupervisorState):
        self.state = state
        self.stats: StatsSegment | None = None  # set by the supervisor once it created the segment
        self.live = LiveHistory()
        self.jwks = None  # the supervisor's JwksFetcher (edge/jwks.py), set by it: statistics() is read, nothing else

    def jwks_statistics(self) -> dict:
        if self.jwks is None:
            return {"uris": {}, "fetches_total": 0, "failures_total": 0}
        return self.jwks.statistics()

    def stats_slots(self) -> list[SlotSnapshot]:
        return self.stats.read_all() if self.stats is not None else []

    def live_slots(self) -> list[int]:
        return [slot.slot for slot in self.state.slots if slot.worker is not None]

    def stats_totals(self) -> Totals:
        return sum_slots(self.stats_slots(), self.live_slots())

    def worker_reports(self) -> dict[int, dict]:
        """slot → the status document its live worker last published (edge/stats_shm.py status area)."""
        live = set(self.live_slots())
        reports = {}
        for snap in self.stats_slots():
            if snap.slot in live and snap.status:
                try:
                    reports[snap.slot] = msgspec.json.decode(snap.status)
                except msgspec.DecodeError:
                    continue
        return reports

    def supervisor_view(self) -> SupervisorView:
        state = self.state
        error = state.last_reload_error
        now = trio.current_time()  # the clock of WorkerRecord.started_at
        return SupervisorView(
            generation=state.generation,
            reloads_total=state.reloads_total,
            reload_failures_total=state.reload_failures_total,
            last_reload_ok=state.last_reload_ok,
            last_reload_success_at=state.last_reload_success_at,
            last_reload_failure_at=error.at if error is not None else 0.0,
            ready=state.readiness()[0],
            draining=state.draining,
            started_at=state.started_at,
            workers=state.workers,
            worker_states=tuple(
                (
                    slot.slot,
                    slot.worker.state if slot.worker is not None else "down",
                    slot.restarts,
                    slot.backoff_s,
                    slot.worker.pid if slot.worker is not None else 0,
                    crash_looping(slot, now),
                )
                for slot in state.slots
            ),
            cluster_domain=state.table.options.cluster_domain if state.table is not None else "cluster.local",
            jwks_sources=tuple(
                (uri, s["fetches"], s["failures"], s["last_success_at"], s["fetched"]) for uri, s in self.jwks_statistics()["uris"].items()
            ),
        )

    async def serve_live_samples(self) -> None:
        while True:
            self.live.add(live_sample(self.stats_totals(), time.time()))
            await trio.sleep(LIVE_SAMPLE_INTERVAL_S)
