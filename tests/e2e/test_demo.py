# The README's quick start: `./dev run` is `python -m edge.dev.demo`; the curl lines it prints must answer.
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.e2e.harness import REPO_ROOT, http_get

pytestmark = pytest.mark.e2e

DEMO_PORTS = (8080, 8443, 8444, 9001, 9002, 9003, 9004, 9443, 15021, 15090, 15000)
START_TIMEOUT_S = 40.0


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def demo():
    busy = [p for p in DEMO_PORTS if _busy(p)]
    if busy:
        pytest.skip(f"the quick start's fixed ports are in use here: {busy}")
    process = subprocess.Popen([sys.executable, "-m", "edge.dev.demo"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            try:
                if http_get(15021, "/healthz/ready", timeout_s=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the demo did not become ready")
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_printed_curl_lines_answer(demo):
    import json

    status, body, headers = http_get(8080, "/reviews/1", host="shop.example.com")
    assert status == 200 and json.loads(body)["instance"] == "reviews-v1"
    status, body, _ = http_get(8080, "/", host="shop.example.com", headers={"end-user": "jason"})
    assert json.loads(body)["instance"] == "reviews-v2"
    status, body, _ = http_get(8080, "/gone", host="old.example.com")
    assert status == 410
    https = subprocess.run(
        ["curl", "-s", "--cacert", ".demo/ca.pem", "--resolve", "api.example.com:8443:127.0.0.1", "https://api.example.com:8443/v1/headers"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert json.loads(https.stdout)["instance"] == "httpbin"
    passthrough = subprocess.run(
        ["curl", "-s", "--cacert", ".demo/ca.pem", "--resolve", "secure.example.com:8444:127.0.0.1", "https://secure.example.com:8444/"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert json.loads(passthrough.stdout)["instance"] == "secure-backend"
