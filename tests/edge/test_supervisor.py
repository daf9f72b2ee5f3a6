import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from edge.shm import SHM_DIR
from edge.reloads import ReloadRequests
from edge.state import RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_MIN_S, STABLE_RUN_S, SlotRecord, SupervisorState, WorkerRecord, crash_looping, restart_delay
from edge.supervisor import describe_exit
from edge.systemd import SystemdNotifier, notify_address, watchdog_interval_s
from tests.e2e.harness import EdgeProcess, http_get

# ------------------------------------------------------------------------------------------- pure rules


def test_crash_loop_backoff_doubles_from_min_to_max_and_resets_after_a_stable_run():
    delays = []
    delay = 0.0
    for _ in range(10):
        delay = restart_delay(delay, lifetime_s=0.2)
        delays.append(delay)
    assert delays[:7] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert delays[-1] == RESTART_BACKOFF_MAX_S
    assert restart_delay(RESTART_BACKOFF_MAX_S, lifetime_s=STABLE_RUN_S) == RESTART_BACKOFF_MIN_S
    assert restart_delay(0.0, lifetime_s=3600.0) == RESTART_BACKOFF_MIN_S


def test_a_slot_crash_loops_while_it_backs_off_until_its_worker_ran_long_enough():
    slot = SlotRecord(0, backoff_s=RESTART_BACKOFF_MIN_S)
    assert not crash_looping(slot, now=100.0)  # the first restart waits the minimum: not a loop
    slot.backoff_s = 0.4
    assert crash_looping(slot, now=100.0)  # backing off, no worker yet
    slot.worker = WorkerRecord(slot=0, pid=1, started_at=100.0)
    assert crash_looping(slot, now=100.0 + STABLE_RUN_S - 0.1)
    assert not crash_looping(slot, now=100.0 + STABLE_RUN_S)


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (-9, "exited with signal 9 (SIGKILL)"),
        (-11, "exited with signal 11 (SIGSEGV)"),
        (0, "exited with status 0"),
        (1, "exited with status 1"),
        (-200, "exited with signal 200"),
    ],
)
def test_describe_exit(returncode, text):
    assert describe_exit(returncode) == text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4243"}, None),  # meant for another process
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(environ, expected):
    assert watchdog_interval_s(environ, pid=4242) == expected


@pytest.mark.parametrize(
    ("value", "address"),
    [("/run/systemd/notify", "/run/systemd/notify"), ("@sd-notify", "\0sd-notify"), ("vsock:2:1234", None)],
)
def test_notify_address(value, address):
    assert notify_address(value) == address


def make_state(workers: int = 2, generation: int = 1) -> SupervisorState:
    state = SupervisorState(config_paths=("conf",), workers=workers, generation=generation)
    state.slots = [SlotRecord(slot) for slot in range(workers)]
    return state


def serve(state: SupervisorState, slot: int, generation: int) -> None:
    state.slots[slot].worker = WorkerRecord(slot=slot, pid=1000 + slot, started_at=0.0, serving_generation=generation)


def test_readiness_waits_for_every_worker_then_holds_until_the_drain():
    state = make_state(workers=2, generation=0)
    assert state.readiness() == (False, "starting: no table published yet")
    state.generation = 1
    serve(state, 0, 1)
    assert state.readiness() == (False, "starting: 1 of 2 workers serve generation 1")
    serve(state, 1, 1)
    assert state.all_serving(1)
    state.ever_ready = True  # the supervisor sets it when all_serving first holds
    assert state.readiness() == (True, "")
    state.generation = 2  # a reload: workers still on 1 for a moment, readiness holds (as Istio's does)
    state.slots[0].worker = None  # a worker died: readiness holds too
    assert state.readiness() == (True, "")
    state.draining = True
    assert state.readiness() == (False, "draining")


