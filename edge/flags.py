# The flags of `edge run`, in one table (RUN_FLAGS): each one's name, kind of value, default and help, and
# whether the workers receive it. What reads or passes a flag is derived from the table: the `edge run` parser
# (edge/cli.py), the EDGE_* variables and RunSettings (edge/settings.py), the worker's command line
# (edge/supervisor.py) and the worker's own parser (workers/main.py). A new flag is one row here, one
# RunSettings field, and a check in edge/settings.py only when its kind's validation is not enough.
#
# Rules:
# - Names: --NAME on the command line, EDGE_NAME in the environment (env_name: upper case, "-" → "_"),
#   args.NAME with "_" once parsed; its RunSettings field has the same name, plus "_s" for a number of seconds,
#   unless the row names another (setting=).
# - `default` is written as a user would write the value, and is read like one (edge/settings.py), so the table
#   is where `edge run`'s defaults live; None means computed (the help says how) or absent. The help text
#   states the default; tests/edge/test_flags.py holds both to the table and to RunSettings' own defaults.
# - The `edge run` parser gives None for every flag not given, so that edge/settings.py can tell a flag from the
#   variable it leaves to: precedence is flag > EDGE_* variable > default.
# - A worker flag has a text value (TEXT or CHOICE). It goes to every worker as one token `--NAME=VALUE` (a value
#   that starts with "-" stays a value) and is left out when empty, so that the worker's own default
#   (worker_default) holds. The worker's parser
#   also takes what only the supervisor knows: --slot, --control-fd, --table-shm and --stats-shm.
# - This module imports nothing of edge: the workers parse their command line with it.
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

# Kinds of value: how edge/settings.py reads one, and how the parsers take it.
TEXT = "text"
CHOICE = "choice"  # one of Flag.choices
INT = "int"
PORT = "port"  # 0-65535; 0 turns a port off
SECONDS = "seconds"  # a finite number >= 0
BOOL = "bool"  # a switch on the command line; 1/true/yes/on or 0/false/no/off in the environment
PATHS = "paths"  # repeatable; os.pathsep-separated in the environment
PORT_MAP = "port_map"  # 80=8080,...
LABELS = "labels"  # K=V,...
KINDS = (TEXT, CHOICE, INT, PORT, SECONDS, BOOL, PATHS, PORT_MAP, LABELS)

DEFAULT_CONFIG_DIR = "/etc/edge"
DEFAULT_CREDENTIALS_DIR = "/etc/edge/credentials"
DEFAULT_GATEWAY_LABELS = "istio=ingressgateway"
DEFAULT_GATEWAY_CLASS = "istio"  # Istio's built-in GatewayClass
ACCESS_LOG_OFF = "off"
ACCESS_LOG_STDOUT = "-"
ACCESS_LOG_FORMATS = ("text", "json")
HTTP10_MODES = ("accept", "reject")
HTTP_CODECS = ("auto", "h11", "httptools")

WORKER_PROG = "workers.main"
_AS_DEFAULT: Any = object()  # worker_default: the worker's default is the flag's


def env_name(flag: str) -> str:
    """"--port-map" → "EDGE_PORT_MAP"."""
    return "EDGE_" + flag.lstrip("-").upper().replace("-", "_")


@dataclass(frozen=True)
class Flag:
    name: str  # without "--"
    kind: str  # one of KINDS
    default: str | None  # as a user writes it; None: computed or absent (the help says which)
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    setting: str = ""  # the RunSettings field when the naming rule does not give it
    worker: bool = False  # every worker gets it on its command line
    worker_default: Any = _AS_DEFAULT  # what a worker reads when the supervisor leaves the flag out

    @property
    def option(self) -> str:
        return "--" + self.name

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def attribute(self) -> str:
        """The RunSettings field."""
        return self.setting or self.dest + ("_s" if self.kind == SECONDS else "")

    @property
    def worker_value_default(self) -> Any:
        return self.default if self.worker_default is _AS_DEFAULT else self.worker_default


