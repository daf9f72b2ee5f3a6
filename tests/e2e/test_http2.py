# End to end, HTTP/2 from clients: the real `edge run` (2 workers) in front of HTTP/1.1 sample backends, driven by
# curl (--http2-prior-knowledge on the plain port, --http2 with ALPN on the TLS port) and raw frames: routing per
# stream, many concurrent streams on one connection, request bodies both ways, the access log's HTTP/2, the
# Upgrade: h2c request left as HTTP/1.1 (Envoy strips it), and a drain with streams in flight (two GOAWAYs). One
# gateway for the module; the frame-level cases and the floods are tests/security/test_http2_floods.py.
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import trustme

from tests.e2e.harness import EdgeProcess, SampleBackends, http_get
from tests.e2e.test_tls_e2e import install_credential
from tests.security.h2_client import DataFrame, GoAwayFrame, H2Client, HeadersFrame

pytestmark = pytest.mark.e2e

CONFIG = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["app.example.com"]
    tls: {mode: SIMPLE, credentialName: app-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: ["app.example.com"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: app.local, subset: b}}]
  - route: [{destination: {host: app.local, subset: a}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: app}
spec:
  host: app.local
  subsets:
  - {name: a, labels: {version: v1}}
  - {name: b, labels: {version: v2}}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("h2")
    ca = trustme.CA()
    leaf = ca.issue_cert("app.example.com")
    creds = workdir / "creds"
    cert, key, ca_path = workdir / "tls.crt", workdir / "tls.key", workdir / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_path))
    install_credential(creds, "app-credential", cert, key)
    with SampleBackends(workdir / "backends", http=["v1", "v2"]) as backends:
        config = {"gw.yaml": CONFIG, "se.yaml": backends.service_entry("app.local")}
        args = ["--credentials-dir", str(creds), "--access-log", str(workdir / "access.log")]
        with EdgeProcess(workdir / "edge", config, gateway_ports=(80, 443), extra_args=args) as edge:
            edge.ca_path = ca_path
            edge.access_log = workdir / "access.log"
            yield edge


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)


def test_curl_prior_knowledge_routes_per_path(gw):
    port = gw.port(80)
    to = ("--http2-prior-knowledge", "--connect-to", f"app.example.com:80:127.0.0.1:{port}", "-w", "\n%{http_version}\n")
    # One URL per curl: curl 7.88.1 fails reusing an h2 connection it opened through --connect-to (it reports a
    # framing error before sending its second request; the frames edge sent are well-formed: checked with a relay).
    for path, instance in (("/v2/x", "v2"), ("/headers", "v1")):
        out = curl(*to, f"http://app.example.com{path}")
        assert out.returncode == 0, out.stderr
        body, version = out.stdout.split("\n")[:2]
        assert json.loads(body)["instance"] == instance and version == "2"
    joined = curl(*to, "http://app.example.com/headers", "-H", "cookie: a=1", "-H", "cookie: b=2")
    seen = json.loads(joined.stdout.split("\n")[0])
    # Cookies split across fields are joined for the HTTP/1 upstream (RFC 9113 §8.2.3); the Host is the :authority.
    assert seen["headers"]["cookie"] == "a=1; b=2" and seen["headers"]["host"] == "app.example.com"
    assert seen["http_version"] == "1.1"


def test_curl_http2_over_tls_by_alpn(gw):
    port = gw.port(443)
    out = curl("--http2", "--cacert", str(gw.ca_path), "--resolve", f"app.example.com:{port}:127.0.0.1", "-w", "\n%{http_version}", f"https://app.example.com:{port}/headers")
    assert out.returncode == 0, out.stderr
    body, version = out.stdout.rsplit("\n", 1)
    assert version == "2" and json.loads(body)["headers"]["x-forwarded-proto"] == "https"
    # A client without h2 in its ALPN gets HTTP/1.1 from the same server.
    old = curl("--http1.1", "--cacert", str(gw.ca_path), "--resolve", f"app.example.com:{port}:127.0.0.1", "-w", "\n%{http_version}", f"https://app.example.com:{port}/headers")
    assert old.returncode == 0 and old.stdout.rsplit("\n", 1)[1] == "1.1"