async def test_reload_requests_coalesce_while_a_reload_runs():
    requests = ReloadRequests()
    requests.request("SIGHUP")
    requests.request("changed: gw.yaml")
    requests.request("SIGHUP")
    with trio.fail_after(1):
        assert await requests.wait() == ["SIGHUP", "changed: gw.yaml"]
    with trio.move_on_after(0.05):
        await requests.wait()
        pytest.fail("no request is pending")


# ---------------------------------------------------------------------------------------------- systemd


@pytest.fixture
def notify_socket(tmp_path):
    """A real AF_UNIX datagram socket, as systemd gives a Type=notify service in NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_notifier_sends_one_datagram_per_notification(notify_socket):
    path, sock = notify_socket
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path})
    try:
        assert notifier.enabled
        assert notifier.notify("READY=1", "STATUS=serving generation 1 with 2 worker(s)")
        assert notifier.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving generation 1 with 2 worker(s)"
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        notifier.close()


def test_notifier_speaks_to_abstract_sockets():
    name = f"edge-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.notify("STOPPING=1")
            assert sock.recv(4096) == b"STOPPING=1"
        finally:
            notifier.close()


def test_notifier_is_off_without_notify_socket():
    notifier = SystemdNotifier.from_environ({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False


def test_a_vanished_notify_socket_is_logged_once_and_never_raises(tmp_path):
    lines = []
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")}, log_line=lines.append)
    try:
        assert notifier.notify("READY=1") is False
        assert notifier.notify("WATCHDOG=1") is False
    finally:
        notifier.close()
    assert len(lines) == 1 and "systemd notification" in lines[0]


# ------------------------------------------------------------------- the real supervisor, with stub workers
#
# `edge run` as the CLI starts it (tests/edge/supervisor_helper.py), real config files, real sockets and
# processes; the workers are tests/edge/stub_worker.py, which speaks the real control protocol and answers
# every connection with who it is ({"slot", "pid", "incarnation", "generation", "key"}).

HELPER = Path(__file__).with_name("supervisor_helper.py")
PROCESS_TIMEOUT_S = 20.0
HEARTBEAT_KILL_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 10.0
STEADY_REQUESTS_MAX = 2000  # bound of the background request loop while reloads happen


def gateway(*ports: int, name: str = "gw") -> str:
    servers = "".join(
        f"  - port:\n      number: {port}\n      name: http-{port}\n      protocol: HTTP\n    hosts:\n    - \"*\"\n"
        for port in ports
    )
    return (
        "apiVersion: networking.istio.io/v1\n"
        "kind: Gateway\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n"
        "  selector:\n    istio: ingressgateway\n"
        f"  servers:\n{servers}"
    )


def stub_edge(tmp_path, *, workers=1, config=None, gateway_ports=(80, 81), env=None, extra_args=(), wait_ready=True):
    state_dir = tmp_path / "stub-state"
    state_dir.mkdir(exist_ok=True)
    return EdgeProcess(
        tmp_path,
        config if config is not None else {"gw.yaml": gateway(80)},
        workers=workers,
        gateway_ports=gateway_ports,
        env={"STUB_STATE_DIR": str(state_dir), **(env or {})},
        extra_args=extra_args,
        wait_ready=wait_ready,
        program=(sys.executable, str(HELPER)),
    )


def who(port: int, path: str = "/") -> dict:
    """Which stub worker answered a request on this port."""
    status, body, _ = http_get(port, path, timeout_s=REQUEST_TIMEOUT_S)
    assert status == 200, body
    return json.loads(body)


def wait_until_dead(pid: int) -> None:
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)
    raise TimeoutError(f"pid {pid} still alive")


def stub_events(tmp_path, slot: int) -> list[str]:
    path = tmp_path / "stub-state" / f"slot-{slot}.events"
    return path.read_text().splitlines() if path.exists() else []


def segments_of(pid: int) -> list[str]:
    return [name for name in os.listdir(SHM_DIR) if name.startswith(f"edge-{pid}-")]


def test_startup_with_a_bad_config_exits_1_and_names_file_and_line(tmp_path):
    broken = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers: [\n"
    edge = EdgeProcess(tmp_path, {"gw.yaml": broken}, wait_ready=False)
    with edge:
        assert edge.wait(PROCESS_TIMEOUT_S) == 1
    log = edge.log_text()
    assert re.search(rf"^{re.escape(str(edge.config_dir / 'gw.yaml'))}:\d+: ", log, re.MULTILINE), log
    assert "not starting" in log


def test_startup_with_an_unknown_field_names_its_line(tmp_path):
    config = gateway(80).replace("  selector:\n", "  selectr:\n")
    edge = EdgeProcess(tmp_path, {"gw.yaml": config}, wait_ready=False)
    with edge:
        assert edge.wait(PROCESS_TIMEOUT_S) == 1
    line = next(n for n, text in enumerate(config.splitlines(), 1) if "selectr" in text)
    assert f"{edge.config_dir / 'gw.yaml'}:{line}: " in edge.log_text()


def test_a_taken_status_port_is_a_clear_startup_error(tmp_path):
    edge = stub_edge(tmp_path, wait_ready=False)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", edge.status_port))
        taken.listen()
        with edge:
            assert edge.wait(PROCESS_TIMEOUT_S) == 1
    assert f"status port: cannot bind 0.0.0.0:{edge.status_port}: address already in use" in edge.log_text()


def test_every_slot_serves_and_the_supervisor_removes_stale_segments(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"edge-{dead.pid}-0badc0de-table"
    Path(SHM_DIR, stale).write_bytes(b"left behind by a SIGKILLed supervisor")
    try:
        with stub_edge(tmp_path, workers=2) as edge:
            # Gone once edge is up. (Which supervisor logs the removal is not checked: another test run's
            # supervisor starting at the same moment removes every stale segment it sees, ours included.)
            assert not Path(SHM_DIR, stale).exists()
            slots = {who(edge.port(80))["slot"] for _ in range(40)}
            assert slots == {0, 1}  # SO_REUSEPORT spreads connections over both slots' sockets
            assert edge.ready_status() == 200
            assert segments_of(edge.pid)
    finally:
        Path(SHM_DIR, stale).unlink(missing_ok=True)


def test_a_killed_worker_is_replaced_with_the_same_socket_and_nothing_queued_is_lost(tmp_path):
    with stub_edge(tmp_path, workers=1) as edge:
        first = who(edge.port(80))
        os.kill(first["pid"], signal.SIGKILL)
        wait_until_dead(first["pid"])
        # No worker holds the slot now: this connection waits in the supervisor's socket for the replacement.
        second = who(edge.port(80))
        assert (second["slot"], second["incarnation"]) == (0, 2)
        assert second["pid"] != first["pid"]
        edge.wait_for_log(
            rf"^edge: worker 0 \(pid {first['pid']}\) exited with signal 9 \(SIGKILL\) after [\d.]+ s; restarting in 0.1 s$"
        )
        assert edge.ready_status() == 200


def test_a_crash_loop_backs_off_exponentially_then_recovers(tmp_path):
    with stub_edge(tmp_path, workers=1, env={"STUB_EXIT_0": "3"}) as edge:
        restarts = re.findall(r"^edge: worker 0 \(pid \d+\) exited with status 3 after [\d.]+ s; restarting in ([\d.]+) s(.*)$", edge.log_text(), re.MULTILINE)
        assert [delay for delay, _ in restarts] == ["0.1", "0.2", "0.4"]
        # The log says when a slot is in a crash loop: every restart after a quick death backs off.
        assert [marker for _, marker in restarts] == ["", " (crash loop: backing off)", " (crash loop: backing off)"]
        assert who(edge.port(80))["incarnation"] == 4
        # And the metrics port shows it: 3 restarts, the last backoff, the slot serving again.
        _, body, _ = http_get(edge.metrics_port, "/stats/prometheus")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
        assert samples[("edge_worker_restarts_total", (("slot", "0"),))] == 3
        assert samples[("edge_worker_restart_backoff_seconds", (("slot", "0"),))] == 0.4
        assert samples[("edge_worker_crash_looping", (("slot", "0"),))] == 1  # until it has run STABLE_RUN_S
        assert samples[("edge_workers", (("state", "serving"),))] == 1


def test_a_worker_that_stops_answering_heartbeats_is_killed_and_replaced(tmp_path):
    with stub_edge(tmp_path, workers=1, env={"STUB_HANG_0": "1"}) as edge:
        hung = who(edge.port(80))
        edge.wait_for_log(rf"^edge: worker 0 \(pid {hung['pid']}\) has not answered heartbeats for", timeout_s=HEARTBEAT_KILL_TIMEOUT_S)
        edge.wait_for_log(rf"^edge: worker 0 \(pid {hung['pid']}\) exited with signal 9 \(SIGKILL\)")
        assert who(edge.port(80))["incarnation"] == 2


class SteadyRequests:
    """Requests one after another on a port from a thread, until stopped; counts failures."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(STEADY_REQUESTS_MAX):
            if self._stop.is_set():
                return
            try:
                who(self.port)
                self.ok += 1
            except (OSError, AssertionError) as exc:
                self.failures.append(repr(exc))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_S * 2)


