"""Request smuggling, response-queue poisoning and HTTP/1 framing answers (issue 10, items 2, 3 and 8).

What these prove, on both codecs, against the real `edge run` and a real keep-alive backend that would happily
read a second request out of a body it was not told the length of (http.server):
- a client cannot nominate Content-Length, Transfer-Encoding or Host away with Connection: the backend gets
  exactly the request the gateway routed, framed by the gateway;
- a chunked request's trailers never join the head that was routed and forwarded;
- Host must be there once (RFC 9112 §3.2);
- a pooled upstream connection that says something unasked is never given to the next request (in memory, on trio's
  autojump clock: tests/workers/http/test_proxy_upstreams.py, since it takes the pool's idle time to show);
- every framing fault gets its status (400, 431, 501, 505) and nothing reaches a backend; a fault in a body
  already being forwarded gets 400 with flag DPE and the upstream exchange is reset.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.fixed_backend import FixedBackend
from tests.e2e.harness import EdgeProcess, http_get
from tests.security.tools import codec, codec_args, exchange, gateway, route_all, static_service, status, statuses

pytestmark = pytest.mark.e2e

HOST = "app.example.com"
ADMIN_FORBIDDEN = """\
  - match: [{uri: {prefix: /admin}}]
    directResponse: {status: 403, body: {string: "no admin from outside"}}
