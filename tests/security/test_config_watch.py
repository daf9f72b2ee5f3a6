"""A file of another kind in a watched config directory does not trigger reloads (issue 10, item 13).

Before: an access log written into the config directory triggered a reload on each write, and each reload logged
a line, so it never stopped (40 % of a core). Now only what the loader reads (.yaml, .yml, .json, directories)
counts; the log grows and no reload happens, while a real edit is still picked up.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import EdgeProcess, http_get
from tests.security.tools import gateway

pytestmark = pytest.mark.e2e

DIRECT = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: app}}
spec:
  hosts: [app.example.com]
  gateways: [gw]
  http:
  - directResponse: {{status: 200, body: {{string: "{text}"}}}}
"""


def test_an_access_log_in_the_config_directory_never_reloads(tmp_path):
    log_path = tmp_path / "conf" / "access.log"
    config = {"gw.yaml": gateway("app.example.com"), "vs.yaml": DIRECT.format(text="v1")}
    with EdgeProcess(tmp_path, config, gateway_ports=(80,), extra_args=("--access-log", str(log_path))) as edge:
        for _ in range(30):
            assert http_get(edge.port(80), "/", host="app.example.com")[:2] == (200, b"v1")
            time.sleep(0.05)
        time.sleep(1.5)  # the access log is flushed every second: the writes happen in the directory
        assert log_path.stat().st_size > 0
        assert "reload #" not in edge.log_text()
        edge.write_config("vs.yaml", DIRECT.format(text="v2"))
        edge.wait_for_log(r"reload #1 ")
        deadline = time.monotonic() + 10
        while http_get(edge.port(80), "/", host="app.example.com")[1] != b"v2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http_get(edge.port(80), "/", host="app.example.com")[1] == b"v2"
        time.sleep(1.5)
        assert "reload #2 " not in edge.log_text()