def test_reloads_add_and_remove_listeners_without_failing_the_unchanged_port(tmp_path):
    with stub_edge(tmp_path, workers=2) as edge, SteadyRequests(edge.port(80)) as steady:
        with pytest.raises(ConnectionRefusedError):
            who(edge.port(81))
        edge.write_config("gw.yaml", gateway(80, 81))
        outcome = edge.reload()
        assert re.fullmatch(r"generation 2 published in [\d.]+ s; \+listener 0\.0\.0\.0:81", outcome), outcome
        assert who(edge.port(81))["key"] == "0.0.0.0:81"
        assert who(edge.port(81))["generation"] == 2
        edge.write_config("gw.yaml", gateway(80))
        outcome = edge.reload()
        assert re.fullmatch(r"generation 3 published in [\d.]+ s; -listener 0\.0\.0\.0:81", outcome), outcome
        with pytest.raises(ConnectionRefusedError):
            who(edge.port(81))
        assert edge.reload() == "configuration unchanged; generation 3 stays"
    assert steady.failures == []
    assert steady.ok > 0


def test_a_bad_edit_keeps_the_last_good_table_and_the_file_watch_reloads_by_itself(tmp_path):
    with stub_edge(tmp_path, workers=1) as edge:
        offset = len(edge.log_text())
        edge.write_config("gw.yaml", gateway(80) + "  oops: [\n")
        failed = edge.wait_for_log(r"^edge: reload #(\d+): failed; generation 1 stays served$", after=offset)
        assert re.search(rf"^{re.escape(str(edge.config_dir / 'gw.yaml'))}:\d+: ", edge.log_text()[offset:], re.MULTILINE)
        assert re.search(r"^edge: reload #\d+ \(changed: gw\.yaml\)$", edge.log_text()[offset:], re.MULTILINE)
        assert who(edge.port(80))["generation"] == 1
        edge.write_config("gw.yaml", gateway(80, 81))  # the next change is retried and served
        edge.wait_for_log(r"^edge: generation 2 is served by every worker$", after=failed.end())
        assert who(edge.port(81))["generation"] == 2


