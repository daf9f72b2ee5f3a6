# workers/access_log.py: Istio's TEXT line field for field, the JSON record, buffering, pipe-sized writes and
# reopening after logrotate.
from __future__ import annotations

import calendar
import os
from types import SimpleNamespace

import orjson
import pytest
import trio

from workers import access_log as al
from workers.access_log import JSON_KEYS, AccessLog, TcpLog, format_json, format_tcp_json, format_tcp_text, format_text, split_for_pipe
from workers.headers import Forwarded
from workers.http.codec import Request
from workers.http.log import RequestLog
from workers.log_format import compile_template

T0 = calendar.timegm((2021, 3, 26, 0, 1, 25)) + 0.979


def record(**fields) -> SimpleNamespace:
    """An access-log record with the attributes workers/http/log.RequestLog provides (the formatters read
    only these), defaults as RequestLog has them."""
    defaults = dict(
        start=T0, method="-", path="-", protocol="HTTP/1.1", status=0, flags="-", details="-", bytes_received=0,
        bytes_sent=0, upstream_host="-", upstream_cluster="-", route_name="-", authority="-", x_forwarded_for="-",
        user_agent="-", request_id="-", service_time_ms=-1, downstream_local="-", downstream_remote="-", sni="-",
        listener="-", duration_ms=0, upstream_local="-",
    )  # fmt: skip
    return SimpleNamespace(**{**defaults, **fields})


def istio_example_404() -> SimpleNamespace:
    """The 404 NR line of ISTIO-SEMANTICS 3.2 (envoyproxy/envoy#15698)."""
    return record(
        method="GET", path="/.env", status=404, flags="NR", details="route_not_found",
        x_forwarded_for="100.117.94.128", user_agent="Mozilla/5.0 ...", request_id="04cc6a38-2d53-9a7c-8f22-01703fd22eb3",
        authority="34.213.68.78", downstream_local="100.97.92.14:8080", downstream_remote="100.117.94.128:49723",
    )  # fmt: skip


def test_text_line_is_istios_default_format_field_for_field():
    assert format_text(istio_example_404()) == (
        '[2021-03-26T00:01:25.979Z] "GET /.env HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "100.117.94.128" '
        '"Mozilla/5.0 ..." "04cc6a38-2d53-9a7c-8f22-01703fd22eb3" "34.213.68.78" "-" - - 100.97.92.14:8080 '
        "100.117.94.128:49723 - -\n"
    )


def test_a_proxied_request_shows_upstream_host_cluster_and_service_time():
    log = istio_example_404()
    log.status, log.flags, log.details = 200, "-", "via_upstream"
    log.upstream_host = "172.30.76.13:8000"
    log.upstream_cluster = "outbound|8000||httpbin.default.svc.cluster.local"
    log.bytes_received, log.bytes_sent, log.duration_ms, log.service_time_ms = 12, 345, 7, 5
    log.route_name = "default"
    line = format_text(log)
    assert ' 200 - via_upstream - "-" 12 345 7 5 ' in line
    assert line.endswith('"172.30.76.13:8000" outbound|8000||httpbin.default.svc.cluster.local - 100.97.92.14:8080 100.117.94.128:49723 - default\n')


def test_json_has_istios_keys_numbers_and_nulls():
    record = orjson.loads(format_json(istio_example_404()))
    assert tuple(record) == JSON_KEYS
    assert record["start_time"] == "2021-03-26T00:01:25.979Z"
    assert record["response_code"] == 404 and record["bytes_sent"] == 0 and record["duration"] == 0
    assert record["response_flags"] == "NR" and record["path"] == "/.env"
    assert record["upstream_service_time"] is None and record["upstream_host"] is None and record["route_name"] is None
    assert record["downstream_remote_address"] == "100.117.94.128:49723"


def test_tcp_lines_use_dashes_for_the_request_and_status_0():
    log = TcpLog(T0, "0.0.0.0:31400")
    log.flags, log.upstream_host, log.upstream_cluster = "-", "127.0.0.1:9000", "outbound|9000||echo.local"
    log.bytes_received, log.bytes_sent, log.duration_ms = 11, 22, 33
    log.downstream_local, log.downstream_remote = "127.0.0.1:31400", "127.0.0.1:5555"
    assert format_tcp_text(log) == (
        '[2021-03-26T00:01:25.979Z] "- - -" 0 - - - "-" 11 22 33 - "-" "-" "-" "-" "127.0.0.1:9000" '
        "outbound|9000||echo.local - 127.0.0.1:31400 127.0.0.1:5555 - -\n"
    )
    record = orjson.loads(format_tcp_json(log))
    assert tuple(record) == JSON_KEYS
    assert record["response_code"] == 0 and record["method"] is None and record["bytes_received"] == 11


@pytest.mark.parametrize(
    ("data", "limit", "pieces"),
    [
        (b"", 10, []),
        (b"a\nb\n", 10, [b"a\nb\n"]),
        (b"aaaa\nbbbb\ncccc\n", 10, [b"aaaa\nbbbb\n", b"cccc\n"]),
        (b"aaaaaaaaaaaa\nb\n", 10, [b"aaaaaaaaaaaa\n", b"b\n"]),  # a line longer than the limit stays whole
        (b"aaaa\nbbbb", 6, [b"aaaa\n", b"bbbb"]),
    ],
)
def test_split_for_pipe_cuts_after_newlines(data, limit, pieces):
    assert split_for_pipe(data, limit) == pieces
    assert b"".join(pieces) == data


