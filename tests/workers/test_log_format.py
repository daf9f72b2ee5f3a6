"""workers/log_format.py: Istio's accessLogFormat templates (Envoy command operators), text and JSON, rendered
from the records the proxy keeps (a real RequestLog and TcpLog), table-driven."""

from __future__ import annotations

import calendar
from types import SimpleNamespace

import orjson
import pytest

from workers.access_log import TcpLog, format_text
from workers.headers import forwarded_for
from workers.http.log import RequestLog
from workers.log_format import TemplateError, compile_template

T0 = calendar.timegm((2021, 3, 26, 0, 1, 25)) + 0.979


class _Down:
    peer = ("203.0.113.9", 51000)
    local = ("10.0.0.1", 8080)
    listener_key = "0.0.0.0:80"
    sni = ""


def http_record() -> RequestLog:
    """A request proxied after a path and authority rewrite, with a 200 from the upstream."""
    request = SimpleNamespace(
        method=b"POST", target=b"/old/items?q=1", http_version=b"1.1",
        headers=[(b"host", b"shop.example.com"), (b"user-agent", b"curl/8"), (b"x-custom", b"a"), (b"x-custom", b"b"),
                 (b"x-request-id", b"client-id")],
    )  # fmt: skip
    log = RequestLog(T0, _Down(), request)
    log.forwarded = forwarded_for(None, None, b"client-id", peer_ip=b"203.0.113.9", scheme=b"https", preserve_request_id=True)
    log.upstream_authority = b"items.internal"
    log.upstream_path, log.upstream_original_path = b"/v2/items?q=1", b"/old/items?q=1"
    log.status, log.details, log.route_name = 200, "via_upstream", "items"
    log.upstream_host, log.upstream_cluster, log.upstream_local = "10.1.2.3:9080", "outbound|9080||items.default.svc.cluster.local", "10.0.0.1:40000"
    log.bytes_received, log.bytes_sent, log.duration_ms, log.service_time_ms, log.attempts = 12, 345, 7, 5, 2
    log.response_headers = [(b"content-type", b"application/json"), (b"server", b"istio-envoy")]
    return log


def tcp_record() -> TcpLog:
    log = TcpLog(T0, "0.0.0.0:31400")
    log.upstream_cluster, log.upstream_host = "outbound|9000||echo.local", "127.0.0.1:9000"
    log.downstream_remote, log.downstream_local = "198.51.100.1:4000", "127.0.0.1:31400"
    log.bytes_received, log.bytes_sent, log.duration_ms = 6, 11, 40
    return log


TEXT_CASES = [
    ("start-time", "%START_TIME%", "2021-03-26T00:01:25.979Z"),
    ("start-time-format", "%START_TIME(%Y/%m/%d %H:%M:%S.%3f)%", "2021/03/26 00:01:25.979"),
    ("start-time-6f", "%START_TIME(%s.%6f)%", "1616716885.979000"),
    ("method-path-protocol", '"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"', '"POST /old/items?q=1 HTTP/1.1"'),
    ("path-as-sent", "%REQ(:PATH)%", "/v2/items?q=1"),
    ("authority-after-rewrite", "%REQ(:AUTHORITY)%", "items.internal"),
    ("scheme", "%REQ(:SCHEME)%", "https"),
    ("xff-as-sent", "%REQ(X-FORWARDED-FOR)%", "203.0.113.9"),
    ("request-id", "%REQ(X-REQUEST-ID)%", "client-id"),
    ("repeated-header-joined", "%REQ(x-custom)%", "a,b"),
    ("absent-header", "%REQ(x-missing)%", "-"),
    ("alternative", "%REQ(x-missing?user-agent)%", "curl/8"),
    ("max-length", "%REQ(USER-AGENT):3%", "cur"),
    ("response-header", "%RESP(CONTENT-TYPE)%", "application/json"),
    ("service-time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "5"),
    ("numbers", "%RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %UPSTREAM_REQUEST_ATTEMPT_COUNT%", "200 12 345 7 2"),
    ("flags-and-details", "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%", "- via_upstream -"),
    ("upstream", "%UPSTREAM_HOST% %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS%", "10.1.2.3:9080 outbound|9080||items.default.svc.cluster.local 10.0.0.1:40000"),
    ("downstream", "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "203.0.113.9:51000 203.0.113.9 10.0.0.1"),
    ("route-and-sni", "%ROUTE_NAME% %REQUESTED_SERVER_NAME%", "items -"),
    ("percent-literal", "100%% %RESPONSE_CODE%", "100% 200"),
    ("literal-only", "hello", "hello"),
]


@pytest.mark.parametrize(("template", "line"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_text_templates(template, line):
    assert compile_template(template, "text").render(http_record()) == (line + "\n").encode()


def test_istios_default_format_as_a_template_gives_the_built_in_line():
    istio_default = (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% %RESPONSE_FLAGS% '
        '%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% '
        '%BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% '
        "%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
    )
    log = http_record()
    assert compile_template(istio_default, "text").render(log).decode() == format_text(log)


def test_tcp_records_render_with_http_fields_missing():
    template = compile_template("%PROTOCOL% %RESPONSE_CODE% %REQ(:METHOD)% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS%", "text")
    assert template.render(tcp_record()) == b"- 0 - 6 11 outbound|9000||echo.local 198.51.100.1:4000\n"


def test_json_template_keeps_order_types_and_nulls():
    template = compile_template(
        '{"code": "%RESPONSE_CODE%", "ua": "%REQ(USER-AGENT)%", "missing": "%REQ(x-missing)%", '
        '"sent": "%BYTES_SENT%", "mixed": "%RESPONSE_CODE% in %DURATION%ms", "tag": "edge"}',
        "json",
    )
    line = template.render(http_record())
    assert line.endswith(b"\n")
    record = orjson.loads(line)
    assert list(record) == ["code", "ua", "missing", "sent", "mixed", "tag"]
    assert record == {"code": 200, "ua": "curl/8", "missing": None, "sent": 345, "mixed": "200 in 7ms", "tag": "edge"}


BAD_TEMPLATES = [
    ("unknown-operator", "%REQUEST_DURATION%", "text", "%REQUEST_DURATION% is not a command operator edge supports"),
    ("unterminated", "%RESPONSE_CODE", "text", "unterminated or malformed command operator"),
    ("lone-percent", "50% done", "text", "unterminated or malformed command operator"),
    ("req-without-name", "%REQ%", "text", "needs a header name"),
    ("req-two-alternatives", "%REQ(a?b?c)%", "text", "expected NAME or NAME?ALTERNATIVE"),
    ("argument-not-taken", "%RESPONSE_CODE(x)%", "text", "takes no argument"),
    ("json-not-an-object", "%RESPONSE_CODE%", "json", "must be a JSON object"),
    ("json-list", '["%RESPONSE_CODE%"]', "json", "non-empty JSON object"),
    ("json-number-value", '{"code": 200}', "json", "the value must be a format string"),
    ("json-bad-operator", '{"d": "%RESPONSE_DURATION%"}', "json", "%RESPONSE_DURATION% is not a command operator"),
    ("empty", "  ", "text", "the template is empty"),
]


@pytest.mark.parametrize(("template", "encoding", "message"), [c[1:] for c in BAD_TEMPLATES], ids=[c[0] for c in BAD_TEMPLATES])
def test_bad_templates_are_refused_with_the_reason(template, encoding, message):
    with pytest.raises(TemplateError) as raised:
        compile_template(template, encoding)
    assert message in str(raised.value)
