# Read readiness for plain sockets without a trio registration per wait (issue 13, item 2).
#
# Why: trio.lowlevel.wait_readable registers the fd one-shot, so every wait costs an epoll_ctl and trio's
# registration bookkeeping (~2 µs per wait, two waits per proxied request: the client's next request and the
# upstream's response). Here each socket is registered once, edge-triggered, in one private epoll set per trio run,
# and one system task waits on the set's own fd (the parker's pattern, workers/parking.py): under load one wake-up
# of that task serves every socket that became readable meanwhile.
#
# Rules:
# - Edge-triggered means an event is reported once per arrival of data (or EOF, reset, error), never again while it
#   sits unread. So a socket has a `ready` flag: set when an event arrives while nobody waits; a wait with the flag
#   set returns at once. The reader clears it whenever a read shows the socket drained (a would-block, or fewer
#   bytes than asked for: a stream socket returns everything it holds up to the size asked) and sets it when a read
#   filled the whole buffer (more may be queued, and no new event will say so). A stale flag costs one failed read,
#   never a lost wake-up.
# - One waiting task per socket (the connection's reader). Cancelling the wait just forgets the waiter.
# - A socket leaves the set before it is closed (forget): a task waiting on it wakes with ClosedResourceError, as
#   trio.lowlevel.notify_closing does for trio's own waits. A socket closed otherwise leaves the kernel's set with
#   its file; its entry here is replaced when the number is reused (the set never holds a socket object).
# - A parked connection leaves the set too (the parker watches it; an idle connection keeps no registration here)
#   and is registered again by its next wait.
from __future__ import annotations

import select
import socket

import outcome
import trio

MAX_EVENTS = 512  # events taken per wake-up; more wait for the next pass (the set stays readable)
_WATCH = select.EPOLLIN | select.EPOLLET  # EOF and resets make a socket readable too (RDHUP stays the parker's mark)


class ReadState:
    """One socket's registration: its waiting task and whether data may be there unannounced."""

    __slots__ = ("fd", "task", "ready", "reactor")

    def __init__(self, sock: socket.socket, reactor: "Readiness"):
        self.fd = sock.fileno()  # not the socket itself: a transport dropped without close() must still be freed
        self.task = None
        self.ready = False
        self.reactor = reactor

    def _abort(self, _raise_cancel) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(self) -> None:
        """Until the socket is readable (at once when an event came while nobody waited). Not a checkpoint when the
        flag was set: the caller reads next and counts it for fairness."""
        if self.ready:
            self.ready = False
            return
        if self.task is not None:
            raise trio.BusyResourceError("another task is already reading this socket")
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def forget(self) -> None:
        """Leave the set (before the socket closes); a waiting task wakes with ClosedResourceError."""
        reactor = self.reactor
        if reactor.states.get(self.fd) is self:
            del reactor.states[self.fd]
            try:
                reactor.epoll.unregister(self.fd)
            except (OSError, ValueError):  # already closed behind our back: the kernel dropped it with the file
                pass
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(trio.ClosedResourceError("transport closed")))


class Readiness:
    """The edge-triggered epoll set of one trio run and the system task that wakes its readers."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.states: dict[int, ReadState] = {}
        trio.lowlevel.spawn_system_task(self._serve, name="edge readiness")

    def watch(self, sock: socket.socket) -> ReadState:
        state = ReadState(sock, self)
        old = self.states.get(state.fd)
        if old is not None:  # a socket closed without forget() left its number behind
            old.forget()
        try:
            self.epoll.register(state.fd, _WATCH)
        except FileExistsError:
            self.epoll.modify(state.fd, _WATCH)
        self.states[state.fd] = state
        return state

    async def _serve(self) -> None:
        epoll = self.epoll
        states = self.states
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _events in epoll.poll(0, MAX_EVENTS):
                    state = states.get(fd)
                    if state is None:
                        continue
                    task = state.task
                    if task is not None:
                        state.task = None
                        reschedule(task)
                    else:
                        state.ready = True
        finally:
            for state in list(states.values()):
                state.forget()
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()


_READINESS: trio.lowlevel.RunVar = trio.lowlevel.RunVar("edge_readiness")


def watch(sock: socket.socket) -> ReadState:
    """Register `sock` in this trio run's set (created with its task on first use)."""
    try:
        readiness = _READINESS.get()
    except LookupError:
        readiness = Readiness()
        _READINESS.set(readiness)
    return readiness.watch(sock)
