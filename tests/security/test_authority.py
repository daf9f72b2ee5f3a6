"""The Host / authority is validated before anything routes on it (issue 10, item 7).

Before: `Host: evil.com#.example.com` matched `*.example.com`, and httpsRedirect answered
`location: https://evil.com#.example.com/login`; hosts with a space or non-ASCII bytes were routed and forwarded.
Now an authority must be RFC 3986 host[:port] (a reg-name or an IP-literal, a port of at most 5 digits): 400
otherwise, on both codecs, and nothing reaches a backend.
"""

from __future__ import annotations

import pytest

from tests.e2e.fixed_backend import FixedBackend
from tests.e2e.harness import EdgeProcess
from tests.security.tools import codec, codec_args, exchange, route_all, static_service, status

pytestmark = pytest.mark.e2e

REDIRECTING = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 8080, name: plain, protocol: HTTP}
    hosts: ["*.example.com"]
"""

BAD_HOSTS = [
    b"evil.com#.example.com",
    b"evil.com/.example.com",
    b"a b.example.com",
    b"\xc3\xa9.example.com",
    b"user@app.example.com",
    b"app.example.com:80:80",
    b"app.example.com:123456",
    b"[::1",
]


@codec
def test_invalid_authorities_are_refused_before_routing(tmp_path, codec):
    with FixedBackend("be") as backend:
        config = {"gw.yaml": REDIRECTING, "vs.yaml": route_all("*.example.com", "be.local", name="wild"), "se.yaml": static_service("be.local", backend.port)}
        with EdgeProcess(tmp_path, config, gateway_ports=(80, 8080), extra_args=codec_args(codec)) as edge:
            for host in BAD_HOSTS:
                for port in (edge.port(80), edge.port(8080)):
                    answer = exchange(port, b"GET /login HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                    assert status(answer) == 400, host
                    assert b"location:" not in answer.lower()
            # The same authorities in an absolute-form target (where "#", "/" and a space end the authority anyway).
            for host in (b"user@app.example.com", b"app.example.com:80:80", b"app.example.com:123456", b"[::1", b"%zz.example.com"):
                answer = exchange(edge.port(8080), b"GET http://" + host + b"/login HTTP/1.1\r\nHost: app.example.com\r\n\r\n", shut=True)
                assert status(answer) == 400, host
            assert backend.requests() == []
            # A valid host still redirects as before, and is still proxied on the plain port.
            answer = exchange(edge.port(80), b"GET /login?x=1 HTTP/1.1\r\nHost: App.Example.com:80\r\nConnection: close\r\n\r\n")
            assert status(answer) == 301 and b"\r\nlocation: https://App.Example.com:80/login?x=1\r\n" in answer
            answer = exchange(edge.port(8080), b"GET /login HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
            assert status(answer) == 200 and [s.headers["host"] for s in backend.requests()] == ["app.example.com"]
