# Custom access-log formats: Istio's meshConfig.accessLogFormat, i.e. an Envoy format string of command
# operators, given to `edge run --access-log-template`. Compiled once (the supervisor validates it, each
# worker compiles it at start); rendering a record is a walk over the compiled parts.
#
# Rules:
# - Text (--access-log-format text): literal text and operators %NAME%, %NAME(ARG)%, %NAME(ARG):MAXLEN%;
#   "%%" is a literal "%". A missing value prints "-". Istio appends "\n" when the format lacks it.
# - JSON (--access-log-format json): the template is a JSON object of key → format string, as Istio's
#   accessLogFormat is with accessLogEncoding JSON; keys keep their order. A value that is exactly one
#   operator keeps the operator's type (numbers stay numbers, a missing value is null); any other value is
#   a string. One object per line.
# - REQ(NAME?ALTERNATIVE):MAXLEN reads the request as it went upstream (Envoy's access log sees the headers
#   after the gateway changed them): :authority after rewrites, :path as sent upstream, x-forwarded-for with
#   the peer appended, the x-request-id sent; other names are the client's headers (repeated ones joined with
#   ","). RESP(...) reads the response headers sent to the client; x-envoy-upstream-service-time is there.
# - DYNAMIC_METADATA(NAMESPACE:KEY) reads the metadata edge sets, as Envoy's filters set it: only
#   envoy.common:access_log_hint (the AUDIT policy's RBAC LOG filter: true when an AUDIT rule matched).
# - An operator edge does not know is a TemplateError naming it, before anything is served.
from __future__ import annotations

import re
import time
from typing import Any, Callable

import orjson

MISSING = "-"


class TemplateError(ValueError):
    """The access-log template cannot be used; the message names the part that is wrong."""


# ------------------------------------------------------------------------------------------------ values


def _attr(name: str, default: Any = None) -> Callable[[Any], Any]:
    def get(log: Any) -> Any:
        value = getattr(log, name, default)
        return None if value == MISSING or value == "" else value

    return get


def _int_attr(name: str) -> Callable[[Any], Any]:
    def get(log: Any) -> Any:
        value = getattr(log, name, None)
        return value if isinstance(value, int) and value >= 0 else None

    return get


def _without_port(name: str) -> Callable[[Any], Any]:
    def get(log: Any) -> Any:
        value = getattr(log, name, MISSING)
        if value in (MISSING, ""):
            return None
        host = value.rsplit(":", 1)[0]
        return host[1:-1] if host.startswith("[") else host

    return get


def _protocol(log: Any) -> Any:
    return log.protocol if getattr(log, "request", None) is not None else None


def _status(log: Any) -> Any:
    return getattr(log, "status", 0)


def _cluster_name(log: Any) -> Any:
    """UPSTREAM_CLUSTER: Istio's outbound|port|subset|host as it is (no alt stat name here)."""
    value = getattr(log, "upstream_cluster", MISSING)
    return None if value == MISSING else value


_HOSTNAME: list[str] = []


def _hostname(_log: Any) -> Any:
    if not _HOSTNAME:
        import platform

        _HOSTNAME.append(platform.node() or MISSING)
    return _HOSTNAME[0]


