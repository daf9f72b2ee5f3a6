# Settings of `edge run`: every flag, its EDGE_* environment variable and its default, parsed into one frozen
# RunSettings value that the supervisor receives.
#
# Rules:
# - Precedence: command-line flag > environment variable > default.
# - The variable of a flag is EDGE_ + the flag name upper-cased with "-" → "_" (--port-map → EDGE_PORT_MAP).
#   The repeatable --config takes a list separated by os.pathsep (":") in EDGE_CONFIG; boolean flags take
#   1/true/yes/on or 0/false/no/off.
# - Values are validated here, once: a bad value is a SettingsError naming the flag or variable, and the
#   supervisor trusts what it gets.
from __future__ import annotations

import os
from typing import Mapping

import msgspec

from edge.errors import EdgeError

DEFAULT_CONFIG_DIR = "/etc/edge"
DEFAULT_CREDENTIALS_DIR = "/etc/edge/credentials"
DEFAULT_GATEWAY_LABELS = "istio=ingressgateway"
ACCESS_LOG_OFF = "off"
ACCESS_LOG_STDOUT = "-"
ACCESS_LOG_FORMATS = ("text", "json")
HTTP10_MODES = ("accept", "reject")
HTTP_CODECS = ("h11", "httptools")
MIN_DNS_REFRESH_S = 0.1  # a floor against a busy loop of lookups
MAX_TRUSTED_PROXIES = 64  # an X-Forwarded-For longer than the head limit allows is no use

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class SettingsError(EdgeError):
    """A flag or EDGE_* variable has a value edge cannot use."""


class RunSettings(msgspec.Struct, frozen=True, kw_only=True):
    config: tuple[str, ...] = (DEFAULT_CONFIG_DIR,)  # files or directories, loaded together
    workers: int = 1  # worker processes; the CLI default is os.cpu_count()
    port_map: dict[int, int] = {}  # Gateway port.number → port actually bound
    status_port: int = 15021  # GET /healthz/ready
    metrics_port: int = 15090  # GET /stats/prometheus
    admin_port: int = 15000
    admin_bind: str = "127.0.0.1"
    gateway_labels: dict[str, str] = msgspec.field(default_factory=lambda: {"istio": "ingressgateway"})  # vs Gateway.selector
    credentials_dir: str = DEFAULT_CREDENTIALS_DIR  # <dir>/<credentialName>/{tls.crt,tls.key,ca.crt}
    access_log: str = ACCESS_LOG_OFF  # "off", "-" (stdout) or a file path
    access_log_format: str = "text"  # "text" (Istio's default TEXT format) or "json"
    access_log_template: str = ""  # Istio's meshConfig.accessLogFormat: Envoy command operators ("" = the default)
    drain_timeout_s: float = 5.0  # SIGTERM: finish in-flight requests for at most this long
    drain_delay_s: float = 0.0  # SIGTERM: keep accepting (readiness already failing) for this long first
    accept_http10: bool = True  # --http10 reject reproduces Istio's 426 for HTTP/1.0
    shadow_host_suffix: bool = False  # Istio ≤1.27: mirrored requests get "-shadow" appended to the Host
    server_header: str = "istio-envoy"  # `server` response header; "" passes the upstream's through
    cluster_domain: str = "cluster.local"  # short host names become <name>.<ns>.svc.<domain>
    request_headers_timeout_s: float = 10.0  # slow-client protection: a started request head must finish
    stream_idle_timeout_s: float = 300.0  # a request whose bytes stop moving (Envoy's stream_idle_timeout; 0 = off)
    idle_timeout_s: float = 3600.0  # client connections with no request in flight (Envoy's default)
    max_connections_per_worker: int = 10_000
    http_codec: str = "h11"  # "h11" (the reference) or "httptools" (the accelerated codec, edge[fast])
    num_trusted_proxies: int = 0  # Istio's gatewayTopology.numTrustedProxies: X-Forwarded-For hops trusted
    preserve_external_request_id: bool = False  # Envoy's option: keep a client's x-request-id
    proxy_protocol: bool = False  # Istio's gatewayTopology.proxyProtocol: a PROXY header starts every connection
    dns_refresh_rate_s: float | None = None  # Istio's meshConfig.dnsRefreshRate (None: each cluster's, 60 s)

    def table_options(self):
        """The per-table switches workers read (edge.table.Options)."""
        from edge.table import Options

        return Options(
            server_header=self.server_header,
            accept_http10=self.accept_http10,
            shadow_host_suffix=self.shadow_host_suffix,
            cluster_domain=self.cluster_domain,
            request_headers_timeout_s=self.request_headers_timeout_s,
            stream_idle_timeout_s=self.stream_idle_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            max_connections_per_worker=self.max_connections_per_worker,
            num_trusted_proxies=self.num_trusted_proxies,
            preserve_external_request_id=self.preserve_external_request_id,
            proxy_protocol=self.proxy_protocol,
            workers=self.workers,
        )

    def compile_options(self):
        from edge.compiler import CompileOptions

        return CompileOptions(gateway_labels=dict(self.gateway_labels), cluster_domain=self.cluster_domain, table_options=self.table_options())


