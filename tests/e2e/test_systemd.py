# End to end: systemd's notify protocol (sd_notify(3)) spoken by the real `edge run` with real workers, over a
# real AF_UNIX datagram socket given as NOTIFY_SOCKET, the way systemd runs a Type=notify service. The
# socket has SO_PASSCRED, so every datagram carries its sender's pid: with NotifyAccess=main (deploy/
# edge.service) systemd would ignore anything not from the supervisor.
from __future__ import annotations

import signal
import socket
import struct
import threading
import time

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

WAIT_S = 15.0
WATCHDOG_USEC = 300_000

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - route: [{destination: {host: app.local}}]
    headers: {response: {set: {x-version: "VERSION"}}}
"""


class NotifyListener:
    """Collects (monotonic time, sender pid, {key: value}) for every datagram, in a thread."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, int, dict[str, str]]] = []
        self.on_ready: list = []  # callables run in the listener thread the moment READY=1 arrives
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(4096, size)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            received_at = time.monotonic()
            if fields.get("READY") == "1":
                # Before the message is visible to wait(): a test that waited for READY sees what its
                # callbacks found at that moment, never a callback still running.
                for callback in self.on_ready:
                    callback()
            self.messages.append((received_at, pid, fields))


    def __enter__(self) -> "NotifyListener":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def with_key(self, key: str, value: str | None = None) -> list[tuple[float, int, dict[str, str]]]:
        return [m for m in self.messages if key in m[2] and (value is None or m[2][key] == value)]

    def wait(self, key: str, value: str | None = None, count: int = 1, timeout_s: float = WAIT_S):
        deadline = time.monotonic() + timeout_s
        while len(self.with_key(key, value)) < count:
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {count} × {key}={value} within {timeout_s} s; got {[m[2] for m in self.messages]}")
            time.sleep(0.02)
        return self.with_key(key, value)


def test_notify_protocol_with_real_workers(tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    with SampleBackends(tmp_path, http=["a"]) as backends, NotifyListener(notify_path) as systemd:
        config = {"app.yaml": CONFIG.replace("VERSION", "v1"), "se.yaml": backends.service_entry("app.local")}
        edge = EdgeProcess(
            tmp_path, config, gateway_ports=(80,), wait_ready=False,
            env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        )  # fmt: skip
        served_at_ready: list[object] = []

        def probe() -> None:  # READY=1 must mean "every worker serves": ask right away, from the listener thread
            if not served_at_ready:
                try:
                    status, _, headers = http_get(edge.port(80), "/", host="app.example.com", timeout_s=5)
                    served_at_ready.append((status, headers.get("x-version")))
                except OSError as exc:
                    served_at_ready.append(repr(exc))

        systemd.on_ready.append(probe)
        with edge:
            systemd.wait("READY", "1")
            assert served_at_ready == [(200, "v1")]
            # Watchdog: every WATCHDOG_USEC / 2.
            watchdogs = systemd.wait("WATCHDOG", "1", count=4)
            gaps = [b[0] - a[0] for a, b in zip(watchdogs, watchdogs[1:])]
            assert all(gap < WATCHDOG_USEC / 1e6 for gap in gaps), gaps

            # Reload: RELOADING=1 with MONOTONIC_USEC of the moment, then READY=1 once it is served.
            before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            edge.write_config("app.yaml", CONFIG.replace("VERSION", "v2"))
            outcome = edge.reload()  # the watcher may have published it first: then SIGHUP finds it unchanged
            assert "published" in outcome or "unchanged" in outcome, outcome
            [reloading, *_] = systemd.wait("RELOADING", "1")
            usec = int(reloading[2]["MONOTONIC_USEC"])
            assert before_usec <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            deadline = time.monotonic() + WAIT_S
            while not [m for m in systemd.with_key("READY", "1") if m[0] >= reloading[0]]:
                assert time.monotonic() < deadline, "no READY=1 after RELOADING=1"
                time.sleep(0.02)
            assert http_get(edge.port(80), "/", host="app.example.com")[2]["x-version"] == "v2"

            # Drain: STOPPING=1 at once.
            edge.send_signal(signal.SIGTERM)
            systemd.wait("STOPPING", "1")
            assert edge.wait(WAIT_S) == 0
        senders = {pid for _, pid, _ in systemd.messages}
        assert senders == {edge.pid}  # only the supervisor speaks (NotifyAccess=main)
        order = [k for _, _, fields in systemd.messages for k in fields if k in ("READY", "RELOADING", "STOPPING")]
        assert order[0] == "READY" and order[-1] == "STOPPING"
        assert order.index("RELOADING") < len(order) - 1 - order[::-1].index("READY")
