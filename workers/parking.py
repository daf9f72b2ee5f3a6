# Parked keep-alive connections: an idle HTTP/1 connection held without a task of its own.
#
# Why: a trio task per idle connection costs ~6 KB of Python heap (the task, its cancel scope, the coroutine
# frames waiting in receive); a parked connection is only its downstream object (socket, transport, where it came
# from, which listener and filter chain), ~0.6 KB with the codec dropped (it is fresh between requests anyway).
#
# Rules:
# - Only a connection between requests with nothing buffered is parked (the codec's cycle is fresh, a TLS session
#   holds no plaintext and no record): the next thing on its socket is the next request, EOF or a reset.
# - One private epoll set per worker watches every parked socket (EPOLLIN | EPOLLRDHUP, one-shot); one task waits
#   on the set's own fd with trio.lowlevel.wait_readable (trio allows one waiter per fd and direction, and the set
#   is one fd). A socket that becomes ready leaves the set at once and is handed to `resume` (a fresh connection
#   task): new bytes, EOF and resets all wake it, so a client that leaves while parked is seen at once.
# - The idle timeout (its overload-scaled value included) and drain reach parked connections through sweep(),
#   which closes them here, without a task. Parking is not closing: the worker's connection count keeps a parked
#   connection (on_closed is called only when the parker closes one).
# - `since` is when the connection went idle (a connection parked by the idle sweep has been idle a while), so a
#   sweep looks at every parked connection: ~0.1 µs each, once per IDLE_SWEEP_INTERVAL_S.
from __future__ import annotations

import select
from typing import Callable

import trio

MAX_EVENTS = 512  # ready sockets taken per wake-up; more wait for the next pass (the set stays readable)
_WATCH = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT


class Parker:
    """The worker's parked connections. Each item has `since` (time.monotonic() when parked), `raw_socket()`
    and a transport with `close_nowait()`."""

    def __init__(self, on_closed: Callable[[], None]):
        self._on_closed = on_closed
        self._epoll: select.epoll | None = None  # created by serve(): a context that never serves opens nothing
        self._parked: dict[int, object] = {}  # fd -> item, in parking order
        self._resume: Callable[[object], None] | None = None

    def __len__(self) -> int:
        return len(self._parked)

    @property
    def serving(self) -> bool:
        return self._epoll is not None

    def park(self, item) -> bool:
        """Watch `item`'s socket; False when it cannot be watched (the caller closes the connection)."""
        epoll = self._epoll
        sock = item.raw_socket()
        if epoll is None or sock is None:
            return False
        fd = sock.fileno()
        try:
            epoll.register(fd, _WATCH)
        except OSError:  # closed under us, or the kernel's limit on watches
            return False
        self._parked[fd] = item
        return True

    def hand_over(self, item) -> None:
        """A connection about to be parked whose next bytes were already read: to `resume` at once."""
        self._resume(item)

    async def serve(self, resume: Callable[[object], None]) -> None:
        """Hand every parked connection whose socket becomes ready to `resume`, until cancelled."""
        self._resume = resume
        epoll = self._epoll = select.epoll()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _events in epoll.poll(0, MAX_EVENTS):
                    item = self._parked.pop(fd, None)
                    _unwatch(epoll, fd)
                    if item is not None:
                        resume(item)
        finally:
            self._epoll = None
            self.close_all()
            try:
                trio.lowlevel.notify_closing(epoll.fileno())
            except (RuntimeError, ValueError):
                pass
            epoll.close()

    def sweep(self, now: float, idle_timeout_s: float) -> int:
        """Close the parked connections idle for `idle_timeout_s` or more (0: all of them); returns how many."""
        due = [fd for fd, item in self._parked.items() if now - item.since >= idle_timeout_s]
        for fd in due:
            self._close(fd)
        return len(due)

    def close_all(self) -> None:
        for fd in list(self._parked):
            self._close(fd)

    def _close(self, fd: int) -> None:
        item = self._parked.pop(fd)
        if self._epoll is not None:
            _unwatch(self._epoll, fd)
        item.transport.close_nowait()
        self._on_closed()


def _unwatch(epoll: select.epoll, fd: int) -> None:
    try:
        epoll.unregister(fd)
    except OSError:  # already gone with its socket
        pass
