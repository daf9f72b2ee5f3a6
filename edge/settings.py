# Settings of `edge run`: the flags of edge/flags.py (RUN_FLAGS), their EDGE_* environment variables and their
# defaults, read into one frozen RunSettings value that the supervisor receives.
#
# Rules:
# - Precedence: command-line flag > environment variable > the table's default.
# - The variable of a flag is EDGE_ + the flag name upper-cased with "-" → "_" (--port-map → EDGE_PORT_MAP;
#   env_name). The repeatable --config takes a list separated by os.pathsep (":") in EDGE_CONFIG; boolean flags
#   take 1/true/yes/on or 0/false/no/off.
# - Values are validated here, once: a bad value is a SettingsError naming the flag or variable, and the
#   supervisor trusts what it gets. A value is read by its flag's kind (_READERS), then by the flag's own
#   check when the kind says too little (_CHECKS, by flag name).
# - RunSettings' own defaults are those of a RunSettings built in code (tests); they equal the table's
#   (tests/edge/test_flags.py).
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from edge.errors import EdgeError
from edge.flags import (
    ACCESS_LOG_OFF,
    BOOL,
    CHOICE,
    DEFAULT_CONFIG_DIR,
    DEFAULT_CREDENTIALS_DIR,
    INT,
    LABELS,
    PATHS,
    PORT,
    PORT_MAP,
    RUN_FLAGS,
    SECONDS,
    TEXT,
    Flag,
    env_name,
)

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
    gateway_namespace: str = "istio-system"  # AuthorizationPolicies in it apply (with the root namespace's)
    root_namespace: str = "istio-system"  # Istio's meshConfig.rootNamespace
    gateway_class: str = "istio"  # Gateway API GatewayClass names served, comma-separated
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
    http_codec: str = "auto"  # "auto" (httptools when installed, else h11), "httptools" or "h11" (the reference)
    num_trusted_proxies: int = 0  # Istio's gatewayTopology.numTrustedProxies: X-Forwarded-For hops trusted
    preserve_external_request_id: bool = False  # Envoy's option: keep a client's x-request-id
    proxy_protocol: bool = False  # Istio's gatewayTopology.proxyProtocol: a PROXY header starts every connection
    dns_refresh_rate_s: float | None = None  # Istio's meshConfig.dnsRefreshRate (None: each cluster's, 60 s)
    jwks_refresh_interval_s: float = 1200.0  # istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL (edge/jwks.py)
    http2_max_concurrent_streams: int = 100  # Envoy's edge best practice (workers/http2/limits.py)
    http2_initial_stream_window: int = 64 * 1024
    http2_initial_connection_window: int = 1024 * 1024
    http2_max_active_streams_per_worker: int = 10_000

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
            http2_max_concurrent_streams=self.http2_max_concurrent_streams,
            http2_initial_stream_window=self.http2_initial_stream_window,
            http2_initial_connection_window=self.http2_initial_connection_window,
            http2_max_active_streams_per_worker=self.http2_max_active_streams_per_worker,
        )

    def compile_options(self):
        from edge.compiler import CompileOptions

        return CompileOptions(
            gateway_labels=dict(self.gateway_labels), cluster_domain=self.cluster_domain, table_options=self.table_options(),
            gateway_namespace=self.gateway_namespace, root_namespace=self.root_namespace, gateway_classes=self.gateway_classes()
        )

    def gateway_classes(self) -> tuple[str, ...]:
        return gateway_classes(self.gateway_class)


def gateway_classes(text: str) -> tuple[str, ...]:
    """--gateway-class "istio,other" → ("istio", "other")."""
    return tuple(name for name in (part.strip() for part in text.split(",")) if name)


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
    kw: dict[str, object] = {}
    for flag in RUN_FLAGS:  # in table order: a check may read a value read before it (the template its format)
        raw, where = _pick(flag, flags, env)
        if raw is None:
            continue
        value = _READERS[flag.kind](flag, raw, where)
        check = _CHECKS.get(flag.name)
        kw[flag.attribute] = value if check is None else check(value, raw, where, kw)
    kw.setdefault("workers", os.cpu_count() or 1)  # the one computed default
    return RunSettings(**kw)


def _pick(flag: Flag, flags: Mapping[str, object], env: Mapping[str, str]) -> tuple[object, str]:
    """The value that counts and where it came from: the flag, its variable, or the table's default."""
    value = flags.get(flag.dest)
    if value is not None and value != []:
        return value, flag.option
    var = env_name(flag.option)
    if var in env:
        return env[var], var
    return flag.default, flag.option


# ---------------------------------------------------------------------------------------- kinds of value


def _paths(flag: Flag, value: object, where: str) -> tuple[str, ...]:
    paths = tuple(value) if isinstance(value, list) else tuple(p for p in str(value).split(os.pathsep) if p)
    if not paths:
        raise SettingsError(f"{where}: no path given")
    return paths


