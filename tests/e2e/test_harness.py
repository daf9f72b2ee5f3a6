"""The harness itself, against the real `edge run`, real workers and real sample backends: what every other
end-to-end test relies on (start, route, reload, stop, and that nothing outlives a test)."""

import os
import signal
from pathlib import Path

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends, child_pids, http_get

pytestmark = pytest.mark.e2e

EXIT_TIMEOUT_S = 20.0


def gateway(*ports: int) -> str:
    servers = "".join(
        f"  - port:\n      number: {port}\n      name: http-{port}\n      protocol: HTTP\n    hosts:\n    - \"*\"\n"
        for port in ports
    )
    return (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n"
        f"spec:\n  selector:\n    istio: ingressgateway\n  servers:\n{servers}"
    )


def virtual_service(subset: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n"
        "spec:\n  hosts:\n  - reviews.local\n  gateways:\n  - gw\n"
        f"  http:\n  - route:\n    - destination:\n        host: reviews.local\n        subset: {subset}\n"
    )


DESTINATION_RULE = (
    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\n"
    "spec:\n  host: reviews.local\n  subsets:\n"
    "  - name: v1\n    labels:\n      version: reviews-v1\n"
    "  - name: v2\n    labels:\n      version: reviews-v2\n"
)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_edge_routes_to_sample_backends_reloads_and_stops_cleanly(tmp_path):
    with SampleBackends(tmp_path, http=["reviews-v1", "reviews-v2"]) as backends:
        config = {
            "gw.yaml": gateway(80),
            "vs.yaml": virtual_service("v1"),
            "dr.yaml": DESTINATION_RULE,
            "se.yaml": backends.service_entry("reviews.local"),
        }
        with EdgeProcess(tmp_path, config, workers=2) as edge:
            assert edge.ready_status() == 200
            assert len(edge.worker_pids()) == 2
            status, _, headers = http_get(edge.port(80), "/headers", host="reviews.local")
            assert (status, headers["x-served-by"]) == (200, "reviews-v1")
            edge.write_config("vs.yaml", virtual_service("v2"))
            outcome = edge.reload()
            # The watcher may have published the edit first; then the SIGHUP reload finds nothing new.
            assert outcome.startswith(("generation 2 published", "configuration unchanged")), outcome
            status, _, headers = http_get(edge.port(80), "/headers", host="reviews.local")
            assert (status, headers["x-served-by"]) == (200, "reviews-v2")
            workers = edge.worker_pids()
        assert edge.returncode == 0
        assert not any(alive(pid) for pid in workers)
        assert "drained in" in edge.log_text()


def test_stop_leaves_no_worker_behind_even_when_the_supervisor_was_sigkilled(tmp_path):
    edge = EdgeProcess(tmp_path, {"gw.yaml": gateway(80)}, workers=2)
    with edge:
        workers = edge.worker_pids()
        assert len(workers) == 2
        os.kill(edge.pid, signal.SIGKILL)
        edge.wait(EXIT_TIMEOUT_S)
    # The workers were orphaned with a drain of their own; stop() took the whole process group down at once.
    assert not any(alive(pid) for pid in workers)
    assert child_pids(edge.pid) == []


def test_a_start_that_fails_reports_the_log(tmp_path):
    edge = EdgeProcess(tmp_path, {"gw.yaml": "kind: [\n"}, start_timeout_s=EXIT_TIMEOUT_S)
    with pytest.raises(RuntimeError) as info, edge:
        pass
    assert "edge exited with 1 before it was ready" in str(info.value)
    assert "gw.yaml:" in str(info.value)


def test_a_reload_overtaken_by_the_file_watch_before_the_signal_reports_that_publication(tmp_path):
    """The file watch may publish an edit before reload() even sends its SIGHUP; the signal's own reload then finds
    the configuration unchanged, and reload() reports the watch's publication of the edit (once served)."""
    edge = EdgeProcess.__new__(EdgeProcess)  # only the log is read: no process
    edge.log_path = tmp_path / "edge.log"
    before_edit = "edge: ready: 2 worker(s) serve generation 2\n"
    watch = "edge: reload #3 (file change)\nedge: reload #3: generation 3 published in 0.01 s; -listener 0.0.0.0:81\nedge: generation 3 is served by every worker\n"
    signal_reload = "edge: reload #4 (SIGHUP)\nedge: reload #4: configuration unchanged; generation 3 stays\n"
    edge.log_path.write_text(before_edit + watch + signal_reload)
    edited_at = len(before_edit)
    after = len(before_edit + watch)  # where reload() started reading: the watch had already published
    assert edge._reload_progress(after, edited_at) == "generation 3 published in 0.01 s; -listener 0.0.0.0:81"
    # Without an edit since the last reload, "unchanged" is the answer.
    assert edge._reload_progress(after) == "configuration unchanged; generation 3 stays"
