"""The admin port cannot be reached through a browser, and its regex filter is RE2 (issue 10, item 11).

Before: the admin port checked neither Host nor Origin, so a DNS-rebinding page could read /config_dump and a
cross-site `POST /reload` succeeded; `/stats?filter=` ran Python's backtracking `re` in the supervisor (one
pattern blocked it for 4 s and readiness timed out). Now a Host that is not an IP address or localhost is 403,
a POST from another origin is 403, and the filter is RE2 (linear time), so readiness keeps answering.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse

import pytest

from tests.e2e.harness import EdgeProcess, http_get
from tests.security.tools import gateway

pytestmark = pytest.mark.e2e


def admin(edge: EdgeProcess, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", edge.admin_port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_foreign_hosts_and_cross_site_requests_are_refused(tmp_path):
    with EdgeProcess(tmp_path, {"gw.yaml": gateway()}, gateway_ports=(80,)) as edge:
        own = f"127.0.0.1:{edge.admin_port}"
        # DNS rebinding: the page's own name in Host.
        status, body = admin(edge, "GET", "/config_dump", {"Host": f"attacker.example:{edge.admin_port}"})
        assert status == 403 and b"Host" in body
        assert admin(edge, "GET", "/config_dump", {"Host": own})[0] == 200
        assert admin(edge, "GET", "/config_dump", {"Host": f"localhost:{edge.admin_port}"})[0] == 200
        assert admin(edge, "GET", "/config_dump", {"Host": f"[::1]:{edge.admin_port}"})[0] == 200
        # A cross-site form POST.
        status, body = admin(edge, "POST", "/reload", {"Host": own, "Origin": "http://attacker.example"})
        assert status == 403 and b"Origin" in body
        assert admin(edge, "POST", "/reload", {"Host": own, "Sec-Fetch-Site": "cross-site"})[0] == 403
        assert "reload #" not in edge.log_text()
        # The page itself (same origin) and curl (no Origin) still reload.
        assert admin(edge, "POST", "/reload", {"Host": own, "Origin": f"http://{own}"})[0] == 200
        assert admin(edge, "POST", "/reload", {"Host": own})[0] == 200


def test_a_pathological_stats_filter_does_not_stall_the_supervisor(tmp_path):
    """`^([a-z_.]+)+!` takes Python's re exponential time on a stat name (`cluster_manager.outlier_detection…`,
    which never holds "!"): hours per name. RE2 takes microseconds."""
    with EdgeProcess(tmp_path, {"gw.yaml": gateway()}, gateway_ports=(80,)) as edge:
        own = f"127.0.0.1:{edge.admin_port}"
        pattern = urllib.parse.quote("^([a-z_.]+)+!")
        probes: list[int] = []
        stop = threading.Event()

        def probe() -> None:  # readiness stays reachable meanwhile (a stalled supervisor would time these out)
            while not stop.is_set():
                try:
                    probes.append(http_get(edge.status_port, "/healthz/ready", timeout_s=2)[0])
                except OSError:
                    probes.append(0)
                time.sleep(0.05)

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        try:
            for _ in range(5):  # with Python's re each would take hours: the client's 10 s would fail the test
                status, _ = admin(edge, "GET", f"/stats?filter={pattern}", {"Host": own})
                assert status == 200
            status, body = admin(edge, "GET", "/stats?filter=" + urllib.parse.quote("(?<=x)y"), {"Host": own})  # not RE2
            assert status == 400 and b"filter" in body
        finally:
            stop.set()
            thread.join(5)
        assert probes and all(code == 200 for code in probes), probes
