# The pure decisions of the HTTP/2 upstream side and the gRPC router semantics, as tables: the upstream protocol a
# cluster is compiled with, request/response heads mapped between HTTP/1.1 and HTTP/2, stream-slot accounting,
# grpc-timeout parsing/formatting/capping, gRPC status mapping of local replies and grpc-status retries.
from __future__ import annotations

import pytest

from edge import istio, table
from edge.compiler.clusters import upstream_protocol
from workers.http.retry import Outcome, TryResult, retriable, status_retriable
from workers.http2.client_rules import StreamSlots, h2_request_headers, response_head, te_trailers
from workers.route_policies import (
    format_grpc_timeout, grpc_local_reply_headers, grpc_status_retriable, grpc_timeout_s, is_grpc, parse_grpc_timeout,
    percent_encode_grpc_message,
)  # fmt: skip
from workers.http.retry import BodyState


def http(**kw) -> istio.HTTPSettings:
    return istio.HTTPSettings(**kw)


@pytest.mark.parametrize(("port", "settings", "expected"), [
    ("HTTP", None, table.UPSTREAM_HTTP1),
    ("", None, table.UPSTREAM_HTTP1),  # unset: Istio's sniffed protocol, HTTP/1.1 at a gateway
    ("HTTP2", None, table.UPSTREAM_HTTP2),
    ("grpc", None, table.UPSTREAM_HTTP2),  # protocol.Parse is case-insensitive
    ("GRPC-WEB", None, table.UPSTREAM_HTTP2),
    ("HTTP", http(h2_upgrade_policy="UPGRADE"), table.UPSTREAM_HTTP2),
    ("HTTP", http(h2_upgrade_policy="DO_NOT_UPGRADE"), table.UPSTREAM_HTTP1),
    ("HTTP", http(h2_upgrade_policy="DEFAULT"), table.UPSTREAM_HTTP1),  # the mesh default is DO_NOT_UPGRADE
    ("HTTP", http(use_client_protocol=True, h2_upgrade_policy="UPGRADE"), table.UPSTREAM_CLIENT),  # shouldH2Upgrade: no
    ("GRPC", http(use_client_protocol=True), table.UPSTREAM_HTTP2),  # setUpstreamProtocol runs last
])  # fmt: skip
def test_upstream_protocol_chosen_at_compile(port, settings, expected):
    assert upstream_protocol(port, settings) == expected


@pytest.mark.parametrize(("headers", "expected"), [
    ([(b"host", b"h"), (b"x-a", b"1")], [(b"x-a", b"1")]),
    ([(b"connection", b"close"), (b"keep-alive", b"5"), (b"proxy-connection", b"x"), (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c")], []),
    ([(b"te", b"gzip")], []),
    ([(b"te", b"trailers")], [(b"te", b"trailers")]),
    ([(b"content-length", b"5"), (b"cookie", b"a=1; b=2")], [(b"content-length", b"5"), (b"cookie", b"a=1; b=2")]),
])  # fmt: skip
def test_request_head_mapped_to_h2(headers, expected):
    out = h2_request_headers(b"POST", b"http", b"example.com", b"/p?q", headers)
    assert out[:4] == [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"example.com"), (b":path", b"/p?q")]
    assert out[4:] == expected


def test_response_head_mapped_back():
    assert response_head([(b":status", b"204"), (b"x-a", b"1"), (b"connection", b"x")]) == (204, [(b"x-a", b"1")])
    assert response_head([(b"grpc-status", b"0")]) == (0, [(b"grpc-status", b"0")])  # a trailer block
    assert response_head([(b":status", b"2000")])[0] == 0
    assert te_trailers([(b"te", b"deflate, Trailers")]) and not te_trailers([(b"te", b"trailersx")])


def test_stream_slots():
    slots = StreamSlots(local_max=2, max_requests=3)
    assert slots.limit == 2  # before SETTINGS the peer is assumed to take 100
    assert slots.take() and slots.take() and not slots.take()
    slots.give_back()
    assert slots.take() and slots.spent  # maxRequestsPerConnection reached
    slots.give_back()
    assert slots.free() == 0
    peer = StreamSlots()
    peer.peer_max = 1
    assert peer.take() and not peer.take()
    peer.give_back()
    peer.goaway = True
    assert not peer.take() and peer.spent


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"250m", 0.25), (b"5u", 5e-6), (b"7n", 7e-9), (b"12345678S", 12345678.0),
    (b"123456789S", None), (b"S", None), (b"1x", None), (b"-1S", None), (b"", None), (None, None),
])  # fmt: skip
def test_grpc_timeout_parsed(value, seconds):
    assert parse_grpc_timeout(value) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize(("seconds", "text"), [(0.25, b"250m"), (0.0001, b"1m"), (1.5, b"1500m"), (200_000.0, b"200000S"), (10**9, b"16666667M")])
def test_grpc_timeout_formatted(seconds, text):
    assert format_grpc_timeout(seconds) == text


@pytest.mark.parametrize(("route", "header", "timeout"), [
    (0.0, None, 0.0), (0.0, b"2S", 2.0), (1.0, None, 1.0), (1.0, b"2S", 1.0), (1.0, b"500m", 0.5), (1.0, b"bad", 1.0),
])  # fmt: skip
def test_grpc_timeout_capped_by_route(route, header, timeout):
    assert grpc_timeout_s(route, header) == pytest.approx(timeout)


@pytest.mark.parametrize(("content_type", "grpc"), [
    (b"application/grpc", True), (b"application/grpc+proto", True), (b"application/grpc;charset=x", True),
    (b"application/grpc-web", False), (b"application/json", False), (None, False),
])  # fmt: skip
def test_is_grpc(content_type, grpc):
    assert is_grpc(content_type) is grpc


@pytest.mark.parametrize(("status", "code"), [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14), (504, 14), (500, 2), (408, 2)])
def test_local_reply_status_mapping(status, code):
    headers = grpc_local_reply_headers(status, b"no healthy upstream")
    assert headers[:3] == [(b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code), (b"grpc-message", b"no healthy upstream")]


def test_fault_abort_keeps_its_grpc_status_and_messages_are_percent_encoded():
    given = [(b"content-type", b"application/grpc"), (b"grpc-status", b"8"), (b"grpc-message", b"fault filter abort"), (b"x-extra", b"1")]
    assert grpc_local_reply_headers(200, b"", given) == [(b"content-type", b"application/grpc"), (b"grpc-status", b"8"), (b"grpc-message", b"fault filter abort"), (b"x-extra", b"1")]
    assert percent_encode_grpc_message("50% ünïcode\n".encode()) == b"50%25 %C3%BCn%C3%AFcode%0A"


def test_grpc_retry_on_reads_the_header_status():
    policy = table.RetryPolicy(attempts=2, retry_on=("unavailable", "cancelled"))
    assert grpc_status_retriable(14, policy.retry_on) and grpc_status_retriable(1, policy.retry_on)
    assert not grpc_status_retriable(4, policy.retry_on) and not grpc_status_retriable(0, policy.retry_on)
    assert status_retriable(200, policy, 14) and not status_retriable(200, policy, 13) and not status_retriable(200, policy)
    refused = TryResult(Outcome.REFUSED)
    assert retriable(refused, table.RetryPolicy(attempts=1, retry_on=("refused-stream",)), BodyState(False, False))
    assert not retriable(refused, table.RetryPolicy(attempts=1, retry_on=("connect-failure",)), BodyState(False, False))
