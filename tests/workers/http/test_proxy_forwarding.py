"""Forwarding through the real proxy, in memory (tests/workers/http/proxy_pair.py), on both codecs: what the backend
receives byte for byte, what the client gets back, the pool's reuse rules, request bodies re-framed, 100-continue,
bodiless responses, HTTP/1.0 clients, drain, and the gateway's own replies (workers/http/replies.py).

Every request is fed whole, byte by byte, and with the next request's bytes behind it (pipelined), as h11's own
tests feed their parsers.
"""

from __future__ import annotations

import base64
import re

import pytest

from edge.table import Options
from tests.e2e import test_traffic_management as tm
from tests.workers.http.proxy_pair import CODECS, Reply, documents, get, post, proxy_pair, service_entry

# The gateways and the redirect, direct-response and connection-pool configs of tests/e2e/test_traffic_management.py,
# and an app of our own.
CONFIG = "---\n".join([
    tm.GATEWAYS,
    """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app}
spec:
  hosts: [app.example.com]
  gateways: [gw]
  http:
  - name: default
    route: [{destination: {host: app.local}}]
""",
    documents(tm.ROUTES.replace("%(bytes_body)s", base64.b64encode(tm.BYTES_BODY).decode()), "redirects", "direct", "pools"),
    documents(tm.DESTINATION_RULES, "mrpc"),
    service_entry("app.local", "10.0.0.1"),
    service_entry("mrpc.local", "10.0.0.5"),
])

APP = "10.0.0.1"
REQUEST_ID = re.compile(rb"x-request-id: ([0-9a-f-]{36})\r\n")

pytestmark = pytest.mark.parametrize("codec", CODECS)


def upstream_head(method: str, target: str, *extra: str, request_id: bytes) -> bytes:
    """The head the gateway sends for a request from CLIENT_PEER over plain HTTP (workers/headers.py's order)."""
    lines = [
        f"{method} {target} HTTP/1.1",
        "host: app.example.com",
        *extra[:-1],
        "x-forwarded-for: 10.1.2.3",
        "x-forwarded-proto: http",
        "x-envoy-external-address: 10.1.2.3",
        f"x-request-id: {request_id.decode()}",
        *extra[-1:],
        "x-envoy-attempt-count: 1",
    ]
    return ("\r\n".join(line for line in lines if line) + "\r\n\r\n").encode()


# ------------------------------------------------------------------------------------------ the request upstream


@pytest.mark.parametrize("split", ["whole", "bytes", [5, 17, 40]])
async def test_the_backend_gets_the_request_as_the_gateway_frames_it(autojump_clock, tmp_path, codec, split):
    request = get(
        "app.example.com", "/p/a?q=1", "User-Agent: t", "Connection: keep-alive", "Keep-Alive: timeout=5",
        "X-Envoy-Retry-On: 5xx", "X-Custom: v", "Te: trailers", "Proxy-Connection: x",
    )  # fmt: skip
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        response = await pair.request(request, split=split)
        assert (response.status, response.body) == (200, b"10.0.0.1:80")
        [conn] = pair.backend(APP).connections
        rid = REQUEST_ID.search(conn.received).group(1)
        # Hop-by-hop headers and Envoy's control headers are gone (TE but for `te: trailers`, which Envoy forwards);
        # the forwarded facts are added.
        assert conn.received == upstream_head("GET", "/p/a?q=1", "user-agent: t", "x-custom: v", "te: trailers", "", request_id=rid)
        assert response.raw == (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 11\r\nserver: istio-envoy\r\n"
            b"x-envoy-upstream-service-time: 0\r\n\r\n10.0.0.1:80"
        )
        await pair.settle()
        [log] = pair.logs
        assert (log.status, log.flags, log.details, log.attempts, log.upstream_host, log.route_name) == (200, "-", "via_upstream", 1, "10.0.0.1:80", "default")
        assert log.upstream_cluster == "outbound|80||app.local" and log.request_id == rid.decode()


@pytest.mark.parametrize("split", ["whole", "bytes"])
async def test_pipelined_requests_are_answered_in_order_on_one_upstream_connection(autojump_clock, tmp_path, codec, split):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(APP).answer(Reply(200, b"one", [(b"x-n", b"1")]), Reply(200, b"two"), Reply(200, b"three"))
        client = pair.client()
        client.send(get("app.example.com", "/1") + get("app.example.com", "/2") + post("app.example.com", "/3", b"body"), split)
        bodies = [(await client.response()).body for _ in range(3)]
        assert bodies == [b"one", b"two", b"three"]
        [conn] = pair.backend(APP).connections  # one upstream connection, reused in order
        assert [(r.method, r.target, r.body) for r in conn.requests] == [(b"GET", b"/1", b""), (b"GET", b"/2", b""), (b"POST", b"/3", b"body")]
        assert not client.closed
        client.send_eof()
        await client.wait_closed()
        assert client.unread == b""  # nothing but the three responses


