# systemd's notify protocol (sd_notify(3)) and watchdog, as the supervisor speaks them.
#
# Rules:
# - NOTIFY_SOCKET unset: every notification is a no-op. Set to something other than an AF_UNIX address (vsock:…):
#   one log line, then no-ops. "@name" is an abstract socket.
# - A notification is one datagram of "KEY=value" lines, sent without blocking; a failure is logged once (the
#   first time) and never raised: systemd being away must not stop the gateway.
# - The watchdog is ours only when WATCHDOG_USEC is set and non-zero and WATCHDOG_PID is unset or our pid; it is
#   fed every WATCHDOG_USEC/2, from the supervisor's loop (a stuck loop stops feeding it).
# - The supervisor keeps these variables from the workers (edge/supervisor.py SUPERVISOR_ONLY_ENV): systemd would
#   take their messages for ours.
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from edge.log import log


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of systemd's WATCHDOG_USEC when the watchdog is meant for this process, else None."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1e6


def notify_address(value: str) -> str | None:
    """The AF_UNIX address of NOTIFY_SOCKET ("@name" is abstract); None when it is not an AF_UNIX socket."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock:… and anything else


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """sd_notify(3) over a datagram socket; does nothing when NOTIFY_SOCKET is unset."""

    def __init__(self, address: str | None, *, log_line: Callable[[str], None] = log):
        self._address = address
        self._log = log_line
        self._sock: socket.socket | None = None
        self._warned = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, *, log_line: Callable[[str], None] = log):
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None, log_line=log_line)
        address = notify_address(value)
        if address is None:
            log_line(f"NOTIFY_SOCKET={value!r} is not an AF_UNIX socket; systemd notifications are off")
        return cls(address, log_line=log_line)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of "KEY=value" lines; False (and one log line ever) when it could not be sent."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                self._log(f"systemd notification to {self._address!r} failed: {exc.strerror or exc}")
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
