# edge/settings.py: flags > EDGE_* variables > defaults, validated once.
from __future__ import annotations

import pytest

from edge.settings import RunSettings, SettingsError, build_settings, env_name, parse_labels, parse_port_map


def test_defaults():
    s = build_settings({}, {})
    assert s.config == ("/etc/edge",)
    assert s.workers >= 1
    assert (s.status_port, s.metrics_port, s.admin_port, s.admin_bind) == (15021, 15090, 15000, "127.0.0.1")
    assert s.gateway_labels == {"istio": "ingressgateway"}
    assert (s.access_log, s.access_log_format, s.drain_timeout_s, s.drain_delay_s) == ("off", "text", 5.0, 0.0)
    assert (s.accept_http10, s.shadow_host_suffix, s.server_header, s.cluster_domain) == (True, False, "istio-envoy", "cluster.local")
    assert s.port_map == {}


def test_flags_win_over_environment():
    env = {"EDGE_WORKERS": "3", "EDGE_PORT_MAP": "80=8080", "EDGE_CONFIG": "a:b", "EDGE_HTTP10": "reject", "EDGE_ACCESS_LOG": "-"}
    s = build_settings({"workers": "5", "config": None}, env)
    assert (s.workers, s.port_map, s.config, s.accept_http10, s.access_log) == (5, {80: 8080}, ("a", "b"), False, "-")
    s = build_settings({"config": ["x", "y"], "port_map": "443=8443,80=0", "shadow_host_suffix": True}, env)
    assert (s.config, s.port_map, s.shadow_host_suffix) == (("x", "y"), {443: 8443, 80: 0}, True)


def test_every_flag_has_a_variable():
    assert env_name("--port-map") == "EDGE_PORT_MAP"
    env = {
        "EDGE_STATUS_PORT": "1", "EDGE_METRICS_PORT": "2", "EDGE_ADMIN_PORT": "3", "EDGE_ADMIN_BIND": "::1",
        "EDGE_GATEWAY_LABELS": "app=edge", "EDGE_CREDENTIALS_DIR": "/c", "EDGE_ACCESS_LOG_FORMAT": "json",
        "EDGE_DRAIN_TIMEOUT": "2.5", "EDGE_DRAIN_DELAY": "1", "EDGE_SHADOW_HOST_SUFFIX": "yes", "EDGE_SERVER_HEADER": "",
        "EDGE_CLUSTER_DOMAIN": "corp", "EDGE_NUM_TRUSTED_PROXIES": "2", "EDGE_PRESERVE_EXTERNAL_REQUEST_ID": "on",
        "EDGE_PROXY_PROTOCOL": "true", "EDGE_DNS_REFRESH_RATE": "30", "EDGE_STREAM_IDLE_TIMEOUT": "60",
    }
    s = build_settings({}, env)
    assert s == RunSettings(
        workers=s.workers, status_port=1, metrics_port=2, admin_port=3, admin_bind="::1", gateway_labels={"app": "edge"},
        credentials_dir="/c", access_log_format="json", drain_timeout_s=2.5, drain_delay_s=1.0, shadow_host_suffix=True,
        server_header="", cluster_domain="corp", num_trusted_proxies=2, preserve_external_request_id=True, proxy_protocol=True,
        dns_refresh_rate_s=30.0, stream_idle_timeout_s=60.0,
    )


def test_settings_become_table_and_compile_options():
    s = build_settings({"http10": "reject", "server_header": "edge", "gateway_labels": "a=b", "workers": "3", "num_trusted_proxies": "1", "preserve_external_request_id": True, "proxy_protocol": True}, {})
    options = s.table_options()
    assert (options.server_header, options.accept_http10, options.workers) == ("edge", False, 3)
    assert (options.num_trusted_proxies, options.preserve_external_request_id, options.proxy_protocol) == (1, True, True)
    assert s.compile_options().table_options == options
    assert s.compile_options().gateway_labels == {"a": "b"}


