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