RUN_FLAGS: tuple[Flag, ...] = (
    Flag("config", PATHS, DEFAULT_CONFIG_DIR, "configuration file or directory, repeatable (default /etc/edge; EDGE_CONFIG, ':'-separated)", metavar="PATH"),
    Flag("workers", INT, None, "worker processes (default: one per CPU)", metavar="N"),
    Flag("port-map", PORT_MAP, "", "bind Gateway port P on port Q instead", metavar="80=8080,..."),
    Flag("status-port", PORT, "15021", "readiness: GET /healthz/ready (default 15021)", metavar="PORT"),
    Flag("metrics-port", PORT, "15090", "GET /stats/prometheus (default 15090)", metavar="PORT"),
    Flag("admin-port", PORT, "15000", "admin endpoints (default 15000)", metavar="PORT"),
    Flag("admin-bind", TEXT, "127.0.0.1", "admin address (default 127.0.0.1)", metavar="ADDR"),
    Flag("gateway-labels", LABELS, DEFAULT_GATEWAY_LABELS, "matched against Gateway.selector (default istio=ingressgateway)", metavar="K=V,..."),
    Flag("gateway-namespace", TEXT, "istio-system", "the gateway workload's namespace: its AuthorizationPolicies apply (default istio-system)", metavar="NS"),
    Flag("root-namespace", TEXT, "istio-system", "Istio's root namespace (meshConfig.rootNamespace): its AuthorizationPolicies apply, mesh-wide without a selector (default istio-system)", metavar="NS"),
    Flag("gateway-class", TEXT, DEFAULT_GATEWAY_CLASS, "Kubernetes Gateway API GatewayClass names served, comma-separated (default istio)", metavar="NAME,..."),
    Flag(
        "credentials-dir", TEXT, DEFAULT_CREDENTIALS_DIR, "one folder per credentialName with tls.crt, tls.key, ca.crt (default /etc/edge/credentials)",
        metavar="DIR", worker=True, worker_default=None,
    ),  # fmt: skip
    Flag("access-log", TEXT, ACCESS_LOG_OFF, "access log destination (default off)", metavar="-|PATH|off", worker=True),
    Flag("access-log-format", CHOICE, "text", "Istio's TEXT format or JSON (default text)", choices=ACCESS_LOG_FORMATS, worker=True),
    Flag(
        "access-log-template", TEXT, "",
        "Istio's meshConfig.accessLogFormat: an Envoy format string of %%COMMAND%% operators, or with --access-log-format json a JSON object of key: format string",
        metavar="FORMAT", worker=True,
    ),  # fmt: skip
    Flag("drain-timeout", SECONDS, "5", "graceful drain limit on SIGTERM (default 5)", metavar="SECONDS"),
    Flag("drain-delay", SECONDS, "0", "keep accepting this long after SIGTERM before draining (default 0)", metavar="SECONDS"),
    Flag("http10", CHOICE, "accept", "HTTP/1.0 requests: accept (default) or reject with 426 as Istio does", choices=HTTP10_MODES, setting="accept_http10"),
    Flag("shadow-host-suffix", BOOL, "false", "append -shadow to the Host of mirrored requests (Istio <= 1.27)"),
    Flag("server-header", TEXT, "istio-envoy", "server response header (default istio-envoy)", metavar="NAME"),
    Flag("cluster-domain", TEXT, "cluster.local", "domain of short host names (default cluster.local)"),
    Flag("request-headers-timeout", SECONDS, "10", "a request head must arrive within this time once it started (default 10; 408 after)", metavar="SECONDS"),
    Flag(
        "stream-idle-timeout", SECONDS, "300",
        "a request in flight whose bytes stop moving for this long is ended: 408 while its body was arriving, 504 after (Envoy's stream_idle_timeout; default 300, 0 = off)",
        metavar="SECONDS",
    ),  # fmt: skip
    Flag("idle-timeout", SECONDS, "3600", "close client connections idle this long (default 3600, Envoy's)", metavar="SECONDS"),
    Flag("max-connections-per-worker", INT, "10000", "stop accepting above this many client connections per worker (default 10000)", metavar="N"),
    Flag(
        "http-codec", CHOICE, "auto",
        "HTTP/1.1 engine: auto (default: httptools when installed, else h11), httptools (llhttp: the fast one) or h11 (the reference)",
        choices=HTTP_CODECS, worker=True,
    ),  # fmt: skip
    Flag(
        "num-trusted-proxies", INT, "0",
        "proxies in front of edge whose X-Forwarded-For entries are trusted (Istio's gatewayTopology.numTrustedProxies; default 0)",
        metavar="N",
    ),  # fmt: skip
    Flag("preserve-external-request-id", BOOL, "false", "keep a client's x-request-id instead of replacing it (Envoy's preserve_external_request_id)"),
    Flag("dns-refresh-rate", SECONDS, None, "how often ServiceEntry DNS names are resolved again (Istio's meshConfig.dnsRefreshRate; default 60)", metavar="SECONDS"),
    Flag(
        "jwks-refresh-interval", SECONDS, "1200",
        "how often RequestAuthentication jwksUri keys are fetched again (istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL; default 1200)",
        metavar="SECONDS",
    ),  # fmt: skip
    Flag("proxy-protocol", BOOL, "false", "every connection starts with a PROXY protocol v1/v2 header, as from AWS NLB (Istio's gatewayTopology.proxyProtocol)"),
    Flag("http2-max-concurrent-streams", INT, "100", "HTTP/2 streams a client may have open on one connection; more are refused (RST_STREAM REFUSED_STREAM) (default 100, Envoy's edge best practice)", metavar="N"),
    Flag(
        "http2-initial-stream-window-size", INT, "65536",
        "HTTP/2 flow-control window of each client stream, in bytes: what a client may send ahead of the upstream (default 65536, Envoy's edge best practice)",
        metavar="BYTES", setting="http2_initial_stream_window",
    ),  # fmt: skip
    Flag(
        "http2-initial-connection-window-size", INT, "1048576",
        "HTTP/2 flow-control window of each client connection, in bytes (default 1048576, Envoy's edge best practice)",
        metavar="BYTES", setting="http2_initial_connection_window",
    ),  # fmt: skip
    Flag("http2-max-active-streams-per-worker", INT, "10000", "HTTP/2 streams in flight per worker over all its connections; more are refused (default 10000)", metavar="N"),
)
WORKER_FLAGS: tuple[Flag, ...] = tuple(flag for flag in RUN_FLAGS if flag.worker)


