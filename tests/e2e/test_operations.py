# End to end: what an operator sees of a running gateway — the metrics port (parsed with prometheus-client's
# text parser), the admin port, POST /reload, and the access log in both formats, on stdout and in a file
# reopened on SIGUSR1. Real `edge run`, real backends, loopback only; every loop is bounded.
from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get

pytestmark = pytest.mark.e2e

WAIT_S = 10.0
POLL_S = 0.05
TCP_PORT = 31400

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
"""

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - name: app-route
    route: [{destination: {host: app.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: dead}
spec:
  hosts: ["dead.example.com"]
  gateways: [gw]
  http:
  - name: dead-route
    retries: {attempts: 0}
    route: [{destination: {host: dead.local}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: ["*"]
  gateways: [gw]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: echo.local, port: {number: 9000}}}]
"""


def dead_service_entry(port: int) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: dead}\nspec:\n"
        "  hosts: [dead.local]\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
        f"  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
    )


def echo_service_entry(backends: SampleBackends) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo}\nspec:\n"
        "  hosts: [echo.local]\n  resolution: STATIC\n  ports: [{number: 9000, name: tcp, protocol: TCP}]\n"
        f"  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {backends.port('echo')}}}}}]\n"
    )


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    # dead.local's endpoint: a port bound and held without listening, so a connect is refused and no other
    # process can take the port meanwhile (a port that was merely free a moment ago could be).
    with SampleBackends(tmp_path_factory.mktemp("ops-backends"), http=["a"], tcp=["echo"]) as b, socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        b.refused_port = refusing.getsockname()[1]
        yield b


def config(backends) -> dict[str, str]:
    return {
        "gw.yaml": GATEWAY,
        "routes.yaml": ROUTES,
        "app-se.yaml": backends.service_entry("app.local", ["a"]),
        "dead-se.yaml": dead_service_entry(backends.refused_port),
        "echo-se.yaml": echo_service_entry(backends),
    }


def start(tmp_path, backends, *args: str, **kw) -> EdgeProcess:
    return EdgeProcess(tmp_path, config(backends), gateway_ports=(80, TCP_PORT), extra_args=args, **kw)


def prometheus(edge: EdgeProcess) -> dict[tuple, float]:
    status, body, headers = http_get(edge.metrics_port, "/stats/prometheus")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def select(samples: dict, name: str, **labels: str) -> list[tuple[dict, float]]:
    found = []
    for (sample_name, items), value in samples.items():
        d = dict(items)
        if sample_name == name and all(d.get(k) == v for k, v in labels.items()):
            found.append((d, value))
    return found


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(value for _, value in select(samples, name, **labels))


def echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def wait_for(predicate, what: str, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


def drive_traffic(edge: EdgeProcess) -> None:
    port = edge.port(80)
    for _ in range(5):
        assert http_get(port, "/", host="app.example.com")[0] == 200
    assert http_get(port, "/echo", host="app.example.com", method="POST", body=b"x" * 1000)[0] == 200
    for _ in range(2):
        assert http_get(port, "/", host="nowhere.example.com")[0] == 404
    assert http_get(port, "/", host="dead.example.com")[0] == 503
    assert echo(edge.port(TCP_PORT), b"hello\n").endswith(b"hello\n")


# ------------------------------------------------------------------------------------------------ metrics


def test_an_open_tcp_connection_shows_its_bytes_before_it_closes(tmp_path, backends):
    """istio_tcp_*_bytes_total grow while a long connection lasts (every publish, 1 s), and its close adds only
    the rest: each byte is counted once."""
    with start(tmp_path, backends, workers=1) as edge:
        sock = socket.create_connection(("127.0.0.1", edge.port(TCP_PORT)), timeout=WAIT_S)
        try:
            greeting = sock.recv(100)
            assert greeting == b"echo\n"
            sock.sendall(b"x" * 1000)
            echoed = b""
            while len(echoed) < 1000:
                echoed += sock.recv(4096)
            samples = wait_for(lambda: (s := prometheus(edge)) and total(s, "istio_tcp_received_bytes_total") >= 1000 and s, "bytes of the open connection")
            assert total(samples, "istio_tcp_received_bytes_total") == 1000
            assert total(samples, "istio_tcp_sent_bytes_total") == len(greeting) + 1000
            assert total(samples, "istio_tcp_connections_closed_total") == 0  # still open
            sock.sendall(b"yz")
            assert sock.recv(100) == b"yz"
        finally:
            sock.close()
        samples = wait_for(lambda: (s := prometheus(edge)) and total(s, "istio_tcp_connections_closed_total") == 1 and s, "the close")
        assert total(samples, "istio_tcp_received_bytes_total") == 1002
        assert total(samples, "istio_tcp_sent_bytes_total") == len(greeting) + 1002


def test_metrics_port_serves_istio_and_edge_metrics(tmp_path, backends):
    with start(tmp_path, backends) as edge:
        drive_traffic(edge)
        samples = wait_for(lambda: (s := prometheus(edge)) and total(s, "istio_tcp_connections_closed_total") >= 1 and s, "the TCP connection to be counted closed")
        ok = select(samples, "istio_requests_total", response_code="200")
        assert sum(v for _, v in ok) == 6
        labels = ok[0][0]
        assert labels["reporter"] == "source"
        assert labels["destination_service"] == "app.local"
        assert labels["destination_service_name"] == "app.local"
        assert labels["request_protocol"] == "http"
        assert labels["response_flags"] == "-"
        assert total(samples, "istio_requests_total", response_code="404", response_flags="NR", destination_service="unknown") == 2
        [(uf, count)] = select(samples, "istio_requests_total", response_code="503")
        assert count == 1 and uf["response_flags"] == "UF" and uf["destination_service"] == "dead.local"
        # Histograms: buckets cumulative, +Inf = count, the POST body counted in request bytes.
        assert total(samples, "istio_request_duration_milliseconds_count") == 9
        assert total(samples, "istio_request_duration_milliseconds_bucket", le="+Inf") == 9
        assert total(samples, "istio_request_duration_milliseconds_sum") > 0
        assert total(samples, "istio_request_bytes_sum", response_code="200") == 1000
        assert total(samples, "istio_response_bytes_sum", response_code="200") > 1000  # JSON bodies + the echo
        # TCP.
        assert total(samples, "istio_tcp_connections_opened_total", destination_service="echo.local") == 1
        assert total(samples, "istio_tcp_connections_closed_total", destination_service="echo.local") == 1
        assert total(samples, "istio_tcp_received_bytes_total") == len(b"hello\n")
        assert total(samples, "istio_tcp_sent_bytes_total") >= len(b"hello\n") + len(b"echo\n")
        # edge's own.
        assert total(samples, "edge_table_generation") == 1
        assert total(samples, "edge_reloads_total") == 0
        assert total(samples, "edge_config_last_reload_success") == 1
        assert total(samples, "edge_workers", state="serving") == 2
        assert total(samples, "edge_ready") == 1
        route = select(samples, "edge_route_requests_total", route="app-route", response_code_class="2xx")
        assert route and route[0][1] == 6 and route[0][0]["listener"] == "0.0.0.0:80"
        # Gauges are published once a second: the pool keeps the idle upstream connection(s) to backend a.
        later = wait_for(lambda: (s := prometheus(edge)) and total(s, "edge_upstream_pool_connections", state="idle") >= 1 and s, "pool gauges")
        assert total(later, "edge_active_connections") >= 0


def test_counters_never_go_backwards_across_a_worker_restart(tmp_path, backends):
    with start(tmp_path, backends) as edge:
        for _ in range(20):
            assert http_get(edge.port(80), "/", host="app.example.com")[0] == 200
        # A request is counted just after its response leaves: the last one may still be on its way into the stats.
        before = wait_for(lambda: total(prometheus(edge), "istio_requests_total") == 20 and 20, "20 requests counted")
        victim = edge.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in (pids := edge.worker_pids()) and len(pids) == 2, "the replacement worker")
        edge.wait_for_log(r"serves generation 1$")
        after_restart = prometheus(edge)
        assert total(after_restart, "istio_requests_total") == 20  # the dead worker's counts are kept
        assert total(after_restart, "edge_worker_restarts_total") == 1
        for _ in range(20):
            assert http_get(edge.port(80), "/", host="app.example.com")[0] == 200
        assert total(prometheus(edge), "istio_requests_total") == 40


# -------------------------------------------------------------------------------------------------- admin


