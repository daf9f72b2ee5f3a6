# The issue's reload test: clients hammer the stable port for several seconds while the config file is
# rewritten every 100 ms with valid and invalid versions in turn, and a second Gateway port comes and goes.
# Done when: zero failed requests on the stable port, every valid version observed as served, every invalid
# one rejected with its `file:line: message`.
#
# The writer waits for the supervisor's outcome line of each write before the next one (at most
# OUTCOME_TIMEOUT_S), so no version is coalesced away and each can be checked; the cadence stays 100 ms
# whenever a reload takes less than that. Every loop is bounded in count and time.
from __future__ import annotations

import http.client
import re
import statistics
import threading
import time

import pytest

from edge.errors import ConfigError
from edge.settings import RunSettings
from edge.supervisor import compile_config
from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

VERSIONS = 44  # 22 valid, 22 invalid: about 5 s of rewrites
WRITE_INTERVAL_S = 0.1
OUTCOME_TIMEOUT_S = 5.0
CLIENT_THREADS = 3
MAX_REQUESTS_PER_CLIENT = 50_000
MAX_LOAD_S = 60.0
STABLE, EXTRA = 80, 81

GATEWAY_SERVER = "  - port: {{number: {port}, name: http-{port}, protocol: HTTP}}\n    hosts: [\"*\"]\n"


def version_text(k: int, *, with_extra_port: bool) -> str:
    servers = GATEWAY_SERVER.format(port=STABLE) + (GATEWAY_SERVER.format(port=EXTRA) if with_extra_port else "")
    padding = "".join(f"# padding {i}: moves the lines of version {k}\n" for i in range(k))
    return (
        f"# version {k}\n{padding}"
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  servers:\n"
        f"{servers}"
        "---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app}\nspec:\n"
        "  hosts: [app.example.com]\n  gateways: [gw]\n  http:\n"
        "  - route: [{destination: {host: app.local}, weight: 100}]\n"
        f"    headers: {{response: {{set: {{x-config-version: \"{k}\"}}}}}}\n"
    )