def test_lines_are_buffered_until_a_flush(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "text")
    try:
        log.write(istio_example_404())
        assert path.read_bytes() == b""  # buffered
        log.flush_now()
        assert path.read_text() == format_text(istio_example_404())
    finally:
        log.close()


async def test_the_flusher_writes_within_the_interval_and_at_once_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(al, "FLUSH_INTERVAL_S", 0.05)
    monkeypatch.setattr(al, "FLUSH_BYTES", 1024)
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "json")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.serve_flusher)
        log.write(istio_example_404())
        with trio.fail_after(5):
            while not path.read_bytes():
                await trio.sleep(0.01)
        assert len(path.read_bytes().splitlines()) == 1
        nursery.cancel_scope.cancel()
    log.close()


async def _flush_once(log: AccessLog, path) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.serve_flusher)
        log.write(istio_example_404())
        with trio.fail_after(5):
            while not path.read_bytes():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_file_is_written_from_the_event_loop_until_a_write_is_slow(tmp_path, monkeypatch):
    """Regular files are written inline (no thread hand-over per flush); a write slower than SLOW_WRITE_S moves the
    log's later writes to a thread. A pipe is always written in a thread."""
    monkeypatch.setattr(al, "FLUSH_INTERVAL_S", 0.02)
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "json")
    assert not log.threaded
    await _flush_once(log, path)
    assert not log.threaded  # a page-cache write is far below 5 ms
    monkeypatch.setattr(al, "SLOW_WRITE_S", -1.0)  # every write now counts as slow
    slow_path = tmp_path / "slow.log"
    slow = AccessLog(str(slow_path), "json")
    await _flush_once(slow, slow_path)
    assert slow.threaded
    slow.write(istio_example_404())
    slow.close()
    assert len(slow_path.read_bytes().splitlines()) == 2
    log.close()
    read_end, write_end = os.pipe()
    try:
        piped = AccessLog(f"/dev/fd/{write_end}", "json")
        assert piped.threaded
        piped.close()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_reopen_follows_logrotate(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "text")
    try:
        log.write(istio_example_404())
        os.rename(path, tmp_path / "access.log.1")  # logrotate moves the file, then signals
        log.write(istio_example_404())
        log.reopen()
        log.write(istio_example_404())
        log.flush_now()
        assert len((tmp_path / "access.log.1").read_text().splitlines()) == 2
        assert len(path.read_text().splitlines()) == 1
    finally:
        log.close()