def admin_json(edge: EdgeProcess, path: str) -> dict:
    status, body, headers = http_get(edge.admin_port, path)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a LISTEN socket on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port_hex = fields[1].split(":")
        if int(port_hex, 16) == port and fields[3] == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_admin_endpoints(tmp_path, backends):
    with start(tmp_path, backends) as edge:
        drive_traffic(edge)
        assert listening_addresses(edge.admin_port) == {"127.0.0.1"}  # loopback only by default
        assert listening_addresses(edge.metrics_port) == {"0.0.0.0"}

        dump = admin_json(edge, "/config_dump")
        assert dump["generation"] == 1
        assert sorted(Path(p).name for p in dump["source_files"]) == ["app-se.yaml", "dead-se.yaml", "echo-se.yaml", "gw.yaml", "routes.yaml"]
        assert dump["reloads"]["last_error"] is None and dump["reloads"]["last_ok"] is True
        assert {listener["name"] for listener in dump["table"]["listeners"]} == {"0.0.0.0_80", "0.0.0.0_31400"}
        assert "outbound|80||app.local" in dump["table"]["clusters"]

        def reported():  # workers publish their view once a second
            c = admin_json(edge, "/clusters?format=json")
            endpoints = c["clusters"]["outbound|80||app.local"]["endpoints"]
            return c["workers_reporting"] == 2 and endpoints[0]["pool"]["connects"] >= 1 and c

        clusters = wait_for(reported, "both workers' reports with the pooled connections")
        [app] = clusters["clusters"]["outbound|80||app.local"]["endpoints"]
        assert app["port"] == backends.port("a") and app["health"] == "healthy"
        assert app["pool"]["idle"] + app["pool"]["active"] >= 1
        status, body, _ = http_get(edge.admin_port, "/clusters")
        assert status == 200
        assert f"outbound|80||app.local::127.0.0.1:{backends.port('a')}::health_flags::healthy" in body.decode().splitlines()

        status, body, _ = http_get(edge.admin_port, "/stats?filter=^cluster\\.outbound\\|80\\|\\|app")
        lines = body.decode().splitlines()
        assert "cluster.outbound|80||app.local.upstream_rq_2xx: 6" in lines
        assert all(line.startswith("cluster.outbound|80||app") for line in lines)
        assert http_get(edge.admin_port, "/stats?filter=(")[0] == 400
        assert "server.live: 1" in http_get(edge.admin_port, "/stats")[1].decode().splitlines()
        assert "istio_requests_total" in http_get(edge.admin_port, "/stats/prometheus")[1].decode()

        assert http_get(edge.admin_port, "/ready")[:2] == (200, b"LIVE\n")
        info = admin_json(edge, "/server_info")
        assert info["state"] == "LIVE" and [w["state"] for w in info["workers"]] == ["serving", "serving"]
        assert http_get(edge.admin_port, "/reload")[0] == 405  # POST only
        assert http_get(edge.admin_port, "/nope")[0] == 404
        status, body, headers = http_get(edge.admin_port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html") and b"<svg" in body
        live = admin_json(edge, "/live")
        assert "app.local" in "".join(live["clusters"]) or live["times"] == []


def test_post_reload_answers_with_the_outcome_and_a_bad_edit_shows_everywhere(tmp_path, backends):
    with start(tmp_path, backends) as edge:
        edge.write_config("routes.yaml", ROUTES.replace("app-route", "app-route-2"))
        status, body, _ = http_get(edge.admin_port, "/reload", method="POST")
        document = json.loads(body)
        assert status == 200 and document["ok"] is True, document
        assert "published" in document["outcome"] or "unchanged" in document["outcome"]  # the watcher may be first
        assert admin_json(edge, "/config_dump")["generation"] == 2

        bad = ROUTES.replace("    route: [{destination: {host: app.local}}]", "    route: [{destination: {host: app.local}, weight: lots}]")
        bad_line = bad.splitlines().index("    route: [{destination: {host: app.local}, weight: lots}]") + 1
        edge.write_config("routes.yaml", bad)
        status, body, _ = http_get(edge.admin_port, "/reload", method="POST")
        document = json.loads(body)
        assert status == 422 and document["ok"] is False, document
        [error] = document["errors"]
        assert error["file"].endswith("routes.yaml") and error["line"] == bad_line

        dump = admin_json(edge, "/config_dump")
        assert dump["generation"] == 2  # the last good table stays
        assert dump["reloads"]["last_ok"] is False
        assert dump["reloads"]["last_error"]["errors"][0]["line"] == bad_line
        assert dump["reloads"]["last_error"]["generation_kept"] == 2
        samples = prometheus(edge)
        assert total(samples, "edge_config_last_reload_success") == 0
        assert total(samples, "edge_reload_failures_total") >= 1
        assert http_get(edge.port(80), "/", host="app.example.com")[0] == 200  # still served
        assert f"routes.yaml:{bad_line}: " in edge.log_text()

        # The next change is retried by itself (the watcher), and the failure clears.
        edge.write_config("routes.yaml", ROUTES.replace("app-route", "app-route-3"))
        wait_for(lambda: admin_json(edge, "/config_dump")["reloads"]["last_ok"], "the fixed config to be published")
        assert total(prometheus(edge), "edge_config_last_reload_success") == 1
        assert admin_json(edge, "/config_dump")["generation"] == 3


# ------------------------------------------------------------------------------------------- access logs


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def test_text_access_log_in_a_file_follows_logrotate(tmp_path, backends):
    path = tmp_path / "access.log"
    with start(tmp_path, backends, "--access-log", str(path)) as edge:
        drive_traffic(edge)
        lines = wait_for(lambda: len(read_lines(path)) >= 10 and read_lines(path), "10 access-log lines")
        assert len(lines) == 10  # 9 HTTP requests and 1 TCP connection, flushed within about a second
        nr = [line for line in lines if " 404 NR route_not_found " in line]
        assert len(nr) == 2
        assert '"GET / HTTP/1.1" 404 NR route_not_found - "-" 0 ' in nr[0]
        assert '"nowhere.example.com" "-" - - 127.0.0.1:' in nr[0]
        [post] = [line for line in lines if '"POST /echo HTTP/1.1"' in line]
        assert " 200 - via_upstream - \"-\" 1000 1000 " in post
        assert re.search(rf'"127\.0\.0\.1:{backends.port("a")}" outbound\|80\|\|app\.local 127\.0\.0\.1:\d+ ', post)  # + our end
        assert post.endswith(" - app-route")
        [uf] = [line for line in lines if " 503 UF " in line]
        assert "outbound|80||dead.local - " in uf  # no upstream connection, no local address
        [tcp] = [line for line in lines if '"- - -" 0 ' in line]
        assert f'"127.0.0.1:{backends.port("echo")}" outbound|9000||echo.local' in tcp

        # logrotate: move the file, SIGUSR1 the supervisor; new lines go to a new file at the old path.
        os.rename(path, tmp_path / "access.log.1")
        edge.send_signal(signal.SIGUSR1)
        edge.wait_for_log(r"SIGUSR1: access logs reopened by 2 worker\(s\)")
        for _ in range(4):
            assert http_get(edge.port(80), "/after-rotate", host="app.example.com")[0] == 200
        wait_for(lambda: len(read_lines(path)) == 4, "4 lines in the new file")
        assert all('"GET /after-rotate HTTP/1.1" 200' in line for line in read_lines(path))
        assert len(read_lines(tmp_path / "access.log.1")) == 10
        assert edge.returncode is None  # nobody died of SIGUSR1


def test_json_access_log_on_stdout(tmp_path, backends):
    with start(tmp_path, backends, "--access-log", "-", "--access-log-format", "json") as edge:
        drive_traffic(edge)
        http_get(edge.port(80), "/x?y=1", host="app.example.com", headers={"user-agent": "probe/1", "x-request-id": "rid-7"})
        lines = wait_for(lambda: len(read_lines(edge.out_path)) >= 11 and read_lines(edge.out_path), "11 JSON lines on stdout")
        records = [orjson.loads(line) for line in lines]
        assert all(list(r) == list(records[0]) for r in records)  # one fixed key order
        [probe] = [r for r in records if r["path"] == "/x?y=1"]
        assert probe["method"] == "GET" and probe["protocol"] == "HTTP/1.1"
        assert probe["response_code"] == 200 and probe["response_flags"] is None
        assert probe["user_agent"] == "probe/1"
        assert probe["request_id"] != "rid-7" and len(probe["request_id"]) == 36  # the id sent upstream: a new one
        assert probe["x_forwarded_for"] == "127.0.0.1"  # as sent upstream, the peer appended
        assert probe["authority"] == "app.example.com" and probe["route_name"] == "app-route"
        assert probe["upstream_cluster"] == "outbound|80||app.local"
        assert re.fullmatch(r"127\.0\.0\.1:\d+", probe["upstream_local_address"])  # our end of the pooled connection
        assert isinstance(probe["duration"], int) and isinstance(probe["upstream_service_time"], int)
        [post] = [r for r in records if r["method"] == "POST"]
        assert post["bytes_received"] == 1000 and post["bytes_sent"] == 1000
        [tcp] = [r for r in records if r["response_code"] == 0]
        assert tcp["method"] is None and tcp["upstream_cluster"] == "outbound|9000||echo.local"
        assert tcp["bytes_received"] == len(b"hello\n")
        assert re.fullmatch(r"127\.0\.0\.1:\d+", tcp["upstream_local_address"])


def test_custom_access_log_templates_text_and_json(tmp_path, backends):
    """Istio's meshConfig.accessLogFormat as --access-log-template, in both encodings, for HTTP and TCP lines."""
    text_path, json_path = tmp_path / "text.log", tmp_path / "json.log"
    (tmp_path / "t").mkdir()
    (tmp_path / "j").mkdir()
    template = '%RESPONSE_CODE% %REQ(:METHOD)% "%REQ(:PATH)%" %REQ(X-MISSING?USER-AGENT)% %UPSTREAM_CLUSTER_RAW% up=%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%'
    with start(tmp_path / "t", backends, "--access-log", str(text_path), "--access-log-template", template) as edge:
        drive_traffic(edge)
        http_get(edge.port(80), "/x?y=1", host="app.example.com", headers={"user-agent": "probe/2"})
        lines = wait_for(lambda: len(read_lines(text_path)) >= 11 and read_lines(text_path), "11 lines")
    [probe] = [line for line in lines if '"/x?y=1"' in line]
    assert re.fullmatch(r'200 GET "/x\?y=1" probe/2 outbound\|80\|\|app\.local up=\d+', probe)
    assert [line for line in lines if line.startswith("404 GET ")] and all(" outbound|80||app.local " not in line for line in lines if line.startswith("404"))
    assert [line for line in lines if line.startswith('0 - "-" - outbound|9000||echo.local up=-')]  # the TCP line

    json_template = '{"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "bytes": "%BYTES_SENT%", "cluster": "%UPSTREAM_CLUSTER_RAW%"}'
    with start(tmp_path / "j", backends, "--access-log", str(json_path), "--access-log-format", "json", "--access-log-template", json_template) as edge:
        drive_traffic(edge)
        records = [orjson.loads(line) for line in wait_for(lambda: len(read_lines(json_path)) >= 10 and read_lines(json_path), "10 lines")]
    assert all(list(r) == ["code", "path", "bytes", "cluster"] for r in records)
    [post] = [r for r in records if r["path"] == "/echo"]
    assert post == {"code": 200, "path": "/echo", "bytes": 1000, "cluster": "outbound|80||app.local"}
    [tcp] = [r for r in records if r["code"] == 0]
    assert tcp["path"] is None and tcp["cluster"] == "outbound|9000||echo.local"


def test_a_bad_access_log_template_stops_edge_run_before_serving(tmp_path, backends):
    edge = start(tmp_path, backends, "--access-log", "-", "--access-log-template", "%RESPONSE_CODE% %REQUEST_DURATION%", wait_ready=False)
    with edge:
        assert edge.wait(30) == 2
    assert "--access-log-template: %REQUEST_DURATION% is not a command operator edge supports" in edge.log_text()


def test_access_log_off_writes_nothing(tmp_path, backends):
    with start(tmp_path, backends) as edge:  # the default is off
        drive_traffic(edge)
        time.sleep(1.5)  # longer than the flush interval
        assert read_lines(edge.out_path) == []


OUTLIER_ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: ["flaky.example.com"]
  gateways: [gw]
  http:
  - name: flaky-route
    retries: {attempts: 0}
    route: [{destination: {host: app.local}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky}
spec:
  host: app.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
"""


def test_outlier_ejections_show_in_metrics_and_clusters(tmp_path, backends):
    cfg = {**config(backends), "flaky.yaml": OUTLIER_ROUTES}
    with EdgeProcess(tmp_path, cfg, gateway_ports=(80, TCP_PORT), workers=1) as edge:
        statuses = [http_get(edge.port(80), "/status/503", host="flaky.example.com")[0] for _ in range(4)]
        assert statuses[:2] == [503, 503] and statuses[-1] == 503  # then "no healthy upstream" (UH)
        samples = wait_for(lambda: (s := prometheus(edge)) and total(s, "edge_outlier_ejections_total") >= 1 and s, "the ejection to be published")
        assert total(samples, "edge_outlier_ejected_endpoints") == 1
        assert total(samples, "istio_requests_total", response_flags="UH") >= 1
        status, body, _ = http_get(edge.admin_port, "/clusters?format=json")
        [endpoint] = json.loads(body)["clusters"]["outbound|80||app.local"]["endpoints"]
        assert endpoint["health"] == "ejected" and endpoint["times_ejected"] == 1
        text = http_get(edge.admin_port, "/clusters")[1].decode()
        assert f"outbound|80||app.local::127.0.0.1:{backends.port('a')}::health_flags::/failed_outlier_check" in text