def test_sigterm_drains_in_flight_requests_then_exits_0_and_unlinks_the_segment(tmp_path):
    results: list[dict] = []
    errors: list[str] = []

    def slow_request(port: int) -> None:
        try:
            results.append(who(port, "/delay/1"))
        except (OSError, AssertionError) as exc:
            errors.append(repr(exc))

    with stub_edge(tmp_path, workers=2, extra_args=["--drain-timeout", "5"]) as edge:
        pid = edge.pid
        assert segments_of(pid)
        threads = [threading.Thread(target=slow_request, args=(edge.port(80),)) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # let them reach the workers
        edge.send_signal(signal.SIGTERM)
        edge.wait_for_log(r"^edge: SIGTERM: draining")
        assert edge.ready_status() == 503
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S)
        assert edge.wait(PROCESS_TIMEOUT_S) == 0
    assert errors == [] and len(results) == 4
    assert segments_of(pid) == []
    with pytest.raises(ConnectionRefusedError):
        who(edge.port(80))
    assert "drained in" in edge.log_text()
    assert any(line.endswith("drain 5.0") or " drain " in line for line in stub_events(tmp_path, 0))


def test_during_the_drain_delay_readiness_fails_but_connections_are_still_served(tmp_path):
    with stub_edge(tmp_path, workers=1, extra_args=["--drain-delay", "2", "--drain-timeout", "5"]) as edge:
        edge.send_signal(signal.SIGTERM)
        edge.wait_for_log(r"^edge: SIGTERM: draining: readiness is 503, accepting for 2 s more")
        assert edge.ready_status() == 503
        assert who(edge.port(80))["slot"] == 0
        assert edge.wait(PROCESS_TIMEOUT_S) == 0
    with pytest.raises(ConnectionRefusedError):
        who(edge.port(80))
    drain = next(line for line in stub_events(tmp_path, 0) if " drain " in line)
    assert float(drain.rsplit(" ", 1)[1]) <= 3.0  # DRAIN carries what is left of the timeout after the delay