def test_a_path_that_cannot_be_reopened_keeps_the_old_file(tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "access.log"
    warnings = []
    log = AccessLog(str(path), "text", warn=warnings.append)
    try:
        os.rename(directory, tmp_path / "gone")
        log.reopen()
        assert warnings and "cannot reopen" in warnings[0]
        log.write(istio_example_404())
        log.flush_now()
        assert (tmp_path / "gone" / "access.log").read_text().count("\n") == 1
    finally:
        log.close()


def test_a_stuck_writer_bounds_the_buffer_and_counts_drops(tmp_path, monkeypatch):
    monkeypatch.setattr(al, "MAX_PENDING_BYTES", 1000)
    log = AccessLog(str(tmp_path / "a.log"), "text")
    try:
        line = len(format_text(istio_example_404()))
        for _ in range(100):
            log.write(istio_example_404())
        assert log.lines == -(-1000 // line)  # up to the bound, and not one line more
        assert log.dropped_lines == 100 - log.lines
    finally:
        log.close()


def test_off_builds_nothing():
    log = AccessLog("off")
    assert not log.enabled
    log.write_tcp(TcpLog(T0))
    log.close()


def test_a_failing_destination_counts_lost_lines_and_warns_once():
    warnings = []
    log = AccessLog("/dev/full", "text", warn=warnings.append)  # every write fails with ENOSPC
    try:
        for _ in range(3):
            log.write(istio_example_404())
        log.flush_now()
        log.write(istio_example_404())
        log.flush_now()
        assert log.lost_lines == 4 and log.write_errors == 2
        assert len(warnings) == 1 and "No space left on device" in warnings[0]
    finally:
        log.close()


def test_a_routed_request_logs_what_went_upstream_and_the_original_path():
    """Envoy's %REQ(...)% reads the request headers after the gateway changed them: the rewritten authority,
    the X-Forwarded-For with the peer appended, the new x-request-id; the path field stays the original
    (%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%)."""
    from workers.headers import forwarded_for
    from workers.http.log import RequestLog

    request = SimpleNamespace(
        method=b"GET", target=b"/old/path?q=1", http_version=b"1.1",
        headers=[(b"host", b"client.example"), (b"x-forwarded-for", b"203.0.113.9"), (b"x-request-id", b"client-id"), (b"user-agent", b"ua")],
    )  # fmt: skip
    log = RequestLog(T0, None, request)
    assert al.request_headers(log) == ("client.example", "ua", "client-id", "203.0.113.9")  # not routed yet
    log.forwarded = forwarded_for(b"203.0.113.9", None, b"client-id", peer_ip=b"10.0.0.5", scheme=b"http")
    log.upstream_authority = b"rewritten.internal"
    authority, user_agent, request_id, xff = al.request_headers(log)
    assert (authority, user_agent, xff) == ("rewritten.internal", "ua", "203.0.113.9,10.0.0.5")
    assert request_id == log.forwarded.request_id.decode() != "client-id"
    assert (log.authority, log.x_forwarded_for, log.request_id) == (authority, xff, request_id)
    assert '"GET /old/path?q=1 HTTP/1.1"' in format_text(log)


# ------------------------------------------------------------------------------ byte-exact lines, table-driven
# Tricky records as the proxy leaves them (real RequestLog, codec Request and TcpLog objects), with their lines
# pinned byte for byte in every format: Istio's TEXT, its JSON, a custom text template and a custom JSON template.
# They were recorded from the formatter before it was rewritten for speed, so any change of output shows here.


def _down(peer=("203.0.113.9", 51000), local=("10.0.0.1", 8080), listener="0.0.0.0:80", sni=""):
    return SimpleNamespace(peer=peer, local=local, listener_key=listener, sni=sni)


def _fwd(xff, request_id, client_ip=b"203.0.113.9", from_xff=False):
    f = Forwarded()
    f.client_ip, f.client_from_xff, f.xff, f.proto, f.scheme, f.request_id = client_ip, from_xff, xff, b"http", "http", request_id
    return f


def _req(method=b"GET", target=b"/", headers=(), version=b"1.1"):
    return Request(method, target, list(headers), version)


def _http(start=T0, down=None, request=None, **fields):
    log = RequestLog(start, down, request)
    for name, value in fields.items():
        setattr(log, name, value)
    return log


def _tcp(start=T0, listener="0.0.0.0:31400", **fields):
    log = TcpLog(start, listener)
    for name, value in fields.items():
        setattr(log, name, value)
    return log


PROXIED = dict(status=200, details="via_upstream", route_name="default", upstream_host="10.1.2.3:9080",
               upstream_cluster="outbound|9080||items.default.svc.cluster.local", upstream_local="10.0.0.1:40000",
               bytes_received=12, bytes_sent=345, duration_ms=7, service_time_ms=5)


def golden_records():
    return {
        "proxied-origin-form": _http(
            down=_down(), request=_req(b"GET", b"/items?q=1", [(b"host", b"shop.example.com"), (b"user-agent", b"curl/8"), (b"x-request-id", b"client-id")]),
            forwarded=_fwd(b"203.0.113.9", b"0b9f-generated"), upstream_authority=b"items.internal", **PROXIED),
        "absolute-form-not-routed": _http(
            down=_down(), request=_req(b"GET", b"http://Abs.Example:8080/p?q=1#frag", [(b"host", b"other.example"), (b"user-agent", b"ua")]),
            status=404, flags="NR", details="route_not_found"),
        "absolute-form-routed": _http(
            down=_down(), request=_req(b"POST", b"https://abs.example/x", [(b"host", b"abs.example"), (b"x-forwarded-for", b"198.51.100.7")]),
            forwarded=_fwd(b"198.51.100.7,203.0.113.9", None), upstream_authority=b"rewritten.internal", **PROXIED),
        "absolute-form-no-authority": _http(
            down=_down(), request=_req(b"GET", b"urn:x", [(b"user-agent", b"")]), status=400, flags="DPE", details="http1.codec_error"),
        "no-request-codec-error": _http(down=_down(), status=400, flags="DPE", details="http1.codec_error"),
        "no-request-no-down": _http(start=T0 + 0.0004),
        "missing-headers": _http(down=_down(), request=_req(b"GET", b"/", []), status=404, flags="NR", details="route_not_found"),
        "empty-header-values": _http(
            down=_down(), request=_req(b"GET", b"/", [(b"host", b""), (b"user-agent", b""), (b"x-request-id", b""), (b"x-forwarded-for", b"")]),
            status=404, flags="NR", details="route_not_found"),
        "repeated-headers": _http(
            down=_down(), request=_req(b"GET", b"/r", [(b"host", b"a.example"), (b"user-agent", b"one"), (b"x-forwarded-for", b"1.1.1.1"),
                                                      (b"user-agent", b"two"), (b"host", b"b.example"), (b"x-forwarded-for", b"2.2.2.2"),
                                                      (b"x-request-id", b"r1"), (b"x-request-id", b"r2")]),
            status=404, flags="NR", details="route_not_found"),
        "non-ascii-and-escapes": _http(
            down=_down(), request=_req(b"GET", b"/caf\xc3\xa9/\xff?a=\"b\"\\", [(b"host", b"h\xe9.example"), (b"user-agent", b'caf\xe9 "q" \\ \x01\t\x7f \xff'),
                                                                             (b"x-request-id", b"id\x00\x1f")]),
            forwarded=_fwd(b"10.0.0.1,203.0.113.9", b"id\x00\x1f"), route_name="r\u00fcte-\u65e5\u672c", **{k: v for k, v in PROXIED.items() if k != "route_name"}),
        "downstream-disconnect": _http(
            down=_down(), request=_req(b"GET", b"/slow", [(b"host", b"shop.example.com")]), forwarded=_fwd(b"203.0.113.9", b"id-1"),
            upstream_authority=b"shop.example.com", status=0, flags="DC", details="downstream_remote_disconnect", route_name="default",
            upstream_host="10.1.2.3:9080", upstream_cluster="outbound|9080||items.default.svc.cluster.local", duration_ms=1500),
        "upstream-protocol-error": _http(
            down=_down(), request=_req(b"GET", b"/", [(b"host", b"shop.example.com")]), forwarded=_fwd(b"203.0.113.9", b"id-2"),
            upstream_authority=b"shop.example.com", status=502, flags="UPE", details="upstream_reset_before_response_started{protocol_error}",
            upstream_host="10.1.2.3:9080", upstream_cluster="outbound|9080||items", upstream_local="10.0.0.1:40001", service_time_ms=0, duration_ms=1),
        "http10-ipv6-client-from-xff-tls": _http(
            down=_down(peer=("::1", 4000), local=("::1", 8443), listener="[::]:443", sni="api.example.com"),
            request=_req(b"OPTIONS", b"*", [(b"host", b"api.example.com"), (b"x-forwarded-for", b"2001:db8::7")], b"1.0"),
            forwarded=_fwd(b"2001:db8::7,::1", b"id-3", client_ip=b"2001:db8::7", from_xff=True), upstream_authority=b"api.example.com",
            start=T0 + 0.9996, **PROXIED),
        "ipv4-client-from-xff": _http(
            down=_down(), request=_req(b"GET", b"/", [(b"host", b"h")]),
            forwarded=_fwd(b"192.0.2.1,203.0.113.9", b"id-4", client_ip=b"192.0.2.1", from_xff=True), start=T0 + 86400.5, status=503, flags="UH",
            details="no_healthy_upstream"),
        "namespace-record": SimpleNamespace(
            start=T0, method="GET", path="/ns", protocol="HTTP/1.1", status=200, flags="-", details="via_upstream", bytes_received=1,
            bytes_sent=2, upstream_host="-", upstream_cluster="", route_name="", authority="a", x_forwarded_for="-",
            user_agent="", request_id="-", service_time_ms=3, downstream_local="", downstream_remote="-", sni="-",
            listener="-", duration_ms=4, upstream_local="-"),
    }


def golden_tcp_records():
    return {
        "tcp-defaults": _tcp(),
        "tcp-proxied": _tcp(upstream_cluster="outbound|9000||echo.local", upstream_host="127.0.0.1:9000", bytes_received=11, bytes_sent=22,
                            duration_ms=33, downstream_local="127.0.0.1:31400", downstream_remote="127.0.0.1:5555", route_name="tcp-route",
                            upstream_local="127.0.0.1:40002"),
        "tcp-passthrough-uf": _tcp(listener="0.0.0.0:443", flags="UF", details="upstream_connect_failure", termination_details="connect_refused",
                                   sni="caf\u00e9.example", upstream_cluster="outbound|443||x", upstream_host="10.0.0.9:443", start=T0 + 0.0005),
        "tcp-empty-strings": _tcp(sni="", route_name="", flags=""),
    }


GOLDEN_TEXT_TEMPLATE = (
    '%START_TIME% "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT% '
    '"%REQ(USER-AGENT)%" "%REQ(:AUTHORITY)%" %REQ(X-FORWARDED-FOR):10% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_CLUSTER% %ROUTE_NAME%'
)
GOLDEN_JSON_TEMPLATE = (
    '{"t":"%START_TIME%","code":"%RESPONSE_CODE%","ua":"%REQ(USER-AGENT)%","authority":"%REQ(:AUTHORITY)%",'
    '"req":"%REQ(:METHOD)% %REQ(:PATH)%","xff":"%REQ(X-FORWARDED-FOR)%","route":"%ROUTE_NAME%","bytes":"%BYTES_SENT%"}'
)

# (name, TEXT line, JSON line, text template line, JSON template line)
GOLDEN_HTTP = [
    ('proxied-origin-form', b'[2021-03-26T00:01:25.979Z] "GET /items?q=1 HTTP/1.1" 200 - via_upstream - "-" 12 345 7 5 "203.0.113.9" "curl/8" "0b9f-generated" "items.internal" "10.1.2.3:9080" outbound|9080||items.default.svc.cluster.local 10.0.0.1:40000 10.0.0.1:8080 203.0.113.9:51000 - default\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":"default","method":"GET","path":"/items?q=1","protocol":"HTTP/1.1","response_code":200,"response_flags":null,"response_code_details":"via_upstream","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":12,"bytes_sent":345,"duration":7,"upstream_service_time":5,"x_forwarded_for":"203.0.113.9","user_agent":"curl/8","request_id":"0b9f-generated","authority":"items.internal","upstream_host":"10.1.2.3:9080","upstream_cluster":"outbound|9080||items.default.svc.cluster.local","upstream_local_address":"10.0.0.1:40000","downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET /items?q=1 HTTP/1.1" 200 - 345 "curl/8" "items.internal" 203.0.113. 203.0.113.9 outbound|9080||items.default.svc.cluster.local default\n', b'{"t":"2021-03-26T00:01:25.979Z","code":200,"ua":"curl/8","authority":"items.internal","req":"GET /items?q=1","xff":"203.0.113.9","route":"default","bytes":345}\n'),
    ('absolute-form-not-routed', b'[2021-03-26T00:01:25.979Z] "GET http://Abs.Example:8080/p?q=1#frag HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "-" "ua" "-" "Abs.Example:8080" "-" - - 10.0.0.1:8080 203.0.113.9:51000 - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":"GET","path":"http://Abs.Example:8080/p?q=1#frag","protocol":"HTTP/1.1","response_code":404,"response_flags":"NR","response_code_details":"route_not_found","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":"ua","request_id":null,"authority":"Abs.Example:8080","upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET http://Abs.Example:8080/p?q=1#frag HTTP/1.1" 404 NR 0 "ua" "Abs.Example:8080" - 203.0.113.9 - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":404,"ua":"ua","authority":"Abs.Example:8080","req":"GET http://Abs.Example:8080/p?q=1#frag","xff":null,"route":null,"bytes":0}\n'),
    ('absolute-form-routed', b'[2021-03-26T00:01:25.979Z] "POST https://abs.example/x HTTP/1.1" 200 - via_upstream - "-" 12 345 7 5 "198.51.100.7,203.0.113.9" "-" "-" "rewritten.internal" "10.1.2.3:9080" outbound|9080||items.default.svc.cluster.local 10.0.0.1:40000 10.0.0.1:8080 203.0.113.9:51000 - default\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":"default","method":"POST","path":"https://abs.example/x","protocol":"HTTP/1.1","response_code":200,"response_flags":null,"response_code_details":"via_upstream","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":12,"bytes_sent":345,"duration":7,"upstream_service_time":5,"x_forwarded_for":"198.51.100.7,203.0.113.9","user_agent":null,"request_id":null,"authority":"rewritten.internal","upstream_host":"10.1.2.3:9080","upstream_cluster":"outbound|9080||items.default.svc.cluster.local","upstream_local_address":"10.0.0.1:40000","downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "POST https://abs.example/x HTTP/1.1" 200 - 345 "-" "rewritten.internal" 198.51.100 203.0.113.9 outbound|9080||items.default.svc.cluster.local default\n', b'{"t":"2021-03-26T00:01:25.979Z","code":200,"ua":null,"authority":"rewritten.internal","req":"POST https://abs.example/x","xff":"198.51.100.7,203.0.113.9","route":"default","bytes":345}\n'),
    ('absolute-form-no-authority', b'[2021-03-26T00:01:25.979Z] "GET urn:x HTTP/1.1" 400 DPE http1.codec_error - "-" 0 0 0 - "-" "" "-" "-" "-" - - 10.0.0.1:8080 203.0.113.9:51000 - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":"GET","path":"urn:x","protocol":"HTTP/1.1","response_code":400,"response_flags":"DPE","response_code_details":"http1.codec_error","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET urn:x HTTP/1.1" 400 DPE 0 "" "-" - 203.0.113.9 - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":400,"ua":"","authority":null,"req":"GET urn:x","xff":null,"route":null,"bytes":0}\n'),
    ('no-request-codec-error', b'[2021-03-26T00:01:25.979Z] "- - HTTP/1.1" 400 DPE http1.codec_error - "-" 0 0 0 - "-" "-" "-" "-" "-" - - 10.0.0.1:8080 203.0.113.9:51000 - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":null,"path":null,"protocol":"HTTP/1.1","response_code":400,"response_flags":"DPE","response_code_details":"http1.codec_error","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "- - -" 400 DPE 0 "-" "-" - 203.0.113.9 - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":400,"ua":null,"authority":null,"req":"- -","xff":null,"route":null,"bytes":0}\n'),
    ('no-request-no-down', b'[2021-03-26T00:01:25.979Z] "- - HTTP/1.1" 0 - - - "-" 0 0 0 - "-" "-" "-" "-" "-" - - - - - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":null,"path":null,"protocol":"HTTP/1.1","response_code":0,"response_flags":null,"response_code_details":null,"connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":null,"downstream_remote_address":null,"requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "- - -" 0 - 0 "-" "-" - - - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":0,"ua":null,"authority":null,"req":"- -","xff":null,"route":null,"bytes":0}\n'),
    ('missing-headers', b'[2021-03-26T00:01:25.979Z] "GET / HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "-" "-" "-" "-" "-" - - 10.0.0.1:8080 203.0.113.9:51000 - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":"GET","path":"/","protocol":"HTTP/1.1","response_code":404,"response_flags":"NR","response_code_details":"route_not_found","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET / HTTP/1.1" 404 NR 0 "-" "-" - 203.0.113.9 - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":404,"ua":null,"authority":null,"req":"GET /","xff":null,"route":null,"bytes":0}\n'),
    ('empty-header-values', b'[2021-03-26T00:01:25.979Z] "GET / HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "" "" "" "" "-" - - 10.0.0.1:8080 203.0.113.9:51000 - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":"GET","path":"/","protocol":"HTTP/1.1","response_code":404,"response_flags":"NR","response_code_details":"route_not_found","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":"","user_agent":"","request_id":"","authority":"","upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET / HTTP/1.1" 404 NR 0 "" ""  203.0.113.9 - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":404,"ua":"","authority":"","req":"GET /","xff":"","route":null,"bytes":0}\n'),
    ('repeated-headers', b'[2021-03-26T00:01:25.979Z] "GET /r HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "1.1.1.1, 2.2.2.2" "one, two" "r1, r2" "a.example, b.example" "-" - - 10.0.0.1:8080 203.0.113.9:51000 - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":"GET","path":"/r","protocol":"HTTP/1.1","response_code":404,"response_flags":"NR","response_code_details":"route_not_found","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":"1.1.1.1, 2.2.2.2","user_agent":"one, two","request_id":"r1, r2","authority":"a.example, b.example","upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET /r HTTP/1.1" 404 NR 0 "one,two" "a.example, b.example" 1.1.1.1,2. 203.0.113.9 - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":404,"ua":"one,two","authority":"a.example, b.example","req":"GET /r","xff":"1.1.1.1,2.2.2.2","route":null,"bytes":0}\n'),
    ('non-ascii-and-escapes', b'[2021-03-26T00:01:25.979Z] "GET /caf\xc3\x83\xc2\xa9/\xc3\xbf?a="b"\\ HTTP/1.1" 200 - via_upstream - "-" 12 345 7 5 "10.0.0.1,203.0.113.9" "caf\xc3\xa9 "q" \\ \x01\t\x7f \xc3\xbf" "id\x00\x1f" "h\xc3\xa9.example" "10.1.2.3:9080" outbound|9080||items.default.svc.cluster.local 10.0.0.1:40000 10.0.0.1:8080 203.0.113.9:51000 - r\xc3\xbcte-\xe6\x97\xa5\xe6\x9c\xac\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":"r\xc3\xbcte-\xe6\x97\xa5\xe6\x9c\xac","method":"GET","path":"/caf\xc3\x83\xc2\xa9/\xc3\xbf?a=\\"b\\"\\\\","protocol":"HTTP/1.1","response_code":200,"response_flags":null,"response_code_details":"via_upstream","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":12,"bytes_sent":345,"duration":7,"upstream_service_time":5,"x_forwarded_for":"10.0.0.1,203.0.113.9","user_agent":"caf\xc3\xa9 \\"q\\" \\\\ \\u0001\\t\x7f \xc3\xbf","request_id":"id\\u0000\\u001f","authority":"h\xc3\xa9.example","upstream_host":"10.1.2.3:9080","upstream_cluster":"outbound|9080||items.default.svc.cluster.local","upstream_local_address":"10.0.0.1:40000","downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET /caf\xc3\x83\xc2\xa9/\xc3\xbf?a="b"\\ HTTP/1.1" 200 - 345 "caf\xc3\xa9 "q" \\ \x01\t\x7f \xc3\xbf" "h\xc3\xa9.example" 10.0.0.1,2 203.0.113.9 outbound|9080||items.default.svc.cluster.local r\xc3\xbcte-\xe6\x97\xa5\xe6\x9c\xac\n', b'{"t":"2021-03-26T00:01:25.979Z","code":200,"ua":"caf\xc3\xa9 \\"q\\" \\\\ \\u0001\\t\x7f \xc3\xbf","authority":"h\xc3\xa9.example","req":"GET /caf\xc3\x83\xc2\xa9/\xc3\xbf?a=\\"b\\"\\\\","xff":"10.0.0.1,203.0.113.9","route":"r\xc3\xbcte-\xe6\x97\xa5\xe6\x9c\xac","bytes":345}\n'),
    ('downstream-disconnect', b'[2021-03-26T00:01:25.979Z] "GET /slow HTTP/1.1" 0 DC downstream_remote_disconnect - "-" 0 0 1500 - "203.0.113.9" "-" "id-1" "shop.example.com" "10.1.2.3:9080" outbound|9080||items.default.svc.cluster.local - 10.0.0.1:8080 203.0.113.9:51000 - default\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":"default","method":"GET","path":"/slow","protocol":"HTTP/1.1","response_code":0,"response_flags":"DC","response_code_details":"downstream_remote_disconnect","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":1500,"upstream_service_time":null,"x_forwarded_for":"203.0.113.9","user_agent":null,"request_id":"id-1","authority":"shop.example.com","upstream_host":"10.1.2.3:9080","upstream_cluster":"outbound|9080||items.default.svc.cluster.local","upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET /slow HTTP/1.1" 0 DC 0 "-" "shop.example.com" 203.0.113. 203.0.113.9 outbound|9080||items.default.svc.cluster.local default\n', b'{"t":"2021-03-26T00:01:25.979Z","code":0,"ua":null,"authority":"shop.example.com","req":"GET /slow","xff":"203.0.113.9","route":"default","bytes":0}\n'),
    ('upstream-protocol-error', b'[2021-03-26T00:01:25.979Z] "GET / HTTP/1.1" 502 UPE upstream_reset_before_response_started{protocol_error} - "-" 0 0 1 0 "203.0.113.9" "-" "id-2" "shop.example.com" "10.1.2.3:9080" outbound|9080||items 10.0.0.1:40001 10.0.0.1:8080 203.0.113.9:51000 - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":"GET","path":"/","protocol":"HTTP/1.1","response_code":502,"response_flags":"UPE","response_code_details":"upstream_reset_before_response_started{protocol_error}","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":1,"upstream_service_time":0,"x_forwarded_for":"203.0.113.9","user_agent":null,"request_id":"id-2","authority":"shop.example.com","upstream_host":"10.1.2.3:9080","upstream_cluster":"outbound|9080||items","upstream_local_address":"10.0.0.1:40001","downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"203.0.113.9:51000","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "GET / HTTP/1.1" 502 UPE 0 "-" "shop.example.com" 203.0.113. 203.0.113.9 outbound|9080||items -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":502,"ua":null,"authority":"shop.example.com","req":"GET /","xff":"203.0.113.9","route":null,"bytes":0}\n'),
    ('http10-ipv6-client-from-xff-tls', b'[2021-03-26T00:01:26.979Z] "OPTIONS * HTTP/1.0" 200 - via_upstream - "-" 12 345 7 5 "2001:db8::7,::1" "-" "id-3" "api.example.com" "10.1.2.3:9080" outbound|9080||items.default.svc.cluster.local 10.0.0.1:40000 ::1:8443 [2001:db8::7]:0 api.example.com default\n', b'{"start_time":"2021-03-26T00:01:26.979Z","route_name":"default","method":"OPTIONS","path":"*","protocol":"HTTP/1.0","response_code":200,"response_flags":null,"response_code_details":"via_upstream","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":12,"bytes_sent":345,"duration":7,"upstream_service_time":5,"x_forwarded_for":"2001:db8::7,::1","user_agent":null,"request_id":"id-3","authority":"api.example.com","upstream_host":"10.1.2.3:9080","upstream_cluster":"outbound|9080||items.default.svc.cluster.local","upstream_local_address":"10.0.0.1:40000","downstream_local_address":"::1:8443","downstream_remote_address":"[2001:db8::7]:0","requested_server_name":"api.example.com"}\n', b'2021-03-26T00:01:26.979Z "OPTIONS * HTTP/1.0" 200 - 345 "-" "api.example.com" 2001:db8:: 2001:db8::7 outbound|9080||items.default.svc.cluster.local default\n', b'{"t":"2021-03-26T00:01:26.979Z","code":200,"ua":null,"authority":"api.example.com","req":"OPTIONS *","xff":"2001:db8::7,::1","route":"default","bytes":345}\n'),
    ('ipv4-client-from-xff', b'[2021-03-27T00:01:26.479Z] "GET / HTTP/1.1" 503 UH no_healthy_upstream - "-" 0 0 0 - "192.0.2.1,203.0.113.9" "-" "id-4" "h" "-" - - 10.0.0.1:8080 192.0.2.1:0 - -\n', b'{"start_time":"2021-03-27T00:01:26.479Z","route_name":null,"method":"GET","path":"/","protocol":"HTTP/1.1","response_code":503,"response_flags":"UH","response_code_details":"no_healthy_upstream","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":"192.0.2.1,203.0.113.9","user_agent":null,"request_id":"id-4","authority":"h","upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":"10.0.0.1:8080","downstream_remote_address":"192.0.2.1:0","requested_server_name":null}\n', b'2021-03-27T00:01:26.479Z "GET / HTTP/1.1" 503 UH 0 "-" "h" 192.0.2.1, 192.0.2.1 - -\n', b'{"t":"2021-03-27T00:01:26.479Z","code":503,"ua":null,"authority":"h","req":"GET /","xff":"192.0.2.1,203.0.113.9","route":null,"bytes":0}\n'),
    ('namespace-record', b'[2021-03-26T00:01:25.979Z] "GET /ns HTTP/1.1" 200 - via_upstream - "-" 1 2 4 3 "-" "" "-" "a" "-"  -  - - \n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":"GET","path":"/ns","protocol":"HTTP/1.1","response_code":200,"response_flags":null,"response_code_details":"via_upstream","connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":1,"bytes_sent":2,"duration":4,"upstream_service_time":3,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":"a","upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":null,"downstream_remote_address":null,"requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "- - -" 200 - 2 "-" "-" - -  -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":200,"ua":null,"authority":null,"req":"- -","xff":null,"route":null,"bytes":2}\n'),
]  # fmt: skip

GOLDEN_TCP = [
    ('tcp-defaults', b'[2021-03-26T00:01:25.979Z] "- - -" 0 - - - "-" 0 0 0 - "-" "-" "-" "-" "-" - - - - - -\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":null,"path":null,"protocol":null,"response_code":0,"response_flags":null,"response_code_details":null,"connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":null,"downstream_remote_address":null,"requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "- - -" 0 - 0 "-" "-" - - - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":0,"ua":null,"authority":null,"req":"- -","xff":null,"route":null,"bytes":0}\n'),
    ('tcp-proxied', b'[2021-03-26T00:01:25.979Z] "- - -" 0 - - - "-" 11 22 33 - "-" "-" "-" "-" "127.0.0.1:9000" outbound|9000||echo.local 127.0.0.1:40002 127.0.0.1:31400 127.0.0.1:5555 - tcp-route\n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":"tcp-route","method":null,"path":null,"protocol":null,"response_code":0,"response_flags":null,"response_code_details":null,"connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":11,"bytes_sent":22,"duration":33,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":"127.0.0.1:9000","upstream_cluster":"outbound|9000||echo.local","upstream_local_address":"127.0.0.1:40002","downstream_local_address":"127.0.0.1:31400","downstream_remote_address":"127.0.0.1:5555","requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "- - -" 0 - 22 "-" "-" - 127.0.0.1 outbound|9000||echo.local tcp-route\n', b'{"t":"2021-03-26T00:01:25.979Z","code":0,"ua":null,"authority":null,"req":"- -","xff":null,"route":"tcp-route","bytes":22}\n'),
    ('tcp-passthrough-uf', b'[2021-03-26T00:01:25.980Z] "- - -" 0 UF upstream_connect_failure connect_refused "-" 0 0 0 - "-" "-" "-" "-" "10.0.0.9:443" outbound|443||x - - - caf\xc3\xa9.example -\n', b'{"start_time":"2021-03-26T00:01:25.980Z","route_name":null,"method":null,"path":null,"protocol":null,"response_code":0,"response_flags":"UF","response_code_details":"upstream_connect_failure","connection_termination_details":"connect_refused","upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":"10.0.0.9:443","upstream_cluster":"outbound|443||x","upstream_local_address":null,"downstream_local_address":null,"downstream_remote_address":null,"requested_server_name":"caf\xc3\xa9.example"}\n', b'2021-03-26T00:01:25.980Z "- - -" 0 UF 0 "-" "-" - - outbound|443||x -\n', b'{"t":"2021-03-26T00:01:25.980Z","code":0,"ua":null,"authority":null,"req":"- -","xff":null,"route":null,"bytes":0}\n'),
    ('tcp-empty-strings', b'[2021-03-26T00:01:25.979Z] "- - -" 0  - - "-" 0 0 0 - "-" "-" "-" "-" "-" - - - -  \n', b'{"start_time":"2021-03-26T00:01:25.979Z","route_name":null,"method":null,"path":null,"protocol":null,"response_code":0,"response_flags":null,"response_code_details":null,"connection_termination_details":null,"upstream_transport_failure_reason":null,"bytes_received":0,"bytes_sent":0,"duration":0,"upstream_service_time":null,"x_forwarded_for":null,"user_agent":null,"request_id":null,"authority":null,"upstream_host":null,"upstream_cluster":null,"upstream_local_address":null,"downstream_local_address":null,"downstream_remote_address":null,"requested_server_name":null}\n', b'2021-03-26T00:01:25.979Z "- - -" 0 - 0 "-" "-" - - - -\n', b'{"t":"2021-03-26T00:01:25.979Z","code":0,"ua":null,"authority":null,"req":"- -","xff":null,"route":null,"bytes":0}\n'),
]  # fmt: skip


def test_the_golden_tables_cover_every_record():
    assert [row[0] for row in GOLDEN_HTTP] == list(golden_records())
    assert [row[0] for row in GOLDEN_TCP] == list(golden_tcp_records())


@pytest.mark.parametrize(("name", "text", "json", "text_template", "json_template"), GOLDEN_HTTP, ids=[row[0] for row in GOLDEN_HTTP])
def test_http_lines_are_byte_exact(name, text, json, text_template, json_template):
    log = golden_records()[name]
    assert format_text(log).encode("utf-8", "replace") == text
    assert format_json(log) == json
    assert compile_template(GOLDEN_TEXT_TEMPLATE, "text").render(log) == text_template
    assert compile_template(GOLDEN_JSON_TEMPLATE, "json").render(log) == json_template
    # the one-pass line AccessLog.write uses for proxied requests (origin-form targets): the same bytes
    if isinstance(log, RequestLog):
        one_pass = log.request is not None and log.down is not None and log.request.target.startswith(b"/")
        assert (al.request_line(log, False), al.request_line(log, True)) == ((text, json) if one_pass else (None, None))


@pytest.mark.parametrize(("name", "text", "json", "text_template", "json_template"), GOLDEN_TCP, ids=[row[0] for row in GOLDEN_TCP])
def test_tcp_lines_are_byte_exact(name, text, json, text_template, json_template):
    log = golden_tcp_records()[name]
    assert format_tcp_text(log).encode("utf-8", "replace") == text
    assert format_tcp_json(log) == json
    assert compile_template(GOLDEN_TEXT_TEMPLATE, "text").render(log) == text_template
    assert compile_template(GOLDEN_JSON_TEMPLATE, "json").render(log) == json_template


@pytest.mark.parametrize("fmt", ["text", "json", "text-template", "json-template"])
def test_the_file_gets_exactly_the_golden_lines_in_order(tmp_path, fmt):
    """What AccessLog.write / write_tcp buffer and write is the concatenation of the lines, each record once,
    also when the same record is written again (nothing cached per record leaks into the next line)."""
    column = {"text": 1, "json": 2, "text-template": 3, "json-template": 4}[fmt]
    encoding = fmt.split("-")[0]
    template = {"text-template": GOLDEN_TEXT_TEMPLATE, "json-template": GOLDEN_JSON_TEMPLATE}.get(fmt, "")
    path = tmp_path / "access.log"
    log = AccessLog(str(path), encoding, template=template)
    try:
        records, tcp_records = golden_records(), golden_tcp_records()
        for _ in range(2):
            for row in GOLDEN_HTTP:
                log.write(records[row[0]])
            for row in GOLDEN_TCP:
                log.write_tcp(tcp_records[row[0]])
        log.flush_now()
        expected = b"".join(row[column] for row in GOLDEN_HTTP) + b"".join(row[column] for row in GOLDEN_TCP)
        assert path.read_bytes() == expected * 2
        assert log.lines == 2 * (len(GOLDEN_HTTP) + len(GOLDEN_TCP))
    finally:
        log.close()
