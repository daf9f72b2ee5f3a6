"""Configuration that reaches the wire is validated at load (issue 10, items 9 and 10).

Before: a redirect `uri`/`authority` with CR/LF and header names with spaces passed `edge check` and produced
response splitting (a `Set-Cookie` injected) on httptools, and a crash on h11; `credentialName: ../outside` or
an absolute path read certificates outside --credentials-dir. Now `edge check` exits 1 naming file, line and
field for each, and a running gateway given such an edit keeps its last good table and keeps answering.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, EdgeProcess, http_get
from tests.security.tools import gateway

pytestmark = pytest.mark.e2e


def vs(http: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: app
spec:
  hosts: [app.example.com]
  gateways: [gw]
  http:
{http}"""


def dr(tls_or_lb: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: be
spec:
  host: be.local
  trafficPolicy:
{tls_or_lb}"""


# (name, file text, the field path the error names, words in its message); the line is the field's own line.
BAD = [
    ("redirect-uri-crlf", vs('  - redirect: {uri: "/x\\r\\nSet-Cookie: pwned=1"}\n'), "$.spec.http[0].redirect.uri", "control character"),
    ("redirect-authority-crlf", vs('  - redirect: {authority: "a.example\\r\\nSet-Cookie: pwned=1"}\n'), "$.spec.http[0].redirect.authority", "not a valid host"),
    ("redirect-uri-space", vs('  - redirect: {uri: "/a b"}\n'), "$.spec.http[0].redirect.uri", "percent-encode"),
    ("rewrite-authority", vs('  - rewrite: {authority: "evil example"}\n    route: [{destination: {host: be.local}}]\n'), "$.spec.http[0].rewrite.authority", "not a valid host"),
    ("rewrite-uri-lf", vs('  - rewrite: {uri: "/v2\\nX: y"}\n    route: [{destination: {host: be.local}}]\n'), "$.spec.http[0].rewrite.uri", "control character"),
    ("header-name-space", vs('  - headers: {response: {set: {"X Bad": "1"}}}\n    route: [{destination: {host: be.local}}]\n'), "$.spec.http[0].headers.response.set.X Bad", "not a valid HTTP header name"),
    ("header-name-colon", vs('  - headers: {request: {add: {"x-a: b": "1"}}}\n    route: [{destination: {host: be.local}}]\n'), "$.spec.http[0].headers.request.add.x-a: b", "not a valid HTTP header name"),
    ("header-value-lf", vs('  - headers: {response: {set: {x-a: "1\\nSet-Cookie: pwned=1"}}}\n    route: [{destination: {host: be.local}}]\n'), "$.spec.http[0].headers.response.set.x-a", "control character"),
    ("direct-response-600", vs("  - directResponse: {status: 600}\n"), "$.spec.http[0].directResponse.status", "not in range 200-599"),
    ("hash-cookie-name", dr('    loadBalancer: {consistentHash: {httpCookie: {name: "a;b", ttl: 0s}}}\n'), "$.spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "not a token"),
    ("hash-cookie-path", dr('    loadBalancer: {consistentHash: {httpCookie: {name: a, path: "/\\r\\nx", ttl: 0s}}}\n'), "$.spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.path", "cookie attribute"),
    ("hash-header-name", dr('    loadBalancer: {consistentHash: {httpHeaderName: "x y"}}\n'), "$.spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName", "not a valid HTTP header name"),
    ("origination-sni", dr('    tls: {mode: SIMPLE, sni: "bad name"}\n'), "$.spec.trafficPolicy.tls.sni", "not a valid DNS name"),
    ("origination-credential", dr("    tls: {mode: SIMPLE, credentialName: ../outside}\n"), "$.spec.trafficPolicy.tls.credentialName", "not a Kubernetes Secret name"),
]

SERVER_CREDENTIALS = [
    ("../outside", "not a Kubernetes Secret name"),
    ("/etc/edge/secret", "not a Kubernetes Secret name"),
    ("kubernetes://other-ns/name", "another namespace"),
]


def edge_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge", "check", str(path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("text", "field", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_edge_check_names_file_line_and_field(tmp_path, text, field, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = edge_check(path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if field in line and words in line]
    assert errors, result.stderr
    location = errors[0].split(": ")[0]
    assert location.startswith(f"{path}:") and int(location.rsplit(":", 1)[1]) > 1


@pytest.mark.parametrize(("name", "words"), SERVER_CREDENTIALS)
def test_a_credential_name_cannot_leave_the_credentials_directory(tmp_path, name, words):
    path = tmp_path / "gw.yaml"
    path.write_text(gateway("app.example.com") + f"  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [app.example.com]\n    tls: {{mode: SIMPLE, credentialName: \"{name}\"}}\n")
    result = edge_check(path)
    assert result.returncode == 1
    assert any("$.spec.servers[1].tls.credentialName" in line and words in line for line in result.stderr.splitlines()), result.stderr


def test_kubernetes_prefixed_credential_names_are_secret_names(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(gateway("app.example.com") + "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [app.example.com]\n    tls: {mode: SIMPLE, credentialName: kubernetes://app-cert}\n")
    result = edge_check(path)
    assert result.returncode == 0, result.stderr


def test_a_running_gateway_refuses_the_edit_and_keeps_serving(tmp_path):
    good = vs("  - directResponse: {status: 200, body: {string: ok}}\n")
    with EdgeProcess(tmp_path, {"gw.yaml": gateway("app.example.com"), "vs.yaml": good}, gateway_ports=(80,)) as edge:
        assert http_get(edge.port(80), "/", host="app.example.com")[:2] == (200, b"ok")
        edge.write_config("vs.yaml", BAD[0][1])
        outcome = edge.reload()
        assert "failed" in outcome
        assert "redirect.uri" in edge.log_text()
        time.sleep(0.2)
        status, body, headers = http_get(edge.port(80), "/", host="app.example.com")
        assert (status, body) == (200, b"ok") and "set-cookie" not in headers
