# End to end: the gateway's life under traffic — a worker killed, a drain on SIGTERM, config changes while
# requests flow. Every load loop is bounded in count and time.
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
"""


def _vs(subset: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app}}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: app.local, subset: {subset}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: app}}
spec:
  host: app.local
  subsets:
  - {{name: a, labels: {{version: a}}}}
  - {{name: b, labels: {{version: b}}}}
"""


class Load:
    """A bounded client loop on fresh connections in a thread, recording (start time, status or error, instance).

    The start time, not the completion: a request routed just before a switch may finish just after it."""

    def __init__(self, port: int, path: str = "/", *, host: str = "app.example.com", max_requests: int = 20_000, max_seconds: float = 20.0):
        self.port = port
        self.path = path
        self.host = host
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.results: list[tuple[float, object, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and len(self.results) < self.max_requests and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                status, body, _ = http_get(self.port, self.path, host=self.host, timeout_s=5)
                instance = json.loads(body).get("instance", "") if status == 200 else ""
                self.results.append((started, status, instance))
            except (OSError, http.client.HTTPException) as exc:
                self.results.append((started, repr(exc), ""))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def failures(self) -> list:
        return [r for r in self.results if r[1] != 200]


@pytest.fixture
def backends(tmp_path):
    with SampleBackends(tmp_path, http=["a", "b"]) as b:
        yield b


def _config(backends, subset: str = "a") -> dict[str, str]:
    return {"gw.yaml": GATEWAY, "app.yaml": _vs(subset), "se.yaml": backends.service_entry("app.local")}


def test_sigkilled_worker_is_replaced_with_its_sockets(tmp_path, backends):
    with EdgeProcess(tmp_path, _config(backends), gateway_ports=(80,)) as edge:
        before = edge.worker_pids()
        assert len(before) == 2
        victim = before[0]
        with Load(edge.port(80)) as load:
            time.sleep(0.5)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                pids = edge.worker_pids()
                if victim not in pids and len(pids) == 2:
                    break
                time.sleep(0.02)
            replaced_in = time.monotonic() - killed_at
            time.sleep(1.0)
        after = edge.worker_pids()
        assert victim not in after and len(after) == 2
        assert replaced_in < 1.0
        # Only a request in flight on the killed worker may fail; connections queued on its socket are
        # served by the replacement, and everything after the kill succeeds.
        assert len(load.failures) <= 1, load.failures[:5]
        assert sum(1 for r in load.results if r[0] > killed_at + 0.2 and r[1] == 200) > 10


def test_other_workers_connections_survive_a_kill(tmp_path, backends):
    with EdgeProcess(tmp_path, _config(backends), gateway_ports=(80,)) as edge:
        victim = edge.worker_pids()[0]
        conns = [http.client.HTTPConnection("127.0.0.1", edge.port(80), timeout=5) for _ in range(12)]
        try:
            for c in conns:
                c.request("GET", "/", headers={"Host": "app.example.com"})
                assert c.getresponse().read()
            os.kill(victim, signal.SIGKILL)
            time.sleep(0.3)
            survived = 0
            for c in conns:
                try:
                    c.request("GET", "/", headers={"Host": "app.example.com"})
                    r = c.getresponse()
                    r.read()
                    survived += r.status == 200
                except (OSError, http.client.HTTPException):
                    pass  # this connection was on the killed worker: closed, not hung
            assert survived > 0

        finally:
            for c in conns:
                c.close()


def test_sigterm_drains_in_flight_requests(tmp_path, backends):
    edge = EdgeProcess(tmp_path, _config(backends), gateway_ports=(80,), extra_args=("--drain-timeout", "5"))
    with edge:
        results: list[object] = []

        def slow_request() -> None:
            try:
                status, body, headers = http_get(edge.port(80), "/delay/1", host="app.example.com", timeout_s=10)
                results.append((status, headers.get("connection")))
            except (OSError, http.client.HTTPException) as exc:
                results.append(repr(exc))

        threads = [threading.Thread(target=slow_request) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        started = time.monotonic()
        edge.send_signal(signal.SIGTERM)
        # Readiness fails at once.
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and edge.ready_status() == 200:
            time.sleep(0.02)
        assert edge.ready_status() != 200
        for t in threads:
            t.join(10)
        code = edge.wait(10)
        assert code == 0
        assert time.monotonic() - started < 5
        assert results == [(200, "close")] * 8, results
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", edge.port(80)), timeout=1).close()


def test_config_change_while_requests_flow(tmp_path, backends):
    with EdgeProcess(tmp_path, _config(backends, "a"), gateway_ports=(80,)) as edge:
        with Load(edge.port(80)) as load:
            time.sleep(0.5)
            edge.write_config("app.yaml", _vs("b"))
            edge.reload()
            switched_at = time.monotonic()
            time.sleep(0.5)
        assert not load.failures, load.failures[:5]
        assert any(r[2] == "a" for r in load.results)
        after = [r for r in load.results if r[0] > switched_at]
        assert after and all(r[2] == "b" for r in after)


def test_file_change_is_picked_up_without_a_signal(tmp_path, backends):
    with EdgeProcess(tmp_path, _config(backends, "a"), gateway_ports=(80,)) as edge:
        status, body, _ = http_get(edge.port(80), "/", host="app.example.com")
        assert json.loads(body)["instance"] == "a"
        edge.write_config("app.yaml", _vs("b"))
        deadline = time.monotonic() + 5
        instance = "a"
        while time.monotonic() < deadline and instance != "b":
            status, body, _ = http_get(edge.port(80), "/", host="app.example.com")
            instance = json.loads(body)["instance"]
            time.sleep(0.02)
        assert instance == "b"


def test_drain_delay_keeps_accepting_then_refuses_and_in_flight_requests_finish(tmp_path, backends):
    """The issue's drain test: SIGTERM during a stream of long requests → readiness 503 at once, new
    connections served during --drain-delay, refused after it; every long request completes; exit 0 within
    --drain-timeout."""
    delay_s, timeout_s = 1.5, 6.0
    edge = EdgeProcess(tmp_path, _config(backends), gateway_ports=(80,), extra_args=("--drain-delay", str(delay_s), "--drain-timeout", str(timeout_s)))
    with edge:
        long_results: list[object] = []

        def long_request() -> None:
            try:
                status, _, headers = http_get(edge.port(80), "/delay/2.5", host="app.example.com", timeout_s=15)
                long_results.append((status, headers.get("connection")))
            except (OSError, http.client.HTTPException) as exc:
                long_results.append(repr(exc))

        threads = [threading.Thread(target=long_request) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        sigterm_at = time.monotonic()
        edge.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and edge.ready_status() == 200:
            time.sleep(0.02)
        assert edge.ready_status() != 200
        # Inside the delay: fresh connections are still accepted and served.
        served_in_delay = []
        while time.monotonic() < sigterm_at + delay_s - 0.4:
            status, body, _ = http_get(edge.port(80), "/", host="app.example.com", timeout_s=5)
            served_in_delay.append(status)
            time.sleep(0.05)
        assert served_in_delay and set(served_in_delay) == {200}
        # After the delay: refused (the listening sockets are closed), well before the long requests end.
        refused_at = None
        while time.monotonic() < sigterm_at + timeout_s:
            try:
                socket.create_connection(("127.0.0.1", edge.port(80)), timeout=1).close()
            except ConnectionRefusedError:
                refused_at = time.monotonic()
                break
            time.sleep(0.02)
        assert refused_at is not None, "new connections were still accepted after the drain delay"
        assert refused_at - sigterm_at >= delay_s
        for t in threads:
            t.join(15)
        # The long requests outlived the delay; their responses tell the client to go away.
        assert long_results == [(200, "close")] * 6, long_results
        assert edge.wait(timeout_s + 5) == 0
        assert time.monotonic() - sigterm_at < timeout_s + 1