@pytest.mark.parametrize("split", ["whole", "bytes"])
async def test_a_chunked_request_body_is_reframed_upstream(autojump_clock, tmp_path, codec, split):
    """Extensions and trailers stay at the gateway. A body read whole with its head goes with a Content-Length; one
    still arriving streams chunked (here, one chunk per byte received)."""
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
    request = b"POST /c HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        assert (await pair.request(request, split=split)).status == 200
        [conn] = pair.backend(APP).connections
        [seen] = conn.requests
        assert seen.body == b"hello world"
        assert b"x-trailer" not in conn.received and b"ext=1" not in conn.received
        if split == "whole":
            assert (seen.header(b"content-length"), seen.header(b"transfer-encoding")) == (b"11", None)
        else:
            assert (seen.header(b"content-length"), seen.header(b"transfer-encoding")) == (None, b"chunked")
            assert conn.received.endswith(b"1\r\nh\r\n1\r\ne\r\n1\r\nl\r\n1\r\nl\r\n1\r\no\r\n" + b"".join(b"1\r\n%c\r\n" % c for c in b" world") + b"0\r\n\r\n")
        await pair.settle()
        assert pair.logs[0].bytes_received == 11


async def test_expect_100_continue_is_answered_by_the_gateway(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(b"POST /up HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        await client.wait_for(lambda: client.received.endswith(b"\r\n\r\n"), "the 100")
        assert client.received.startswith(b"HTTP/1.1 100 ")  # h11 writes no reason phrase, httptools "Continue"
        assert pair.backend(APP).requests == [] or pair.backend(APP).requests[0].body == b""
        client.send(b"hello")
        response = await client.response(b"POST")
        assert response.interim == [100] and response.status == 200
        [seen] = pair.backend(APP).requests
        assert seen.body == b"hello" and seen.header(b"expect") is None  # Envoy answers Expect and drops it


async def test_expect_100_continue_to_a_local_reply_gets_no_100_and_a_close(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(b"POST /up HTTP/1.1\r\nHost: nowhere.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        response = await client.response(b"POST")
        assert response.interim == [] and response.status == 404 and response.closes
        await client.wait_closed()


async def test_head_204_and_304_answers_have_no_body(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(APP).answer(Reply(200, b"x" * 1000), Reply(204), Reply(304, headers=[(b"etag", b'"e"')]), Reply(200, b"after"))
        client = pair.client()
        client.send(get("app.example.com", "/h", method="HEAD") + get("app.example.com", "/204") + get("app.example.com", "/304") + get("app.example.com", "/next"))
        head = await client.response(b"HEAD")
        assert (head.status, head.header(b"content-length"), head.body) == (200, b"1000", b"")
        assert head.raw.endswith(b"\r\n\r\n")
        no_content = await client.response()
        assert (no_content.status, no_content.body) == (204, b"") and not no_content.has(b"transfer-encoding")
        not_modified = await client.response()
        assert (not_modified.status, not_modified.body, not_modified.header(b"etag")) == (304, b"", b'"e"')
        assert (await client.response()).body == b"after"
        assert len(pair.backend(APP).connections) == 1


async def test_an_http10_client_gets_a_close_delimited_body(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(APP).answer(Reply(200, [b"chunk1", b"chunk2"], chunked=True))
        client = pair.client()
        client.send(get("app.example.com", "/old", version="1.0"))
        await client.wait_closed()
        head, body = client.received.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"chunked" not in head.lower() and b"connection: close" in head.lower()
        assert body == b"chunk1chunk2"
        assert pair.backend(APP).requests[0].http_version == b"1.1"  # upstream, the gateway speaks HTTP/1.1


async def test_upstream_trailers_are_not_forwarded(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(APP).answer(Reply(200, [b"ab", b"cd"], chunked=True, trailers=[(b"x-checksum", b"1")]))
        response = await pair.request(get("app.example.com"))
        assert (response.status, response.body, response.header(b"transfer-encoding")) == (200, b"abcd", b"chunked")
        assert b"x-checksum" not in response.raw


# ------------------------------------------------------------------------------------------------ the pool


@pytest.mark.parametrize(
    ("first", "reused"),
    [
        (Reply(200, b"clean"), True),
        (Reply(200, b"clean", chunked=True), True),
        (Reply(200, b"bye", close=True), False),  # the backend said connection: close
        (Reply(200, b"bye", close=True, announce=False, length=False), False),  # read until close (found here: h11 pooled it)
        (Reply(200, b"more", then=b"HTTP/1.1 200 OK\r\n"), False),  # bytes beyond the response: never reused
    ],
    ids=["content-length", "chunked", "connection-close", "until-close", "trailing-bytes"],
)
async def test_an_upstream_connection_is_reused_only_after_a_clean_exchange(autojump_clock, tmp_path, codec, first, reused):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        backend = pair.backend(APP)
        backend.answer(first, Reply(200, b"second"))
        client = pair.client()
        client.send(get("app.example.com", "/1"))
        assert (await client.response()).body == first.body
        client.send(get("app.example.com", "/2"))
        assert (await client.response()).body == b"second"
        stats = pair.ctx.pools.statistics()
        if reused:
            assert len(backend.connections) == 1 and (stats["connects"], stats["reuses"]) == (1, 1)
        else:
            assert len(backend.connections) == 2 and (stats["connects"], stats["reuses"]) == (2, 0)
            assert backend.connections[0].closed_by_proxy
        assert [len(c.requests) for c in backend.connections] == ([2] if reused else [1, 1])


async def test_a_client_connection_close_does_not_close_the_upstream_connection(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        response = await pair.request(get("app.example.com", "/", "Connection: close"))
        assert response.status == 200 and response.closes
        assert pair.backend(APP).requests[0].header(b"connection") is None  # hop-by-hop: not forwarded
        assert (await pair.request(get("app.example.com"))).status == 200
        assert len(pair.backend(APP).connections) == 1


async def test_a_truncated_response_is_not_reused_and_closes_the_client(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        pair.backend(APP).answer(Reply(200, b"x" * 1000, truncate=10))
        client = pair.client()
        client.send(get("app.example.com", "/drop-mid") + get("app.example.com", "/never"))
        response = await client.response()
        await client.wait_closed()
        assert response.status == 200 and not response.complete and response.body == b"x" * 10  # never presented as whole
        await pair.settle()
        [log] = pair.logs  # the pipelined request behind it is never served
        assert (log.status, log.flags, log.details) == (200, "UPE", "upstream_reset_after_response_started")
        assert pair.ctx.pools.statistics()["idle"] == 0 and pair.backend(APP).connections[0].closed_by_proxy


async def test_max_requests_per_connection_1_opens_a_connection_per_request(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        for i in range(3):
            client.send(get("mrpc.example.com", f"/{i}"))
            assert (await client.response()).status == 200
        connections = pair.backend("10.0.0.5").connections
        assert [len(c.requests) for c in connections] == [1, 1, 1]
        assert all(c.closed_by_proxy for c in connections)


# -------------------------------------------------------------------------------------------- drain and replies


async def test_a_draining_worker_closes_connections_after_their_response(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(get("app.example.com", "/1"))
        assert not (await client.response()).closes
        pair.ctx.draining = True
        client.send(get("app.example.com", "/2") + get("app.example.com", "/3"))
        last = await client.response()
        assert last.status == 200 and last.closes
        await client.wait_closed()
        assert client.unread == b"" and len(pair.backend(APP).requests) == 2
        # A local reply says so too.
        reply = await pair.request(get("nowhere.example.com"))
        assert reply.status == 404 and reply.closes


LOCAL_REPLIES = [
    # (request, listener port, status, body, headers that must be there, flags, details, keeps the connection)
    (get("nowhere.example.com", "/x"), 80, 404, b"", {}, "NR", "route_not_found", True),
    (get("app.example.com:81", "/p?q=1"), 81, 301, b"", {b"location": b"https://app.example.com:81/p?q=1"}, "-", "via_upstream", True),
    (get("redirect.example.com", "/uri?a=b"), 80, 301, b"", {b"location": b"http://redirect.example.com/new-path?a=b"}, "-", "redirect", True),
    (get("redirect.example.com", "/auth/x"), 80, 302, b"", {b"location": b"http://other.example.com/auth/x"}, "-", "redirect", True),
    (get("redirect.example.com", "/old/page"), 80, 307, b"", {b"location": b"http://redirect.example.com/new/page"}, "-", "redirect", True),
    (get("redirect.example.com", "/port"), 80, 301, b"", {b"location": b"https://redirect.example.com:8443/port"}, "-", "redirect", True),
    (get("redirect.example.com", "/perm?x=1"), 80, 308, b"", {b"location": b"http://redirect.example.com/permanent?x=1", b"x-redirect": b"yes"}, "-", "redirect", True),
    (get("direct.example.com", "/string"), 80, 503, b"down for maintenance", {b"content-type": b"text/plain"}, "-", "direct_response", True),
    (get("direct.example.com", "/bytes"), 80, 200, tm.BYTES_BODY, {}, "-", "direct_response", True),
    (get("direct.example.com", "/empty"), 80, 204, b"", {}, "-", "direct_response", True),
    (get("app.example.com"), 82, 404, b"", {}, "NR", "route_not_found", True),  # bound to gw only, not to gw2's port
    (get("app.example.com", "/", "x_under: 1"), 80, 400, b"", {}, "-", "http1.invalid_characters", False),
    (b"GET / HTTP/1.0\r\n\r\n", 80, 400, b"", {}, "-", "missing_host_header", False),  # Envoy; not routed with an empty Host
    (get("app.example.com:443", method="CONNECT").replace(b"CONNECT /", b"CONNECT app.example.com:443"), 80, 404, b"", {}, "NR", "route_not_found", False),
]


@pytest.mark.parametrize(("request_bytes", "port", "status", "body", "headers", "flags", "details", "keeps"), LOCAL_REPLIES, ids=[
    "no-route", "https-redirect", "redirect-uri", "redirect-authority", "redirect-prefix", "redirect-port", "redirect-308-headers",
    "direct-string", "direct-bytes", "direct-empty", "other-gateway",
    "underscore-header", "http10-without-host", "connect",
])  # fmt: skip
@pytest.mark.parametrize("split", ["whole", "bytes"])
async def test_local_replies(autojump_clock, tmp_path, codec, split, request_bytes, port, status, body, headers, flags, details, keeps):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client(port)
        client.send(request_bytes, split)
        response = await client.response(request_bytes.split(b" ")[0])
        assert (response.status, response.body) == (status, body)
        for name, value in headers.items():
            assert response.header(name) == value
        assert response.header(b"server") == b"istio-envoy"
        await pair.settle()
        [log] = pair.logs
        assert (log.status, log.flags, log.details) == (status, flags, details)
        assert pair.backend(APP).requests == []  # answered by the gateway
        assert response.closes is not keeps and client.closed is not keeps
        if keeps:  # the connection serves the next request
            client.send(request_bytes)
            assert (await client.response()).status == status


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/2.0\r\nHost: app.example.com\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: app.example.com\r\nx-big: " + b"a" * (61 * 1024) + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * (61 * 1024) + b" HTTP/1.1\r\nHost: app.example.com\r\n\r\n", 414),
    ],
    ids=["garbage", "space-in-name", "cl-and-te", "two-lengths", "gzip", "http2", "big-header", "long-line"],
)
async def test_malformed_requests_get_their_status_and_reach_no_backend(autojump_clock, tmp_path, codec, request_bytes, status):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(request_bytes + get("app.example.com", "/smuggled"))
        response = await client.response()
        await client.wait_closed()
        assert response.status == status and response.closes and client.unread == b""
        await pair.settle()
        [log] = pair.logs
        assert (log.status, log.flags) == (status, "DPE")
        assert pair.backend(APP).connections == []


async def test_a_request_body_the_route_did_not_read_is_drained_and_the_connection_kept(autojump_clock, tmp_path, codec):
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(post("direct.example.com", "/string", b"x" * 5000), split=1000)
        assert (await client.response(b"POST")).status == 503
        client.send(get("app.example.com", "/after"))
        assert (await client.response()).status == 200 and not client.closed


async def test_options_reach_the_connection(autojump_clock, tmp_path, codec):
    """Table options are read per request: --server-header and --http10 reject (Istio's 426)."""
    async with proxy_pair(tmp_path, codec, CONFIG, options=Options(server_header="edge-test", accept_http10=False)) as pair:
        response = await pair.request(get("app.example.com", version="1.0"))
        assert (response.status, response.header(b"server"), response.closes) == (426, b"edge-test", True)
        response = await pair.request(get("app.example.com"))
        assert (response.status, response.header(b"server")) == (200, b"edge-test")


async def test_a_head_request_answered_locally_gets_the_head_without_the_body(autojump_clock, tmp_path, codec):
    """Found here: on h11 the reply's body made the codec raise, and the HEAD got no answer at all."""
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(get("direct.example.com", "/string", method="HEAD") + get("direct.example.com", "/string", method="HEAD"))
        for _ in range(2):
            response = await client.response(b"HEAD")
            assert (response.status, response.header(b"content-length"), response.body) == (503, b"20", b"")
        assert pair.ctx.records.connection_errors == 0 and not client.closed


@pytest.mark.parametrize("host", ["nowhere.example.com", "direct.example.com"])
async def test_an_upgrade_request_answered_locally_closes_the_connection(autojump_clock, tmp_path, codec, host):
    """Behind a front proxy that takes the connection for upgraded, the bytes behind an upgrade request are no
    requests (found here: a local reply left the connection open, and they were served: WebSocket smuggling)."""
    upgrade = get(host, "/string", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    async with proxy_pair(tmp_path, codec, CONFIG) as pair:
        client = pair.client()
        client.send(upgrade + get("app.example.com", "/smuggled"))
        response = await client.response()
        assert response.status in (404, 503) and response.closes
        await client.wait_closed()
        assert pair.backend(APP).requests == []