def invalid_text(k: int) -> str:
    good = version_text(k, with_extra_port=False)
    kind = (k // 2) % 3
    if kind == 0:  # a YAML syntax error
        return good.replace("  hosts: [app.example.com]\n", "  hosts: [app.example.com\n")
    if kind == 1:  # a validation error
        return good.replace("weight: 100", 'weight: "lots"')
    # a half-written file: cut inside the first server's flow mapping
    return good[: good.index("name: http-80") + len("name: ht")]


def expected_errors(config_dir) -> list[str]:
    """The `file:line: message` lines the supervisor must log for the config as it is on disk now."""
    try:
        compile_config([str(config_dir)], RunSettings(config=(str(config_dir),)))
    except ConfigError as exc:
        return [str(d) for d in exc.errors]
    return []


class Client:
    """Requests on one keep-alive connection (reopened after the server closes it), recording the version."""

    def __init__(self, port: int):
        self.port = port
        self.results: list[tuple[float, object, str]] = []  # (time, status or error, x-config-version)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        conn = None
        while not self.stop.is_set() and len(self.results) < MAX_REQUESTS_PER_CLIENT and time.monotonic() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/", headers={"Host": "app.example.com"})
                response = conn.getresponse()
                response.read()
                self.results.append((time.monotonic(), response.status, response.getheader("x-config-version") or ""))
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self.results.append((time.monotonic(), repr(exc), ""))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


def test_reload_under_load(tmp_path):
    with SampleBackends(tmp_path, http=["a"]) as backends:
        config = {"all.yaml": version_text(0, with_extra_port=False), "se.yaml": backends.service_entry("app.local")}
        with EdgeProcess(tmp_path, config, gateway_ports=(STABLE, EXTRA)) as edge:
            clients = [Client(edge.port(STABLE)) for _ in range(CLIENT_THREADS)]
            for c in clients:
                c.thread.start()
            written_at: dict[int, float] = {}
            rejected: dict[int, list[str]] = {}
            extra_checks: list[tuple[int, bool, object]] = []
            try:
                time.sleep(0.3)
                for k in range(1, VERSIONS + 1):
                    valid = k % 2 == 0
                    with_extra = valid and (k // 8) % 2 == 1  # port 81 comes for 4 valid versions, then goes
                    text = version_text(k, with_extra_port=with_extra) if valid else invalid_text(k)
                    offset = len(edge.log_text())
                    started = time.monotonic()
                    edge.write_config("all.yaml", text)
                    written_at[k] = started
                    # The outcome this write must produce ("configuration unchanged" of a duplicate file event
                    # is skipped); a version that got the other outcome times out here, naming itself.
                    wanted = "generation \\d+ published" if valid else "failed"
                    try:
                        edge.wait_for_log(rf"^edge: reload #\d+: {wanted}", after=offset, timeout_s=OUTCOME_TIMEOUT_S)
                    except TimeoutError as exc:
                        raise AssertionError(f"version {k} ({'valid' if valid else 'invalid'}) was not {wanted!r}") from exc
                    if valid:
                        extra_checks.append((k, with_extra, probe_extra(edge, str(k) if with_extra else None)))
                    else:
                        rejected[k] = expected_errors(edge.config_dir)
                        assert rejected[k], f"version {k} was meant to be invalid"
                    time.sleep(max(0.0, started + WRITE_INTERVAL_S - time.monotonic()))
                time.sleep(0.3)
            finally:
                for c in clients:
                    c.stop.set()
                for c in clients:
                    c.thread.join(10)
            log = edge.log_text()

    results = [r for c in clients for r in c.results]
    failures = [r for r in results if r[1] != 200]
    assert len(results) > 500, len(results)
    assert failures == [], failures[:10]

    # Every valid version was served (the invalid one after it kept it served until the next valid one).
    seen: dict[str, float] = {}
    for at, _status, version in sorted(results):
        seen.setdefault(version, at)
    valid_versions = [k for k in written_at if k % 2 == 0]
    assert [k for k in valid_versions if str(k) not in seen] == []
    assert not [k for k in written_at if k % 2 == 1 and str(k) in seen]  # an invalid version is never served
    latencies_ms = sorted((seen[str(k)] - written_at[k]) * 1000 for k in valid_versions)
    print(f"\nwrite → first response with the new version: median {statistics.median(latencies_ms):.0f} ms, max {latencies_ms[-1]:.0f} ms over {len(latencies_ms)} versions; {len(results)} requests, 0 failed")

    # Every invalid version was rejected with its own file:line: message, and each at a different line.
    for k, lines in rejected.items():
        for line in lines:
            assert line in log, (k, line)
    first_lines = [re.match(r"^.*?:(\d+): ", lines[0]).group(1) for lines in rejected.values()]
    assert len(set(first_lines)) == len(first_lines)

    # The extra port followed the Gateway: served while present, refused once removed.
    assert {with_extra for _, with_extra, _ in extra_checks} == {True, False}
    for k, with_extra, answer in extra_checks:
        if with_extra:
            assert answer == (200, str(k)), (k, answer)
        else:
            assert answer == "refused", (k, answer)


def probe_extra(edge: EdgeProcess, expected_version: str | None) -> object:
    """What the extra port answers after a published version: (status, version) or "refused". Polled (bounded)
    until it is what the version wants: a removed listener closes once every worker let its socket go."""
    deadline = time.monotonic() + OUTCOME_TIMEOUT_S
    while True:
        try:
            status, _, headers = http_get(edge.port(EXTRA), "/", host="app.example.com", timeout_s=2)
            answer: object = (status, headers.get("x-config-version"))
        except ConnectionRefusedError:
            return "refused"
        except (OSError, http.client.HTTPException) as exc:
            answer = repr(exc)
        if time.monotonic() >= deadline:
            return answer
        if expected_version is not None and answer == (200, expected_version):
            return answer
        time.sleep(0.02)