@pytest.mark.parametrize(
    "text, expected",
    [("80=8080", {80: 8080}), ("80=8080, 443=8443", {80: 8080, 443: 8443}), ("", {})],
)
def test_parse_port_map(text, expected):
    assert parse_port_map(text) == expected


@pytest.mark.parametrize("text", ["80", "80=x", "0=1", "70000=1", "80=1,80=2"])
def test_parse_port_map_rejects(text):
    with pytest.raises(SettingsError):
        parse_port_map(text)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"num_trusted_proxies": "x"}, "--num-trusted-proxies: 'x' is not a number"),
        ({"num_trusted_proxies": "-1"}, "--num-trusted-proxies: must be between 0 and 64"),
        ({"num_trusted_proxies": "65"}, "--num-trusted-proxies: must be between 0 and 64"),
        ({"dns_refresh_rate": "soon"}, "--dns-refresh-rate: 'soon' is not a number of seconds"),
        ({"dns_refresh_rate": "0.05"}, "--dns-refresh-rate: '0.05' is below 0.1 s"),
        ({"http2_initial_stream_window_size": "1000"}, "--http2-initial-stream-window-size: must be between 65535 and 2147483647"),
        ({"http2_initial_connection_window_size": "2147483648"}, "--http2-initial-connection-window-size: must be between 65535 and 2147483647"),
        ({"http2_max_concurrent_streams": "0"}, "--http2-max-concurrent-streams: must be between 1 and 2147483647"),
    ],
)
def test_bad_values_name_their_flag(flags, message):
    with pytest.raises(SettingsError) as raised:
        build_settings(flags, {})
    assert str(raised.value) == message


def test_access_log_template_is_validated_against_its_encoding():
    s = build_settings({"access_log_template": "%RESPONSE_CODE% %REQ(:PATH)%"}, {})
    assert s.access_log_template == "%RESPONSE_CODE% %REQ(:PATH)%"
    s = build_settings({"access_log_format": "json", "access_log_template": '{"code": "%RESPONSE_CODE%"}'}, {})
    assert s.access_log_template == '{"code": "%RESPONSE_CODE%"}'
    with pytest.raises(SettingsError) as raised:
        build_settings({"access_log_template": "%NOPE%"}, {})
    assert str(raised.value).startswith("--access-log-template: %NOPE% is not a command operator edge supports")
    with pytest.raises(SettingsError) as raised:  # a text template given with the JSON encoding
        build_settings({}, {"EDGE_ACCESS_LOG_FORMAT": "json", "EDGE_ACCESS_LOG_TEMPLATE": "%RESPONSE_CODE%"})
    assert str(raised.value).startswith("EDGE_ACCESS_LOG_TEMPLATE: with --access-log-format json the template must be a JSON object")


def test_bad_variable_is_named():
    with pytest.raises(SettingsError) as raised:
        build_settings({}, {"EDGE_PRESERVE_EXTERNAL_REQUEST_ID": "maybe"})
    assert str(raised.value).startswith("EDGE_PRESERVE_EXTERNAL_REQUEST_ID: 'maybe' is not a boolean")


def test_parse_labels():
    assert parse_labels("istio=ingressgateway, app = edge") == {"istio": "ingressgateway", "app": "edge"}
    with pytest.raises(SettingsError):
        parse_labels("=x")


def test_stream_idle_timeout_reaches_the_table():
    assert build_settings({}, {}).table_options().stream_idle_timeout_s == 300.0  # Envoy's default
    assert build_settings({"stream_idle_timeout": "0"}, {}).table_options().stream_idle_timeout_s == 0.0  # off
    with pytest.raises(SettingsError, match="--stream-idle-timeout"):
        build_settings({"stream_idle_timeout": "soon"}, {})


@pytest.mark.parametrize("value", ["edge\r\nSet-Cookie: a=b", "a\x00b"])
def test_a_server_header_that_would_split_the_response_is_refused(value):
    with pytest.raises(SettingsError, match="--server-header: .*control character"):
        build_settings({"server_header": value}, {})