SIMPLE_OPERATORS: dict[str, Callable[[Any], Any]] = {
    "PROTOCOL": _protocol,
    "RESPONSE_CODE": _status,
    "RESPONSE_FLAGS": _attr("flags"),
    "RESPONSE_CODE_DETAILS": _attr("details"),
    "CONNECTION_TERMINATION_DETAILS": _attr("termination_details"),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda log: None,
    "BYTES_RECEIVED": _int_attr("bytes_received"),
    "BYTES_SENT": _int_attr("bytes_sent"),
    "DURATION": _int_attr("duration_ms"),
    "UPSTREAM_HOST": _attr("upstream_host"),
    "UPSTREAM_CLUSTER": _cluster_name,
    "UPSTREAM_CLUSTER_RAW": _cluster_name,
    "UPSTREAM_LOCAL_ADDRESS": _attr("upstream_local"),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": _int_attr("attempts"),
    "DOWNSTREAM_LOCAL_ADDRESS": _attr("downstream_local"),
    "DOWNSTREAM_REMOTE_ADDRESS": _attr("downstream_remote"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _without_port("downstream_local"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _without_port("downstream_remote"),
    "REQUESTED_SERVER_NAME": _attr("sni"),
    "ROUTE_NAME": _attr("route_name"),
    "HOSTNAME": _hostname,
}
# Envoy dynamic metadata edge sets, by NAMESPACE:KEY: the RBAC AUDIT filter's access_log_hint (workers/http/log.py).
DYNAMIC_METADATA: dict[str, Callable[[Any], Any]] = {
    "envoy.common:access_log_hint": lambda log: getattr(log, "access_log_hint", None),
}
INTEGER_OPERATORS = frozenset({"RESPONSE_CODE", "BYTES_RECEIVED", "BYTES_SENT", "DURATION", "UPSTREAM_REQUEST_ATTEMPT_COUNT"})


class _Clock:
    """Envoy's START_TIME (UTC, milliseconds, "Z"), with the part up to the seconds cached per second."""

    __slots__ = ("second", "prefix")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def format(self, t: float) -> str:
        second, ms = divmod(int(t * 1000 + 0.5), 1000)  # to the nearest ms: t - int(t) is not exact in binary
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{ms:03d}Z"


format_start_time = _Clock().format  # Envoy's START_TIME of a record's start (a bound method: no extra call)


def _start_time(spec: str | None) -> Callable[[Any], Any]:
    """START_TIME, or START_TIME(strftime format) with Envoy's %3f/%6f/%9f (and %f = %9f) for fractions, UTC."""
    if not spec:
        return lambda log: format_start_time(log.start)
    pieces = re.split(r"(%[369]?f)", spec)

    def get(log: Any) -> Any:
        seconds = int(log.start)
        nanos = int(round((log.start - seconds) * 1e9))
        stamp = time.gmtime(seconds)
        out = []
        for piece in pieces:
            if piece in ("%f", "%9f"):
                out.append(f"{nanos:09d}")
            elif piece == "%6f":
                out.append(f"{nanos // 1000:06d}")
            elif piece == "%3f":
                out.append(f"{nanos // 1000000:03d}")
            elif piece:
                out.append(time.strftime(piece, stamp))
        return "".join(out)

    return get


def _request_header(log: Any, name: str) -> Any:
    """One request header (lowercase name) as the gateway forwarded it; None when absent."""
    request = getattr(log, "request", None)
    if request is None:
        return None
    forwarded = getattr(log, "forwarded", None)
    if name == ":method":
        return log.method
    if name == ":path":
        upstream_path = getattr(log, "upstream_path", None)
        return upstream_path.decode("latin-1") if upstream_path is not None else log.path
    if name in (":authority", "host"):
        value = log.authority
        return None if value == MISSING else value
    if name == ":scheme":
        return forwarded.scheme if forwarded is not None else None
    if name == "x-envoy-original-path":
        original = getattr(log, "upstream_original_path", None)
        return original.decode("latin-1") if original is not None else None
    if forwarded is not None:
        if name == "x-forwarded-for":
            return forwarded.xff.decode("latin-1")
        if name == "x-request-id":
            return forwarded.request_id.decode("latin-1") if forwarded.request_id is not None else None
        if name == "x-forwarded-proto":
            return forwarded.proto.decode("latin-1")
        if name == "x-envoy-external-address":
            return forwarded.client_ip.decode("latin-1")
    wanted = name.encode("latin-1")
    values = [v for n, v in request.headers if n == wanted]
    return b",".join(values).decode("latin-1") if values else None


def _response_header(log: Any, name: str) -> Any:
    if name == "x-envoy-upstream-service-time":
        service = getattr(log, "service_time_ms", -1)
        return str(service) if service is not None and service >= 0 else None
    headers = getattr(log, "response_headers", None)
    if not headers:
        return None
    wanted = name.encode("latin-1")
    values = [v for n, v in headers if n == wanted]
    return b",".join(values).decode("latin-1") if values else None


def _header_operator(reader: Callable[[Any, str], Any], arg: str | None, what: str) -> Callable[[Any], Any]:
    if not arg:
        raise TemplateError(f"%{what}(...)% needs a header name")
    main, _, alternative = arg.partition("?")
    main, alternative = main.strip().lower(), alternative.strip().lower()
    if not main or "?" in alternative:
        raise TemplateError(f"%{what}({arg})%: expected NAME or NAME?ALTERNATIVE")

    def get(log: Any) -> Any:
        value = reader(log, main)
        if value is None and alternative:
            value = reader(log, alternative)
        return value

    return get


# ------------------------------------------------------------------------------------------------ parsing

_OPERATOR = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::(\d+))?%")


class _Operator:
    __slots__ = ("get", "max_length", "integer")

    def __init__(self, get: Callable[[Any], Any], max_length: int, integer: bool):
        self.get = get
        self.max_length = max_length
        self.integer = integer

    def value(self, log: Any) -> Any:
        value = self.get(log)
        if value is None or self.integer:
            return value
        value = str(value)
        return value[: self.max_length] if self.max_length else value


def _operator(name: str, arg: str | None, max_length: str | None) -> _Operator:
    length = int(max_length) if max_length else 0
    if name == "START_TIME":
        return _Operator(_start_time(arg), length, False)
    if name == "REQ":
        return _Operator(_header_operator(_request_header, arg, name), length, False)
    if name == "RESP":
        return _Operator(_header_operator(_response_header, arg, name), length, False)
    if name == "DYNAMIC_METADATA":
        get = DYNAMIC_METADATA.get(arg or "")
        if get is None:
            raise TemplateError(f"%DYNAMIC_METADATA({arg})% is not metadata edge has (supported: {', '.join(sorted(DYNAMIC_METADATA))})")
        return _Operator(get, length, True)  # typed: a boolean stays a boolean in JSON
    get = SIMPLE_OPERATORS.get(name)
    if get is None:
        raise TemplateError(f"%{name}% is not a command operator edge supports (supported: START_TIME, REQ, RESP, {', '.join(sorted(SIMPLE_OPERATORS))})")
    if arg is not None:
        raise TemplateError(f"%{name}% takes no argument")
    return _Operator(get, length, name in INTEGER_OPERATORS)


def _parse(text: str) -> list[str | _Operator]:
    parts: list[str | _Operator] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("%%", i):
            literal.append("%")
            i += 2
            continue
        if text[i] == "%":
            match = _OPERATOR.match(text, i)
            if match is None:
                raise TemplateError(f"unterminated or malformed command operator at {text[i:i + 30]!r}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(_operator(match.group(1), match.group(2), match.group(3)))
            i = match.end()
            continue
        literal.append(text[i])
        i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _text(value: Any) -> str:
    """A value in a text format: missing is "-", booleans as Envoy prints them (true/false)."""
    if value is None:
        return MISSING
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


class TextTemplate:
    """An Envoy text format, rendered to one log line (bytes, newline included)."""

    def __init__(self, text: str):
        if not text.endswith("\n"):
            text += "\n"  # Istio: "will insert a newline ('\n') on all formats (if missing)"
        self.parts = _parse(text)

    def render(self, log: Any) -> bytes:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_text(part.value(log)))
        return "".join(out).encode("utf-8", "replace")


class JsonTemplate:
    """Istio's JSON accessLogFormat: {key: format string}, rendered to one JSON object per line."""

    def __init__(self, text: str):
        try:
            spec = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise TemplateError(f"with --access-log-format json the template must be a JSON object: {exc}") from None
        if not isinstance(spec, dict) or not spec:
            raise TemplateError("with --access-log-format json the template must be a non-empty JSON object of key: format string")
        self.fields: list[tuple[str, list[str | _Operator]]] = []
        for key, value in spec.items():
            if not isinstance(value, str):
                raise TemplateError(f"JSON template key {key!r}: the value must be a format string")
            self.fields.append((key, _parse(value)))

    def render(self, log: Any) -> bytes:
        record: dict[str, Any] = {}
        for key, parts in self.fields:
            if len(parts) == 1 and isinstance(parts[0], _Operator):
                record[key] = parts[0].value(log)  # typed: a number stays a number, missing is null
                continue
            pieces = []
            for part in parts:
                if isinstance(part, str):
                    pieces.append(part)
                else:
                    pieces.append(_text(part.value(log)))
            record[key] = "".join(pieces)
        return orjson.dumps(record) + b"\n"


def compile_template(text: str, encoding: str) -> TextTemplate | JsonTemplate:
    """The template for `--access-log-format` `encoding` ("text" or "json"); TemplateError when unusable."""
    if not text.strip():
        raise TemplateError("the template is empty")
    return JsonTemplate(text) if encoding == "json" else TextTemplate(text)