"""


def config(backend_port: int) -> dict[str, str]:
    return {
        "gw.yaml": gateway(HOST),
        "vs.yaml": route_all(HOST, "backend.local", ADMIN_FORBIDDEN),
        "se.yaml": static_service("backend.local", backend_port),
    }


def seen_paths(backend: FixedBackend) -> list[tuple[str, str]]:
    return [(s.method, s.path) for s in backend.requests()]


@codec
def test_connection_cannot_nominate_content_length_away(tmp_path, codec):
    """The issue's smuggling: POST /public whose body is a GET /admin/secret, with `Connection: content-length`.
    Before: the backend read two requests (the /admin route, which answers 403, was bypassed) and the second
    response went to the next client. Now: one request, framed with its own length; the next client gets its own."""
    smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: backend.local\r\n\r\n"
    attack = (
        b"POST /public HTTP/1.1\r\nHost: app.example.com\r\nConnection: content-length\r\n"
        b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled
    )
    with FixedBackend("be") as backend, EdgeProcess(tmp_path, config(backend.port), gateway_ports=(80,), extra_args=codec_args(codec)) as edge:
        port = edge.port(80)
        answer = exchange(port, attack + b"GET /next HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
        assert statuses(answer) == [200, 200]
        assert b'"path": "/public"' in answer and b'"path": "/next"' in answer
        # Other clients on new connections: each gets the answer to its own request.
        for i in range(4):
            code, body, _ = http_get(port, f"/other{i}", host=HOST)
            assert code == 200 and f'"path": "/other{i}"'.encode() in body
        assert ("GET", "/admin/secret") not in seen_paths(backend)
        posts = [s for s in backend.requests() if s.method == "POST"]
        assert len(posts) == 1 and posts[0].body_bytes == len(smuggled)
        assert posts[0].headers["content-length"] == str(len(smuggled))
        assert "connection" not in posts[0].headers or "content-length" not in posts[0].headers["connection"]


@codec
def test_connection_cannot_nominate_host_or_transfer_encoding_away(tmp_path, codec):
    body = b"5\r\nhello\r\n0\r\n\r\n"
    request = (
        b"POST /te HTTP/1.1\r\nHost: app.example.com\r\nConnection: host, transfer-encoding, x-drop\r\n"
        b"Transfer-Encoding: chunked\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n" + body + b"GET /after HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n"
    )
    with FixedBackend("be") as backend, EdgeProcess(tmp_path, config(backend.port), gateway_ports=(80,), extra_args=codec_args(codec)) as edge:
        assert statuses(exchange(edge.port(80), request)) == [200, 200]
        first, second = backend.requests()
        assert (first.method, first.path, first.body_bytes) == ("POST", "/te", 5)
        assert first.headers["host"] == HOST  # the route's Host, whatever Connection said
        assert first.headers.get("content-length") == "5"  # read whole, so re-framed with its length
        assert "x-drop" not in first.headers and first.headers["x-keep"] == "2"
        assert (second.method, second.path) == ("GET", "/after")


@codec
def test_trailers_stay_apart_from_the_routed_head(tmp_path, codec):
    """Item 3: the trailer section's `Host:` and `X-From-Trailer:` used to be appended to the forwarded head
    (httptools): the backend saw host trailer-host.example."""
    request = (
        b"POST /upload HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: trailer-host.example\r\nX-From-Trailer: yes\r\n\r\n"
    )
    with FixedBackend("be") as backend, EdgeProcess(tmp_path, config(backend.port), gateway_ports=(80,), extra_args=codec_args(codec)) as edge:
        assert status(exchange(edge.port(80), request)) == 200
        (seen,) = backend.requests()
        assert seen.headers["host"] == HOST
        assert "x-from-trailer" not in seen.headers
        assert seen.body_bytes == 5


# (name, request bytes, status): each refused before anything reaches the backend.
REFUSED = [
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: app.example.com\r\nHost: other.example\r\n\r\n", 400),
    ("no-host", b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400),
    ("http10-transfer-encoding", b"POST / HTTP/1.0\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("content-length-2^64+5", b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 18446744073709551621\r\n\r\nhello", 400),
    ("content-length-twice", b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("content-length-and-chunked", b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("gzip-chunked", b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("http-2.0-request-line", b"GET / HTTP/2.0\r\nHost: app.example.com\r\n\r\n", 505),
    ("http-1.2-request-line", b"GET / HTTP/1.2\r\nHost: app.example.com\r\n\r\n", 505),
    ("101-headers", b"GET / HTTP/1.1\r\nHost: app.example.com\r\n" + b"X-N: v\r\n" * 100 + b"\r\n", 431),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("bare-lf", b"GET / HTTP/1.1\nHost: app.example.com\n\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-A: a\x00b\r\n\r\n", 400),
    ("unknown-method", b"SMUGGLE / HTTP/1.1\r\nHost: app.example.com\r\n\r\n", 400),
    ("connection-nominates-xff", b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: x-forwarded-for\r\n\r\n", 400),
    ("chunk-size-2^64+5", b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n", 400),
]


@codec
def test_framing_faults_get_their_status_and_reach_no_backend(tmp_path, codec):
    with FixedBackend("be") as backend, EdgeProcess(tmp_path, config(backend.port), gateway_ports=(80,), extra_args=(*codec_args(codec), "--access-log", "-", "--access-log-format", "json")) as edge:
        port = edge.port(80)
        for name, request, expected in REFUSED:
            answer = exchange(port, request)
            assert status(answer) == expected, name
            assert b"connection: close" in answer.lower(), name
        assert backend.requests() == []
        # Valid chunk extensions (RFC 9112 §7.1.1, BWS and quoted strings) are not a fault.
        answer = exchange(port, b"POST /ext HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                b'6 ; q="x y" ; r\r\nhello!\r\n0\r\n\r\n')  # fmt: skip
        assert status(answer) == 200
        assert [(s.path, s.body_bytes) for s in backend.requests()] == [("/ext", 6)]


@codec
def test_a_fault_in_a_body_being_forwarded_is_answered_400_dpe(tmp_path, codec):
    """Item 8: a broken chunk after the head went upstream used to end in a silent close. Envoy's codec answers
    400 while no response has started, then closes and resets the upstream exchange."""
    with FixedBackend("be", delay_s=0.0) as backend, EdgeProcess(
        tmp_path, config(backend.port), gateway_ports=(80,), extra_args=(*codec_args(codec), "--access-log", "-")
    ) as edge:
        with socket.create_connection(("127.0.0.1", edge.port(80)), timeout=10) as sock:
            sock.sendall(b"POST /stream HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + b"3\r\nabc\r\n")
            time.sleep(0.5)  # the head and the first chunk are on their way upstream
            sock.sendall(b"zz\r\nbroken\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert status(answer) == 400
        wait = time.monotonic() + 5
        while b"DPE" not in edge.out_path.read_bytes() and time.monotonic() < wait:
            time.sleep(0.05)
        assert b" 400 DPE " in edge.out_path.read_bytes()
