# Reload requests (file changes, SIGHUP, POST /reload) and their outcomes.
#
# Rules:
# - Requests that arrive while a reload runs coalesce into one more reload; its reasons are the distinct reasons
#   of the requests it covers, in the order they first came.
# - Each request gets a ticket; finish(outcome) after a reload answers every ticket that reload took, so
#   POST /reload can wait for the outcome of the reload that covers its request (wait_outcome). The last
#   RELOAD_OUTCOMES_KEPT outcomes are kept: a waiter further behind than that would wait for the next one.
from __future__ import annotations

import trio

RELOAD_OUTCOMES_KEPT = 32


class ReloadRequests:
    """Reload requests that arrive while a reload runs coalesce into one more reload.

    Each request gets a ticket; finish(outcome) after a reload answers every ticket that reload took, so
    POST /reload can wait for the outcome of the reload that covers its request (wait_outcome)."""

    def __init__(self) -> None:
        self._reasons: list[str] = []
        self._event = trio.Event()
        self._requested = 0  # tickets handed out
        self._taken = 0  # tickets covered by the reload that runs now (or ran last)
        self._outcomes: list[tuple[int, str]] = []  # (last ticket covered, outcome), oldest first
        self._finished = trio.Event()

    def request(self, reason: str) -> int:
        if reason not in self._reasons:
            self._reasons.append(reason)
        self._requested += 1
        self._event.set()
        return self._requested

    async def wait(self) -> list[str]:
        await self._event.wait()
        self._event = trio.Event()
        reasons, self._reasons = self._reasons, []
        self._taken = self._requested
        return reasons

    def finish(self, outcome: str) -> None:
        self._outcomes.append((self._taken, outcome))
        del self._outcomes[:-RELOAD_OUTCOMES_KEPT]
        self._finished.set()
        self._finished = trio.Event()

    async def wait_outcome(self, ticket: int) -> str:
        while True:
            for covered, outcome in self._outcomes:
                if covered >= ticket:
                    return outcome
            await self._finished.wait()