def test_http1_on_the_same_port_and_upgrade_h2c_is_not_honoured(gw):
    status, body, headers = http_get(gw.port(80), "/headers", host="app.example.com", headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQAAP__"})
    assert status == 200  # not 101: Envoy strips Upgrade: h2c
    seen = json.loads(body)["headers"]
    assert "upgrade" not in seen and "http2-settings" not in seen


def test_many_concurrent_streams_and_bodies_both_ways(gw):
    payloads = {i: bytes([i % 256]) * (i * 3000) for i in range(1, 60, 2)}  # up to ~177 KiB: beyond one window
    with H2Client(gw.port(80)) as client:
        for stream_id in payloads:
            client.request(stream_id, "/echo", method="POST", end_stream=False, extra=[("content-length", str(len(payloads[stream_id])))])
        pending = {i: memoryview(p) for i, p in payloads.items()}
        windows = {0: 65535, **{i: 65536 for i in payloads}}
        bodies = {i: b"" for i in payloads}
        ended: set[int] = set()
        while len(ended) < len(payloads):
            for stream_id, rest in list(pending.items()):
                room = min(windows[0], windows[stream_id], 16384, len(rest))
                if room <= 0:
                    continue
                frame = DataFrame(stream_id)
                frame.data = bytes(rest[:room])
                pending[stream_id] = rest[room:]
                if not pending[stream_id]:
                    frame.flags.add("END_STREAM")
                    del pending[stream_id]
                client.send(frame)
                windows[0] -= room
                windows[stream_id] -= room
            frame = client.next_frame(timeout_s=10)
            assert frame is not None, f"ended {len(ended)} of {len(payloads)}"
            if frame.__class__.__name__ == "WindowUpdateFrame":
                windows[frame.stream_id] = windows.get(frame.stream_id, 0) + frame.window_increment
            elif isinstance(frame, DataFrame):
                bodies[frame.stream_id] += frame.data
                if frame.data:
                    client.send(_update(0, len(frame.data)), _update(frame.stream_id, len(frame.data)))
            if isinstance(frame, (DataFrame, HeadersFrame)) and "END_STREAM" in frame.flags:
                ended.add(frame.stream_id)
        assert all(bodies[i] == payloads[i] for i in payloads)


def _update(stream_id: int, increment: int):
    from tests.security.h2_client import WindowUpdateFrame

    frame = WindowUpdateFrame(stream_id)
    frame.window_increment = increment
    return frame


def test_access_log_says_http2(gw):
    out = curl("--http2-prior-knowledge", "--connect-to", f"app.example.com:80:127.0.0.1:{gw.port(80)}", "http://app.example.com/logged-as-h2")
    assert out.returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in gw.access_log.read_text().splitlines() if "/logged-as-h2" in line] if gw.access_log.exists() else []
        if lines:
            assert '"GET /logged-as-h2 HTTP/2" 200' in lines[0]
            return
        time.sleep(0.2)
    raise AssertionError("no access log line")


def test_drain_sends_two_goaways_and_lets_streams_in_flight_finish(gw):
    # Last in the module: SIGTERM drains the gateway.
    with H2Client(gw.port(80)) as client:
        client.request(1, "/delay/2")
        time.sleep(0.5)
        gw.send_signal(signal.SIGTERM)
        goaways = []
        status = None
        done = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (done and len(goaways) == 2):
            frame = client.next_frame(timeout_s=max(0.0, deadline - time.monotonic()))
            if frame is None:
                break
            if isinstance(frame, GoAwayFrame):
                goaways.append((frame.last_stream_id, frame.error_code))
            elif isinstance(frame, HeadersFrame) and frame.stream_id == 1:
                status = dict(frame.fields)[":status"]
            if frame.stream_id == 1 and "END_STREAM" in frame.flags:
                done = True
        assert goaways[:2] == [(2**31 - 1, 0), (1, 0)]
        assert status == "200" and done