# -------------------------------------------------------------------------------------------------- edge run


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of `edge run`, each None when not given."""
    for flag in RUN_FLAGS:
        options: dict[str, Any] = {"default": None, "help": flag.help}
        if flag.kind == BOOL:
            options["action"] = "store_true"
        elif flag.kind == PATHS:
            options["action"] = "append"
        if flag.metavar is not None:
            options["metavar"] = flag.metavar
        if flag.choices:
            options["choices"] = flag.choices
        parser.add_argument(flag.option, **options)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed `edge run` flags by dest, as edge.settings.build_settings takes them."""
    return {flag.dest: getattr(args, flag.dest) for flag in RUN_FLAGS}


# ----------------------------------------------------------------------------------------------- the worker


def worker_arguments(settings: Any, *, slot: int, control_fd: int, table_shm: str, stats_shm: str | None = None) -> list[str]:
    """The worker's command line after the command itself, for a supervisor running with `settings` (a
    RunSettings; read by field name, so that this module needs nothing of edge)."""
    argv = ["--slot", str(slot), "--control-fd", str(control_fd), "--table-shm", table_shm]
    for flag in WORKER_FLAGS:
        value = getattr(settings, flag.attribute)
        if value:
            argv.append(f"{flag.option}={value}")
    if stats_shm is not None:
        argv += ["--stats-shm", stats_shm]
    return argv


def worker_argument_parser() -> argparse.ArgumentParser:
    """`python -m workers.main --slot N --control-fd FD --table-shm NAME [worker flags] [--stats-shm NAME]`."""
    parser = argparse.ArgumentParser(prog=WORKER_PROG, description="edge worker process (started by the supervisor)")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--table-shm", required=True)
    for flag in WORKER_FLAGS:
        choices = flag.choices or None
        parser.add_argument(flag.option, default=flag.worker_value_default, choices=choices, help=flag.help)
    parser.add_argument("--stats-shm", default=None, help="stats segment (edge/stats_shm.py); this worker writes its slot")
    return parser


def parse_worker_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's parsed command line: slot, control_fd, table_shm, stats_shm and one attribute per worker
    flag (credentials_dir, access_log, access_log_format, access_log_template, http_codec)."""
    return worker_argument_parser().parse_args(argv)