def _int(flag: Flag, value: object, where: str) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise SettingsError(f"{where}: {value!r} is not a number") from None


def _choice(flag: Flag, value: object, where: str) -> str:
    if value not in flag.choices:
        raise SettingsError(f"{where}: {value!r} is not one of {', '.join(flag.choices)}")
    return str(value)


def _bool(flag: Flag, value: object, where: str) -> bool:
    return value if isinstance(value, bool) else parse_bool(str(value), where)


_READERS: dict[str, Callable[[Flag, object, str], object]] = {
    TEXT: lambda flag, value, where: str(value),
    CHOICE: _choice,
    INT: _int,
    PORT: lambda flag, value, where: _port(str(value), where, allow_zero=True),
    SECONDS: lambda flag, value, where: _seconds(str(value), where),
    BOOL: _bool,
    PATHS: _paths,
    PORT_MAP: lambda flag, value, where: parse_port_map(str(value), where),
    LABELS: lambda flag, value, where: parse_labels(str(value), where),
}


# ----------------------------------------------------------------------- checks beyond the kind of value
# Each takes (value as read, value as given, where it was given, the settings read so far) and returns the
# setting's value, or raises SettingsError.


def _check_workers(value, raw, where, kw) -> int:
    if value < 1:
        raise SettingsError(f"{where}: needs at least 1 worker")
    return value


def _check_access_log(value, raw, where, kw) -> str:
    if not value:
        raise SettingsError(f"{where}: give -, off or a file path")
    return value


def _check_access_log_template(value, raw, where, kw) -> str:
    if value:
        from workers.log_format import TemplateError, compile_template  # pure; the workers render with it

        try:
            compile_template(value, str(kw.get("access_log_format", "text")))
        except TemplateError as exc:
            raise SettingsError(f"{where}: {exc}") from None
    return value


def _check_http_codec(value, raw, where, kw) -> str:
    """`auto` stays `auto`: the workers decide it by workers/http/engines.resolve_codec, which the supervisor's log
    line uses too (same interpreter, same answer)."""
    from workers.http.engines import httptools  # pure

    if value == "httptools" and httptools is None:
        raise SettingsError(f"{where}: httptools is not installed (pip install httptools)")
    return value


def _check_server_header(value, raw, where, kw) -> str:
    from edge.wire import header_value_problem  # pure: what may go on the wire

    if problem := header_value_problem(value):
        raise SettingsError(f"{where}: {problem}")
    return value


def _check_cluster_domain(value, raw, where, kw) -> str:
    if not value or value.startswith(".") or value.endswith("."):
        raise SettingsError(f"{where}: {raw!r} is not a domain such as cluster.local")
    return value


def _check_max_connections(value, raw, where, kw) -> int:
    if value < 1:
        raise SettingsError(f"{where}: must be at least 1")
    return value


def _check_trusted_proxies(value, raw, where, kw) -> int:
    if not 0 <= value <= MAX_TRUSTED_PROXIES:
        raise SettingsError(f"{where}: must be between 0 and {MAX_TRUSTED_PROXIES}")
    return value


def _check_dns_refresh(value, raw, where, kw) -> float:
    if value < MIN_DNS_REFRESH_S:
        raise SettingsError(f"{where}: {raw!r} is below {MIN_DNS_REFRESH_S} s")
    return value


def _check_http2_streams(value, raw, where, kw) -> int:
    if not 1 <= value <= 2**31 - 1:
        raise SettingsError(f"{where}: must be between 1 and 2147483647")
    return value


def _check_http2_window(value, raw, where, kw) -> int:
    """Envoy's range for both windows: RFC 9113's initial 65535 up to 2^31-1."""
    if not 65_535 <= value <= 2**31 - 1:
        raise SettingsError(f"{where}: must be between 65535 and 2147483647")
    return value


_CHECKS: dict[str, Callable[[Any, object, str, dict[str, object]], object]] = {
    "workers": _check_workers,
    "access-log": _check_access_log,
    "access-log-template": _check_access_log_template,
    "http10": lambda value, raw, where, kw: value == "accept",  # RunSettings.accept_http10
    "server-header": _check_server_header,
    "cluster-domain": _check_cluster_domain,
    "max-connections-per-worker": _check_max_connections,
    "http-codec": _check_http_codec,
    "num-trusted-proxies": _check_trusted_proxies,
    "dns-refresh-rate": _check_dns_refresh,
    "http2-max-concurrent-streams": _check_http2_streams,
    "http2-initial-stream-window-size": _check_http2_window,
    "http2-initial-connection-window-size": _check_http2_window,
    "http2-max-active-streams-per-worker": _check_http2_streams,
}