def env_name(flag: str) -> str:
    return "EDGE_" + flag.lstrip("-").upper().replace("-", "_")


def parse_port_map(text: str, where: str = "--port-map") -> dict[int, int]:
    """"80=8080,443=8443" → {80: 8080, 443: 8443}."""
    out: dict[int, int] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        src, sep, dst = item.partition("=")
        if not sep:
            raise SettingsError(f"{where}: {item!r} is not GATEWAY_PORT=BOUND_PORT")
        a, b = _port(src, where, allow_zero=False), _port(dst, where, allow_zero=True)
        if a in out:
            raise SettingsError(f"{where}: port {a} is mapped twice")
        out[a] = b
    return out


def parse_labels(text: str, where: str = "--gateway-labels") -> dict[str, str]:
    """"istio=ingressgateway,app=edge" → {"istio": "ingressgateway", "app": "edge"}."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{where}: {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_bool(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{where}: {text!r} is not a boolean (1/0, true/false, yes/no, on/off)")


def _port(text: str, where: str, allow_zero: bool) -> int:
    try:
        port = int(text.strip())
    except ValueError:
        raise SettingsError(f"{where}: {text.strip()!r} is not a port number") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise SettingsError(f"{where}: port {port} is out of range")
    return port


def _seconds(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{where}: {text!r} is not a number of seconds") from None
    if value < 0 or value != value or value == float("inf"):
        raise SettingsError(f"{where}: {text!r} must be a finite number of seconds >= 0")
    return value


def build_settings(flags: Mapping[str, object], environ: Mapping[str, str] | None = None) -> RunSettings:
    """Flags as argparse gives them (None = not given) + environment → RunSettings."""
    env = os.environ if environ is None else environ

    def pick(name: str, flag: str):
        value = flags.get(name)
        if value is not None and value != []:
            return value, flag
        var = env_name(flag)
        if var in env:
            return env[var], var
        return None, ""

    kw: dict[str, object] = {}
    value, where = pick("config", "--config")
    if value is not None:
        paths = tuple(value) if isinstance(value, list) else tuple(p for p in str(value).split(os.pathsep) if p)
        if not paths:
            raise SettingsError(f"{where}: no path given")
        kw["config"] = paths
    value, where = pick("workers", "--workers")
    if value is not None:
        try:
            workers = int(value)
        except ValueError:
            raise SettingsError(f"{where}: {value!r} is not a number") from None
        if workers < 1:
            raise SettingsError(f"{where}: needs at least 1 worker")
        kw["workers"] = workers
    else:
        kw["workers"] = os.cpu_count() or 1
    value, where = pick("port_map", "--port-map")
    if value is not None:
        kw["port_map"] = parse_port_map(str(value), where)
    for name, flag in (("status_port", "--status-port"), ("metrics_port", "--metrics-port"), ("admin_port", "--admin-port")):
        value, where = pick(name, flag)
        if value is not None:
            kw[name] = _port(str(value), where, allow_zero=True)
    value, where = pick("admin_bind", "--admin-bind")
    if value is not None:
        kw["admin_bind"] = str(value)
    value, where = pick("gateway_labels", "--gateway-labels")
    if value is not None:
        kw["gateway_labels"] = parse_labels(str(value), where)
    value, where = pick("credentials_dir", "--credentials-dir")
    if value is not None:
        kw["credentials_dir"] = str(value)
    value, where = pick("access_log", "--access-log")
    if value is not None:
        if not str(value):
            raise SettingsError(f"{where}: give -, off or a file path")
        kw["access_log"] = str(value)
    value, where = pick("access_log_format", "--access-log-format")
    if value is not None:
        if value not in ACCESS_LOG_FORMATS:
            raise SettingsError(f"{where}: {value!r} is not one of {', '.join(ACCESS_LOG_FORMATS)}")
        kw["access_log_format"] = str(value)
    value, where = pick("access_log_template", "--access-log-template")
    if value is not None and str(value):
        from workers.log_format import TemplateError, compile_template  # pure; the workers render with it

        try:
            compile_template(str(value), str(kw.get("access_log_format", "text")))
        except TemplateError as exc:
            raise SettingsError(f"{where}: {exc}") from None
        kw["access_log_template"] = str(value)
    for name, flag, field_name in (
        ("drain_timeout", "--drain-timeout", "drain_timeout_s"),
        ("drain_delay", "--drain-delay", "drain_delay_s"),
        ("request_headers_timeout", "--request-headers-timeout", "request_headers_timeout_s"),
        ("stream_idle_timeout", "--stream-idle-timeout", "stream_idle_timeout_s"),
        ("idle_timeout", "--idle-timeout", "idle_timeout_s"),
    ):
        value, where = pick(name, flag)
        if value is not None:
            kw[field_name] = _seconds(str(value), where)
    value, where = pick("max_connections_per_worker", "--max-connections-per-worker")
    if value is not None:
        try:
            kw["max_connections_per_worker"] = int(value)
        except ValueError:
            raise SettingsError(f"{where}: {value!r} is not a number") from None
        if kw["max_connections_per_worker"] < 1:
            raise SettingsError(f"{where}: must be at least 1")
    value, where = pick("http_codec", "--http-codec")
    if value is not None:
        if value not in HTTP_CODECS:
            raise SettingsError(f"{where}: {value!r} is not one of {', '.join(HTTP_CODECS)}")
        if value == "httptools":
            try:
                import httptools  # noqa: F401
            except ImportError:
                raise SettingsError(f"{where}: httptools is not installed (pip install 'edge[fast]')") from None
        kw["http_codec"] = str(value)
    value, where = pick("http10", "--http10")

    if value is not None:
        if value not in HTTP10_MODES:
            raise SettingsError(f"{where}: {value!r} is not one of {', '.join(HTTP10_MODES)}")
        kw["accept_http10"] = value == "accept"
    value, where = pick("shadow_host_suffix", "--shadow-host-suffix")
    if value is not None:
        kw["shadow_host_suffix"] = value if isinstance(value, bool) else parse_bool(str(value), where)
    value, where = pick("server_header", "--server-header")
    if value is not None:
        from edge.wire import header_value_problem  # pure: what may go on the wire

        if problem := header_value_problem(str(value)):
            raise SettingsError(f"{where}: {problem}")
        kw["server_header"] = str(value)
    value, where = pick("num_trusted_proxies", "--num-trusted-proxies")
    if value is not None:
        try:
            kw["num_trusted_proxies"] = int(value)
        except ValueError:
            raise SettingsError(f"{where}: {value!r} is not a number") from None
        if not 0 <= kw["num_trusted_proxies"] <= MAX_TRUSTED_PROXIES:
            raise SettingsError(f"{where}: must be between 0 and {MAX_TRUSTED_PROXIES}")
    value, where = pick("preserve_external_request_id", "--preserve-external-request-id")
    if value is not None:
        kw["preserve_external_request_id"] = value if isinstance(value, bool) else parse_bool(str(value), where)
    value, where = pick("dns_refresh_rate", "--dns-refresh-rate")
    if value is not None:
        refresh = _seconds(str(value), where)
        if refresh < MIN_DNS_REFRESH_S:
            raise SettingsError(f"{where}: {value!r} is below {MIN_DNS_REFRESH_S} s")
        kw["dns_refresh_rate_s"] = refresh
    value, where = pick("proxy_protocol", "--proxy-protocol")
    if value is not None:
        kw["proxy_protocol"] = value if isinstance(value, bool) else parse_bool(str(value), where)
    value, where = pick("cluster_domain", "--cluster-domain")
    if value is not None:
        if not str(value) or str(value).startswith(".") or str(value).endswith("."):
            raise SettingsError(f"{where}: {value!r} is not a domain such as cluster.local")
        kw["cluster_domain"] = str(value)
    return RunSettings(**kw)