def test_a_worker_ignoring_drain_is_killed_after_the_deadline(tmp_path):
    with stub_edge(tmp_path, workers=1, env={"STUB_IGNORE_DRAIN": "1"}, extra_args=["--drain-timeout", "0.5"]) as edge:
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(PROCESS_TIMEOUT_S) == 0
    assert "still running after the drain timeout; killing it" in edge.log_text()


def test_a_second_signal_stops_at_once_with_status_1(tmp_path):
    with stub_edge(tmp_path, workers=1, extra_args=["--drain-timeout", "30"]) as edge:
        cut_short: list[str] = []

        def slow_request() -> None:
            try:
                http_get(edge.port(80), "/delay/20", timeout_s=30)
            except OSError as exc:
                cut_short.append(repr(exc))

        slow = threading.Thread(target=slow_request, daemon=True)
        slow.start()
        time.sleep(0.3)
        edge.send_signal(signal.SIGTERM)
        edge.wait_for_log(r"^edge: SIGTERM: draining")
        edge.send_signal(signal.SIGINT)
        assert edge.wait(PROCESS_TIMEOUT_S) == 1
        assert segments_of(edge.pid) == []
        slow.join(REQUEST_TIMEOUT_S)
    assert len(cut_short) == 1  # the in-flight request was not waited for
    assert "SIGINT again: stopping now" in edge.log_text()


def test_systemd_notify_protocol_over_a_real_datagram_socket(tmp_path, notify_socket):
    path, sock = notify_socket
    messages: list[str] = []

    def receive_until(predicate) -> list[str]:
        while not any(predicate(m) for m in messages):
            messages.append(sock.recv(4096).decode())  # sock has a timeout
        return messages

    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    with stub_edge(tmp_path, workers=2, env=env) as edge:
        receive_until(lambda m: "READY=1" in m.split("\n"))
        assert all("RELOADING=1" not in m for m in messages)
        receive_until(lambda m: m == "WATCHDOG=1")
        messages.clear()
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        edge.write_config("gw.yaml", gateway(80, 81))
        edge.reload()
        receive_until(lambda m: "READY=1" in m.split("\n"))
        reloading = next(m for m in messages if "RELOADING=1" in m.split("\n"))
        usec = int(re.search(r"^MONOTONIC_USEC=(\d+)$", reloading, re.MULTILINE).group(1))
        assert before_usec <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert messages.index(reloading) < max(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))
        edge.send_signal(signal.SIGTERM)
        receive_until(lambda m: "STOPPING=1" in m.split("\n"))
        assert edge.wait(PROCESS_TIMEOUT_S) == 0
    # The workers never saw NOTIFY_SOCKET (systemd would take their messages for ours).
    assert all(line.endswith(" start") for line in stub_events(tmp_path, 0) if " start" in line)
