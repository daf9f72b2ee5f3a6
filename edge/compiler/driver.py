# The compiler: Istio resources → RoutingTable. A pure function with Istio's semantics (istiod's gateway
# code, pilot/pkg/networking/core/{gateway.go,route/route.go} and pilot/pkg/model/{gateway,virtualservice}.go).
#
# Stages, in the order compile_resources runs them (one small function each):
#   1. index      resources sorted by creation: (creationTimestamp, load order when there is none, name,
#                 namespace); duplicates rejected; each resource validated on its own (Istio's admission rules)
#   2. gateways   Gateways whose selector ⊆ the gateway labels (empty selector = all); server hosts sanitised
#                 (`./h` → `<gw-ns>/h`, `*/h` → `h`)
#   3. servers    servers merged into listeners keyed (bind, port) as mergeGateways does: plain HTTP servers
#                 share one RouteConfig `http.<port>`; TLS servers (HTTPS, TLS) share a port and are told
#                 apart by SNI; any other mix on one (bind, port) is a conflict (error, later server skipped)
#   4. bind       VirtualService hosts and destinations resolved (`reviews` → reviews.<ns>.svc.<domain>),
#                 `gateways` resolved to `<ns>/<name>`, delegate routes merged into their root
#   5. vhosts     per server, domains = server hosts ∩ VS hosts (the more specific name is kept; `*.x` does
#                 not match `x`); the routes of every bound VS appended in creation order; catch-alls moved
#                 last (stable); vhosts with identical routes collapsed; no vhost at all → `*` blackhole
#   6. routes     per (VS, gateway, port): a match block whose `port` differs from the server port or whose
#                 `gateways` omit the gateway is dropped; translation stops at the VS's first catch-all;
#                 action = redirect, else direct response, else forward
#   7. clusters   destination → ServiceEntry port (given, else the only port, else the server port) →
#                 `outbound|<port>|<subset>|<host>`; DestinationRule policy: top level, then the subset per
#                 top-level field, each replaced wholesale by its portLevelSettings entry; endpoints
#
# Rules:
# - Every diagnostic names the resource's file and line and, where it can, the `$.spec…` path.
# - Errors fail the compile (CompileResult.table is None); warnings never do. A destination that does not
#   resolve (unknown host, port or subset) is a warning and its WeightedCluster has cluster "" (503 NC), as
#   Istio still serves the route and Envoy answers 503 NC.
# - The table depends only on the set of resources, never on the order of the input list.
# - RE2 regexes are checked and translated to Python `re` syntax here; the table carries the translation.
from __future__ import annotations

import base64
import binascii
import functools
import gc
import http
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from edge import istio, table, wire
from edge.errors import ERROR, NOTE, WARNING, Diagnostic

DEFAULT_GATEWAY_LABELS = {"istio": "ingressgateway"}
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
MESH_GATEWAY = "mesh"

MAX_DIRECT_RESPONSE_BYTES = 1024 * 1024  # DefaultMaxDirectResponseBodySizeBytes
WARN_DIRECT_RESPONSE_BYTES = 100 * 1024
MAX_REGEX_CHARS = 1024  # Istio's approximation of Envoy's re2.max_program_size
RE2_MAX_REPEAT = 1000
PPM_PER_PERCENT = 10_000
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 3600.0

# Istio ≥1.24 default retry policy (retry.go cachedDefaultPolicy): no retriable status codes, so 503 is not retried.
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")
DEFAULT_RETRY = table.RetryPolicy(attempts=2, retry_on=DEFAULT_RETRY_ON)
# With consistent hashing the previous-hosts predicate is left out (cachedDefaultConsistentHashPolicy).
DEFAULT_RETRY_CONSISTENT_HASH = table.RetryPolicy(attempts=2, retry_on=DEFAULT_RETRY_ON, ignore_previous_hosts=False)

SUPPORTED_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})  # route.go ApplyRedirect
RETRY_ON_POLICIES = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx", "refused-stream",
        "retriable-status-codes", "retriable-headers", "envoy-ratelimited", "http3-post-connect-failure",
        "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    }
)
HTTP_STATUS_CODES = frozenset(s.value for s in http.HTTPStatus)
GRPC_STATUSES = frozenset(
    {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
        "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    }
)
CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})
CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
        "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA", "DES-CBC3-SHA",
    }
)
JWT_CLAIM_PREFIX = "@request.auth.claims"

# Gateway Server.port.protocol (case-insensitive, pkg/config/protocol) → the listener protocol it serves.
# Server kinds: what one server does on its port; groups: which kinds may share one (bind, port).
KIND_HTTP = "http"  # HTTP, HTTP2, GRPC, GRPC-WEB (plain text; tls only for httpsRedirect)
KIND_HTTPS = "https"  # HTTPS with SIMPLE/MUTUAL/OPTIONAL_MUTUAL: terminate, then HTTP routes
KIND_TLS_TERMINATE = "tls-terminate"  # TLS with SIMPLE/MUTUAL/OPTIONAL_MUTUAL: terminate, then tcp routes
KIND_PASSTHROUGH = "passthrough"  # HTTPS or TLS with PASSTHROUGH: SNI → tls routes, no termination
KIND_TCP = "tcp"  # TCP, MONGO, REDIS, MYSQL: opaque bytes, first matching tcp route

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
TCP_PROTOCOLS = frozenset({"TCP", "MONGO", "REDIS", "MYSQL"})
TERMINATING_MODES = frozenset({"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"})
KIND_GROUP = {KIND_HTTP: "http", KIND_HTTPS: "tls", KIND_TLS_TERMINATE: "tls", KIND_PASSTHROUGH: "tls", KIND_TCP: "tcp"}

# LoadBalancerSettings.simple → table lb_policy (cluster_traffic_policy.go applyLoadBalancer).
LB_POLICIES = {
    None: "LEAST_REQUEST",
    "UNSPECIFIED": "LEAST_REQUEST",
    "LEAST_CONN": "LEAST_REQUEST",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
    "PASSTHROUGH": "LEAST_REQUEST",  # original destination does not exist here; warned
}

# ServiceEntry.resolution → Cluster.resolution (NONE at a gateway is EDS: only the listed endpoints).
RESOLUTIONS = {"STATIC": "STATIC", "NONE": "STATIC", "DNS": "DNS", "DNS_ROUND_ROBIN": "DNS_ROUND_ROBIN", "DYNAMIC_DNS": "STATIC"}

_DNS1123_LABEL = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_WILDCARD_LABEL = re.compile(r"^(?:\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$")
_PSEUDO_HEADERS = frozenset({":method", ":scheme", ":authority", ":path", ":status"})


@dataclass(frozen=True)
class CompileOptions:
    gateway_labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GATEWAY_LABELS))
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    table_options: table.Options = table.Options()


@dataclass
class CompileResult:
    table: table.RoutingTable | None
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return self.table is not None

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == WARNING]


def load_and_compile(paths: list[str], options: CompileOptions | None = None, cache=None):
    """Files → (LoadResult, CompileResult). A failed load still compiles what loaded, for more diagnostics,
    but never yields a table. Compile diagnostics get the exact line of their `$.spec…` path (the pure
    compile only knows the line where each resource starts)."""
    from edge.loader import load_paths

    loaded = load_paths(paths, cache)
    result = compile_resources(loaded.resources, options)
    if not loaded.ok:
        result.table = None
    result.diagnostics = _refine_lines(result.diagnostics)
    return loaded, result


_PATH_TOKENS = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _refine_lines(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Re-read the YAML of each diagnostic's file and move it to the line of its path inside its resource."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    documents: dict[str, list] = {}
    out = []
    for d in diagnostics:
        if not d.file or not d.path.startswith("$.") or not d.line:
            out.append(d)
            continue
        if d.file not in documents:
            try:
                with open(d.file, encoding="utf-8") as f:
                    documents[d.file] = [n for n in yaml.compose_all(f.read(), Loader=loader) if n is not None]
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                documents[d.file] = []
        node = _resource_node(documents[d.file], d.line)
        line = _node_line(node, d.path) if node is not None else 0
        out.append(msgspec.structs.replace(d, line=line) if line else d)
    return out


def _resource_node(nodes: list, line: int):
    """The mapping node of the object starting at `line` (a document, or an item of a kubectl List)."""
    import yaml

    for node in nodes:
        if node.start_mark.line + 1 == line and isinstance(node, yaml.MappingNode):
            return node
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == "items" and isinstance(value, yaml.SequenceNode):
                    found = _resource_node(value.value, line)
                    if found is not None:
                        return found
    return None


def _node_line(node, path: str) -> int:
    """Line of the deepest node `path` ($.spec.http[0].route) reaches: a key's own line for mapping steps."""
    import yaml

    line = node.start_mark.line + 1
    for name, index in _PATH_TOKENS.findall(path[1:]):
        if name and isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == name:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def compile_resources(resources: list[istio.Resource], options: CompileOptions | None = None) -> CompileResult:
    # The compile allocates hundreds of thousands of long-lived, acyclic objects; the cyclic collector would
    # rescan them over and over (more than half the time for 10,000 VirtualServices). Paused, then restored.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _Compiler(options or CompileOptions()).run(resources)
    finally:
        if paused:
            gc.enable()


# ---------------------------------------------------------------------------------------------------------
# Host names (pkg/config/host/name.go, names.go) and Istio's name resolution (pilot/pkg/model/config.go)
# ---------------------------------------------------------------------------------------------------------


def host_matches(a: str, b: str) -> bool:
    """Name(a).Matches(b): the names overlap in either direction. `*.foo.com` does not match `foo.com`."""
    a_wild = a[:1] == "*"
    b_wild = b[:1] == "*"
    if a_wild:
        if b_wild:
            return b[1:].endswith(a[1:]) if len(a) < len(b) else a[1:].endswith(b[1:])
        return b.endswith(a[1:])
    if b_wild:
        return a.endswith(b[1:])
    return a == b


def host_subset_of(a: str, b: str) -> bool:
    """Name(a).SubsetOf(b): a is covered by b."""
    a_wild = a[:1] == "*"
    if b[:1] == "*":
        if a_wild and len(a) < len(b):
            return False
        return a[1:].endswith(b[1:]) if a_wild else a.endswith(b[1:])
    return not a_wild and a == b


def intersect_hosts(server_hosts: list[str], vs_hosts: list[str]) -> list[str]:
    """Names.Intersection: for each overlapping pair keep the more specific name, first-seen order."""
    out: list[str] = []
    for s in server_hosts:
        for v in vs_hosts:
            if host_subset_of(s, v):
                if s not in out:
                    out.append(s)
            elif host_subset_of(v, s):
                if v not in out:
                    out.append(v)
    return out


def names_for_namespace(hosts: list[str], namespace: str) -> list[str]:
    """host.NamesForNamespace: server hosts visible to a VirtualService of `namespace`, without `ns/`."""
    out = []
    for h in hosts:
        ns, sep, name = h.partition("/")
        if sep:
            if ns != namespace and ns != "*":
                continue
            h = name
        out.append(h)
    return out


def sanitize_server_hosts(hosts: list[str], namespace: str) -> list[str]:
    """model/gateway.go sanitizeServerHostNamespace: `./h` → `<ns>/h`, `*/h` → `h`, `*/*` → `*`."""
    out = []
    for h in hosts:
        ns, sep, name = h.partition("/")
        if sep and ns == ".":
            h = f"{namespace}/{name}"
        elif sep and ns == "*":
            h = name
        out.append(h)
    return out


def resolve_shortname(host: str, namespace: str, domain: str) -> str:
    """ResolveShortnameToFQDN: a name without a dot becomes `<name>.<ns>.svc.<domain>`; `*` and IPs stay."""
    if not host or host == "*" or "." in host or _is_ip(host):
        return host
    return f"{host}.{namespace}.svc.{domain}"


def resolve_gateway_name(name: str, namespace: str) -> str:
    """resolveGatewayName: `name` → `<ns>/name`, `./name` → `<ns>/name`, `name.ns.svc.cluster.local` → `ns/name`."""
    if "/" not in name:
        if "." not in name:
            return f"{namespace}/{name}"
        head, _, rest = name.partition(".")
        return f"{rest.partition('.')[0]}/{head}"
    ns, _, gw = name.partition("/")
    return f"{namespace}/{gw}" if ns == "." else name


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@functools.lru_cache(maxsize=65536)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)
def _validate_wildcard_domain(domain: str) -> str | None:
    """agent.ValidateWildcardDomain: a wildcard only in the first label."""
    if not domain:
        return "empty domain name not allowed"
    if len(domain) > 255:
        return f"domain name {domain!r} too long (max 255)"
    first, _, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL.match(first):
        return f"domain name {domain!r} invalid (label {first!r} invalid)"
    if rest:
        return _validate_dns1123_labels(domain, rest)
    return None


def _validate_dns1123_labels(domain: str, labels: str) -> str | None:
    parts = labels.split(".")
    if parts[-1].isdigit():
        return f"domain name {domain!r} invalid (top level domain {parts[-1]!r} cannot be all-numeric)"
    for i, label in enumerate(parts):
        if i == len(parts) - 1 and label == "":
            return None
        if len(label) > 63 or not _DNS1123_LABEL.match(label):
            return f"domain name {domain!r} invalid (label {label!r} invalid)"
    return None


@functools.lru_cache(maxsize=65536)
def _validate_fqdn(name: str) -> str | None:
    if not name:
        return "empty domain name not allowed"
    if len(name) > 255:
        return f"domain name {name!r} too long (max 255)"
    return _validate_dns1123_labels(name, name)


def _is_dns1123_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS1123_LABEL.match(text))


# ---------------------------------------------------------------------------------------------------------
# RE2 → Python `re`. Envoy matches with RE2 (full match for path/header/query); Python's `re` is close but not
# the same language. Translated: \z, \Q…\E, \x{…}, (?<name>…), POSIX classes, inline flags. Rejected: what RE2
# rejects but Python would accept (look-arounds, back-references, possessive and nested repetition, \Z, …)
# and what Python cannot do (\p Unicode classes, ungreedy mode (?U)).
# ---------------------------------------------------------------------------------------------------------

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": r"\x00-\x7f", "blank": r"\t ", "cntrl": r"\x00-\x1f\x7f",
    "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~", "punct": r"!-/:-@\[-`{-~",
    "space": r"\t\n\v\f\r ", "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_COUNTED_REPEAT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")
_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")


class RegexError(ValueError):
    pass


@functools.lru_cache(maxsize=4096)
def regex_problem(pattern: str) -> str | None:
    """Why Envoy would refuse a regex, or None. RE2 decides (the workers match with it); when RE2 refuses,
    translate_re2's reason is given where it has one, because it names the construct in words (look-arounds,
    backreferences, …) where RE2 says "invalid perl operator"."""
    if pattern == "":
        return "regex string match should not be empty"
    if len(pattern) > MAX_REGEX_CHARS:
        return f"regex is too large, max length allowed is {MAX_REGEX_CHARS}"
    import re2  # with the first regex: a config without one never loads it

    try:
        re2.compile(pattern, _re2_options())
    except re2.error as exc:
        try:
            translate_re2(pattern)
        except RegexError as reason:
            return str(reason)
        detail = exc.args[0] if exc.args else exc
        return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return None


def regex_groups(pattern: str) -> int:
    """Capturing groups of an accepted pattern (regex_problem returned None)."""
    import re2

    return re2.compile(pattern, _re2_options()).groups


@functools.lru_cache(maxsize=1)
def _re2_options():
    import re2

    options = re2.Options()
    options.log_errors = False  # a refused pattern is a diagnostic, not a line on stderr
    return options


@functools.lru_cache(maxsize=4096)
def translate_re2(pattern: str) -> str:
    """RE2 pattern → equivalent Python pattern; raises RegexError with the reason it cannot be used."""
    if pattern == "":
        raise RegexError("regex string match should not be empty")
    if len(pattern) > MAX_REGEX_CHARS:
        raise RegexError(f"regex is too large, max length allowed is {MAX_REGEX_CHARS}")
    out: list[str] = []
    pending = [0]  # per open group: scoped flag groups opened inside it that must close with it
    i, n = 0, len(pattern)
    quantified = 0  # 0: last token is an atom; 1: it was repeated; 2: repeated lazily
    at_start = True
    while i < n:
        c = pattern[i]
        if c == "\\":
            i, text = _translate_escape(pattern, i)
            out.append(text)
            quantified, at_start = 0, False
            continue
        if c == "[":
            i, text = _translate_class(pattern, i)
            out.append(text)
            quantified, at_start = 0, False
            continue
        if c == "(":
            if pattern.startswith("(?", i):
                i, at_start = _translate_group_open(pattern, i, out, pending, at_start)
            else:
                out.append("(")
                pending.append(0)
                i += 1
                at_start = False
            quantified = 0
            continue
        at_start = False
        if c == ")":
            if len(pending) == 1:
                raise RegexError(f"unexpected ) at position {i}")
            out.append(")" * pending.pop() + ")")
            quantified = 0
            i += 1
            continue
        if c == "|":
            if pending[-1]:
                raise RegexError("inline flags followed by an alternation in the same group are not supported; use (?flags:…)")
            quantified = 0
            out.append(c)
            i += 1
            continue
        if c in "*+?" or (c == "{" and _COUNTED_REPEAT.match(pattern, i)):
            if c == "?" and quantified == 1:
                quantified = 2
                out.append(c)
                i += 1
                continue
            if quantified:
                raise RegexError(f"invalid nested repetition operator at position {i}")
            if c == "{":
                m = _COUNTED_REPEAT.match(pattern, i)
                low, high = int(m.group(1)), m.group(3)
                if low > RE2_MAX_REPEAT or (high and int(high) > RE2_MAX_REPEAT):
                    raise RegexError(f"invalid repeat count {m.group(0)} (RE2 allows at most {RE2_MAX_REPEAT})")
                if high and int(high) < low:
                    raise RegexError(f"invalid repeat count {m.group(0)}")
                out.append(m.group(0))
                i = m.end()
            else:
                out.append(c)
                i += 1
            quantified = 1
            continue
        quantified = 0
        out.append(c)
        i += 1
    if len(pending) != 1:
        raise RegexError("missing closing )")
    out.append(")" * pending[0])
    translated = "".join(out)
    try:
        re.compile(translated)
    except re.error as exc:
        raise RegexError(f"{exc}") from None
    return translated


def _translate_escape(pattern: str, i: int) -> tuple[int, str]:
    if i + 1 >= len(pattern):
        raise RegexError("trailing backslash at end of expression")
    e = pattern[i + 1]
    if e == "Q":
        end = pattern.find("\\E", i + 2)
        literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
        return (len(pattern) if end < 0 else end + 2), re.escape(literal)
    if e == "z":
        return i + 2, r"\Z"
    if e == "x" and pattern.startswith("{", i + 2):
        end = pattern.find("}", i + 3)
        digits = pattern[i + 3 : end] if end > 0 else ""
        if not digits or not all(ch in "0123456789abcdefABCDEF" for ch in digits) or int(digits, 16) > 0x10FFFF:
            raise RegexError(f"invalid escape sequence \\x{{{digits}")
        return end + 1, f"\\U{int(digits, 16):08x}"
    if e in "pP":
        raise RegexError(f"Unicode character classes (\\{e}…) are not supported")
    if e in "123456789":
        raise RegexError(f"invalid escape sequence \\{e} (RE2 has no back-references)")
    if e in "ZCgGkKhHlLuUNRXvVe":
        raise RegexError(f"invalid escape sequence \\{e}")
    return i + 2, pattern[i : i + 2]


def _translate_class(pattern: str, i: int) -> tuple[int, str]:
    out = ["["]
    j = i + 1
    n = len(pattern)
    if j < n and pattern[j] == "^":
        out.append("^")
        j += 1
    first = True
    while j < n:
        c = pattern[j]
        if c == "]" and not first:
            out.append("]")
            return j + 1, "".join(out)
        first = False
        if c == "[" and pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            if end < 0:
                out.append(r"\[")
                j += 1
                continue
            name = pattern[j + 2 : end]
            if name.startswith("^"):
                raise RegexError(f"negated POSIX class [:{name}:] is not supported")
            if name not in _POSIX_CLASSES:
                raise RegexError(f"invalid character class range [:{name}:]")
            out.append(_POSIX_CLASSES[name])
            j = end + 2
            continue
        if c == "\\":
            j2, text = _translate_escape(pattern, j)
            out.append(text)
            j = j2
            continue
        if c == "[":
            out.append(r"\[")  # Python warns on nested sets; RE2 takes "[" literally here
            j += 1
            continue
        out.append(c)
        j += 1
    raise RegexError("missing closing ]")


def _translate_group_open(pattern: str, i: int, out: list[str], pending: list[int], at_start: bool) -> tuple[int, bool]:
    rest = pattern[i + 2 : i + 4]
    if pattern.startswith("(?P<", i):
        out.append("(?P<")
        pending.append(0)
        return i + 4, False
    if rest[:1] == "<" and rest[1:2] not in ("=", "!"):
        out.append("(?P<")  # Go 1.22 / RE2 accept (?<name>…); Python 3.11 only (?P<name>…)
        pending.append(0)
        return i + 3, False
    m = _FLAG_GROUP.match(pattern, i)
    if m is None:
        raise RegexError(f"invalid or unsupported Perl syntax at position {i}: {pattern[i:i + 4]!r} (RE2 has no look-arounds, atomic groups, conditionals or comments)")
    on, off, end = m.group(1), m.group(2) or "", m.group(3)
    for flag in on + off:
        if flag == "U":
            raise RegexError("ungreedy mode (?U) is not supported")
        if flag not in "ims":
            raise RegexError(f"invalid or unsupported flag {flag!r} in {m.group(0)!r}")
    if end == ":":
        out.append(m.group(0))
        pending.append(0)
        return m.end(), False
    if at_start and not off:
        if on:
            out.append(f"(?{on})")  # global flags at the very start, as Python wants them
        return m.end(), True
    if not on and not off:
        return m.end(), at_start
    # Flags in the middle apply to the rest of the enclosing group: open a scoped group closed with it.
    out.append(f"(?{on}{'-' + off if off else ''}:")
    pending[-1] += 1
    return m.end(), False


def translate_re2_rewrite(substitution: str, groups: int) -> str:
    """RE2 rewrite (`\\1`, `\\\\`) → Python replacement template (`\\g<1>`, `\\\\`)."""
    out = []
    i = 0
    while i < len(substitution):
        c = substitution[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = substitution[i + 1 : i + 2]
        if nxt.isdigit():
            if int(nxt) > groups:
                raise RegexError(f"rewrite refers to group \\{nxt} but the match has only {groups} group(s)")
            out.append(f"\\g<{nxt}>")
        elif nxt == "\\":
            out.append("\\\\")
        else:
            raise RegexError(f"invalid rewrite pattern: \\{nxt} (use \\0-\\9 or \\\\)")
        i += 2
    return "".join(out)


def _header_value_problem(value: str) -> str | None:
    """ValidateHTTPHeaderValue: no control characters (edge/wire.py); `%` starts an Envoy %VARIABLE% (or is
    written %%)."""
    if problem := wire.header_value_problem(value):
        return problem
    i = 0
    while i < len(value):
        if value[i] != "%":
            i += 1
            continue
        if value[i + 1 : i + 2] == "%":
            i += 2
            continue
        end = value.find("%", i + 1)
        if end < 0:
            return f"header value configuration: invalid header configuration. Un-escaped % in {value!r}"
        i = end + 1
    return None


def _duration_problem(seconds: float) -> str | None:
    """agent.ValidateDuration: at least 1 ms, millisecond precision."""
    if seconds < 0.001 - 1e-12:
        return "duration must be greater than 1ms"
    if abs(seconds * 1000 - round(seconds * 1000)) > 1e-6:
        return "only durations to ms precision are supported"
    return None


def _percent_problem(p: istio.Percent | None) -> str | None:
    if p is not None and 0.0 < p.value < 0.0001:
        return f"percentage {p.value} is neither 0.0, nor in range [0.0001, 100.0]"
    return None


def _ppm(p: istio.Percent) -> int:
    return int(p.value * PPM_PER_PERCENT)


def _parse_timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------


class _Report:
    """Diagnostics in the order found, each once (the same VS is translated for several servers)."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        self._seen: set[tuple] = set()
        self.errors = 0

    def add(self, severity: str, res: istio.Resource | None, path: str, message: str) -> None:
        key = (severity, res.file if res else "", res.line if res else 0, res.ref if res else "", path, message)
        if key in self._seen:
            return
        self._seen.add(key)
        if severity == ERROR:
            self.errors += 1
        self.items.append(
            Diagnostic(
                severity=severity,
                message=message,
                file=res.file if res else "",
                line=res.line if res else 0,
                resource=res.ref if res else "",
                path=path,
            )
        )


class _Where:
    """One resource and a path inside it. An error marks it and every enclosing _Where as failed."""

    __slots__ = ("report", "res", "path", "failed", "parent")

    def __init__(self, report: _Report, res: istio.Resource, path: str = "$.spec", parent: "_Where | None" = None):
        self.report = report
        self.res = res
        self.path = path
        self.failed = False
        self.parent = parent

    def at(self, sub: str) -> "_Where":
        return _Where(self.report, self.res, self.path + sub, self)

    def error(self, message: str, sub: str = "") -> None:
        w: _Where | None = self
        while w is not None:
            w.failed = True
            w = w.parent
        self.report.add(ERROR, self.res, self.path + sub, message)

    def warn(self, message: str, sub: str = "") -> None:
        self.report.add(WARNING, self.res, self.path + sub, message)

    def note(self, message: str, sub: str = "") -> None:
        self.report.add(NOTE, self.res, self.path + sub, message)


# ---------------------------------------------------------------------------------------------------------
# Internal model
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Server:
    gateway: istio.Resource
    index: int
    server: istio.Server
    hosts: list[str]  # sanitised: "h", "*", or "ns/h"
    kind: str

    @property
    def gw_key(self) -> str:
        return self.gateway.key

    @property
    def path(self) -> str:
        return f"$.spec.servers[{self.index}]"

    @property
    def port(self) -> int:
        return self.server.port.number

    def describe(self) -> str:
        return f"Gateway {self.gateway.key} server {self.server.port.name or self.index} ({self.server.port.protocol} {self.port})"


@dataclass
class _ListenerPlan:
    bind: str
    port: int
    group: str
    servers: list[_Server] = field(default_factory=list)


@dataclass
class _Match:
    match: table.RouteMatch
    port: int
    gateways: tuple[str, ...]
    source_labels: dict[str, str]
    source_namespace: str
    catch_all: bool
    path: str
    stat_prefix: str


@dataclass
class _Rule:
    """One HTTPRoute, translated as far as it goes without knowing the gateway and port."""

    owner: istio.Resource  # the VirtualService the rule is written in (a delegate for merged rules)
    path: str
    index: int
    http: istio.HTTPRoute
    matches: list[_Match] | None  # None: no match blocks (a catch-all)
    headers: table.HeaderRules | None
    timeout_s: float
    retry: table.RetryPolicy | None
    fault: table.Fault | None
    cors: table.Cors | None
    direct: table.DirectResponse | None
    rewrite: table.Rewrite | None
    redirect_supported: bool
    needs_prefix: bool  # the action replaces the matched prefix: a path matcher must exist
    dest_headers: list[table.HeaderRules | None]  # per route destination
    port_sensitive: bool | None = None  # computed on first use (_port_sensitive)


@dataclass
class _VirtualService:
    res: istio.Resource
    spec: istio.VirtualService  # hosts, gateways and destinations resolved
    gateways: tuple[str, ...]
    http: list[tuple[istio.Resource, str, istio.HTTPRoute]]  # (owner, path, route) after delegate merging
    rules: list[_Rule] | None = None
    key: str = ""

    def __post_init__(self) -> None:
        self.key = self.res.key


@dataclass
class _VHostBuild:
    routes: list[table.Route] = field(default_factory=list)
    require_tls: bool = False
    seen: set[tuple[str, str]] = field(default_factory=set)  # (VirtualService, gateway) already appended
    route_ids: set[int] = field(default_factory=set)


@dataclass
class _MergedDR:
    res: istio.Resource
    host: str
    traffic_policy: istio.TrafficPolicy | None
    subsets: dict[str, istio.Subset]


@dataclass
class _Service:
    res: istio.Resource
    spec: istio.ServiceEntry
    host: str


# ---------------------------------------------------------------------------------------------------------
# The compiler
# ---------------------------------------------------------------------------------------------------------


class _Compiler:
    def __init__(self, options: CompileOptions):
        self.options = options
        self.domain = options.cluster_domain
        self.labels = dict(options.gateway_labels)
        self.report = _Report()
        self.gateways: list[istio.Resource] = []
        self.gateway_by_key: dict[str, istio.Resource] = {}
        self.virtual_services: list[istio.Resource] = []
        self.vs_by_key: dict[str, istio.Resource] = {}
        self.destination_rules: list[istio.Resource] = []
        self.service_entries: list[istio.Resource] = []
        self.services: dict[str, _Service] = {}
        self.dr_exact: dict[str, _MergedDR] = {}
        self.dr_wildcard: list[tuple[str, _MergedDR]] = []
        self.clusters: dict[str, table.Cluster] = {}
        self.resolved: dict[tuple, str] = {}  # (host, subset, given port, listener port) → cluster name
        self.hashes: dict[tuple, table.HashPolicy | None] = {}
        self.roots: list[_VirtualService] = []
        self.bound: dict[str, list[_VirtualService]] = {}
        self.route_cache: dict[tuple, tuple[table.Route, ...]] = {}
        self.built_routes: dict[tuple, table.Route | None] = {}
        self.catch_alls: set[int] = set()  # id() of built routes that are catch-alls (SortVHostRoutes)
        self.selected: list[istio.Resource] = []
        self.invalid_servers: set[tuple[str, int]] = set()

    # -- driver ------------------------------------------------------------------------------------------

    def run(self, resources: list[istio.Resource]) -> CompileResult:
        self._index(resources)
        for res in self.gateways:
            self._validate_gateway(res)
        for res in self.service_entries:
            self._validate_service_entry(res)
        for res in self.destination_rules:
            self._validate_destination_rule(res)
        self._index_services()
        self._merge_destination_rules()
        self._prepare_virtual_services()
        self.selected = self._select_gateways()
        plans = self._merge_servers(self.selected)
        listeners = [listener for plan in plans if (listener := self._build_listener(plan)) is not None]
        self._check_bindings()
        diagnostics = self.report.items
        if self.report.errors:
            return CompileResult(table=None, diagnostics=diagnostics)
        listeners.sort(key=lambda l: (l.port, l.bind))
        options = msgspec.structs.replace(self.options.table_options, cluster_domain=self.domain)
        routing = table.RoutingTable(
            options=options,
            listeners=tuple(listeners),
            clusters=dict(sorted(self.clusters.items())),
            default_retry=DEFAULT_RETRY,
        )
        return CompileResult(table=routing, diagnostics=diagnostics)

    # -- 1. index ----------------------------------------------------------------------------------------

    def _index(self, resources: list[istio.Resource]) -> None:
        keyed = []
        for res in resources:
            stamp = None
            if res.creation_timestamp:
                stamp = _parse_timestamp(res.creation_timestamp)
                if stamp is None:
                    self.report.add(WARNING, res, "$.metadata.creationTimestamp", f"invalid timestamp {res.creation_timestamp!r}; load order is used instead")
            # Go's zero time sorts first, so resources without a timestamp come first, in load order.
            key = (stamp if stamp is not None else float("-inf"), 0 if stamp is not None else res.order, res.name, res.namespace, res.kind)
            keyed.append((key, res))
        keyed.sort(key=lambda kr: kr[0])
        seen: dict[tuple[str, str], istio.Resource] = {}
        buckets = {
            "Gateway": self.gateways,
            "VirtualService": self.virtual_services,
            "DestinationRule": self.destination_rules,
            "ServiceEntry": self.service_entries,
        }
        for _, res in keyed:
            if res.kind not in buckets:
                continue
            first = seen.get((res.kind, res.key))
            if first is not None:
                a, b = sorted((first, res), key=lambda r: (r.file, r.line))
                self.report.add(ERROR, b, "$.metadata.name", f"{res.kind} {res.key} is defined more than once (also at {a.file}:{a.line})")
                continue
            seen[(res.kind, res.key)] = res
            buckets[res.kind].append(res)
        self.gateway_by_key = {g.key: g for g in self.gateways}
        self.vs_by_key = {v.key: v for v in self.virtual_services}

    # -- 1b. validation of single resources ------------------------------------------------------------

    def _validate_gateway(self, res: istio.Resource) -> None:
        spec: istio.Gateway = res.spec
        w = _Where(self.report, res)
        if not _is_dns1123_label(res.name):
            w.error(f"invalid gateway name: {res.name!r} (a DNS-1123 label: lowercase letters, digits and '-')", "")
        names: dict[str, int] = {}
        for i, s in enumerate(spec.servers):
            sw = w.at(f".servers[{i}]")
            self._validate_server(sw, s)
            if s.port.name in names:
                sw.error(f"port names in servers must be unique: duplicate name {s.port.name} (also servers[{names[s.port.name]}])", ".port.name")
            else:
                names[s.port.name] = i
            if sw.failed:
                self.invalid_servers.add((res.key, i))

    def _validate_server(self, w: _Where, s: istio.Server) -> None:
        for j, h in enumerate(s.hosts):
            problem = _gateway_host_problem(h)
            if problem:
                w.error(problem, f".hosts[{j}]")
        proto = s.port.protocol.upper()
        unix = s.bind.startswith("unix://")
        if proto not in HTTP_PROTOCOLS | TLS_PROTOCOLS | TCP_PROTOCOLS:
            w.error(f"invalid protocol {s.port.protocol!r}, supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP, TLS", ".port.protocol")
        if (s.port.number > 0 or not unix) and not 1 <= s.port.number <= 65535:
            w.error(f"port number {s.port.number} must be in the range 1..65535", ".port.number")
        if s.port.target_port:
            w.error("targetPort has no impact on Gateways", ".port.targetPort")
        if not s.port.name:
            w.error("port name must be set", ".port.name")
        if unix:
            path = s.bind[len("unix://") :]
            if not path or not (path.startswith("@") or (path.startswith("/") and not path.endswith("/"))):
                w.error(f"{path} is not an absolute path to a file", ".bind")
            if s.port.number != 0:
                w.error("port number must be 0 for unix domain socket", ".port.number")
        elif s.bind and not _is_ip(s.bind):
            w.error(f"{s.bind} is not a valid IP", ".bind")
        if s.default_endpoint:
            w.warn("defaultEndpoint is not implemented (in Istio either); ignored", ".defaultEndpoint")
        tls = s.tls
        if proto in TLS_PROTOCOLS and tls is None:
            w.error("server must have TLS settings for HTTPS/TLS protocols", ".tls")
        if tls is None:
            return
        tw = w.at(".tls")
        if proto in HTTP_PROTOCOLS:
            if tls.mode != "PASSTHROUGH" or tls.ca_certificates or tls.private_key or tls.server_certificate:
                tw.error("server cannot have TLS settings for plain text HTTP ports (only httpsRedirect)")
            return
        if proto in TCP_PROTOCOLS:
            tw.error("server cannot have TLS settings for non HTTPS/TLS ports")
            return
        if tls.https_redirect:
            tw.warn("tls.httpsRedirect should only be used with http servers", ".httpsRedirect")
        self._validate_server_tls(tw, tls)

    def _validate_server_tls(self, w: _Where, tls: istio.ServerTLSSettings) -> None:
        mode = tls.mode
        has_certs = bool(
            tls.server_certificate or tls.private_key or tls.ca_certificates or tls.ca_crl or tls.tls_certificates
            or tls.credential_name or tls.credential_names
        )
        if mode == "AUTO_PASSTHROUGH":
            w.error("AUTO_PASSTHROUGH is not supported: it routes by SNI names of the form outbound_.<port>_.<subset>_.<host> that only mesh clients send; use PASSTHROUGH with VirtualService tls routes", ".mode")
            return
        if mode == "ISTIO_MUTUAL":
            if has_certs:
                w.error("ISTIO_MUTUAL TLS cannot have associated certificates, keys or credentials", ".mode")
            return
        if mode == "PASSTHROUGH":
            if has_certs:
                w.warn("tls mode is PASSTHROUGH (the default when mode is not set): the certificates are not used; set mode: SIMPLE to terminate TLS", ".mode")
            return
        sources = sum(
            (
                bool(tls.server_certificate and tls.private_key),
                bool(tls.credential_name),
                bool(tls.credential_names),
                bool(tls.tls_certificates),
            )
        )
        if sources > 1:
            w.error("only one of credentialName, credentialNames, serverCertificate/privateKey, tlsCertificates should be specified")
        if tls.min_protocol_version in ("TLSV1_0", "TLSV1_1") and not tls.cipher_suites:
            w.warn("TLS versions below TLSV1_2 need compatible cipherSuites set: the defaults no longer include them", ".minProtocolVersion")
        bad = sorted({c for c in tls.cipher_suites if not _valid_cipher(c)})
        if bad:
            w.warn(f"ignoring invalid cipher suites: {bad}", ".cipherSuites")
        dups = sorted({c for c in tls.cipher_suites if tls.cipher_suites.count(c) > 1})
        if dups:
            w.warn(f"ignoring duplicate cipher suites: {dups}", ".cipherSuites")
        if tls.credential_names and len(tls.credential_names) > 1:
            w.warn("only the first of credentialNames is used", ".credentialNames")
        for field_name, name in ((".credentialName", tls.credential_name), *((f".credentialNames[{j}]", n) for j, n in enumerate(tls.credential_names or ()))):
            if name and (problem := wire.credential_name_problem(name)):
                w.error(problem, field_name)
        if tls.ca_crl:
            if tls.credential_name:
                w.error("CRL is not supported with credentialName. CRL has to be specified in the credential", ".caCrl")
            if mode == "SIMPLE":
                w.error("CRL is not supported with SIMPLE TLS", ".caCrl")
        if tls.credential_name or tls.credential_names:
            return
        prefix = "SIMPLE TLS" if mode == "SIMPLE" else "MUTUAL TLS"
        if mode != "SIMPLE" and not tls.ca_certificates:
            w.error(f"{prefix} requires a client CA bundle", ".caCertificates")
        certs = [(c.server_certificate, c.private_key) for c in tls.tls_certificates] or [(tls.server_certificate, tls.private_key)]
        for cert, key in certs:
            if not cert:
                w.error(f"{prefix} requires a server certificate", ".serverCertificate")
            if not key:
                w.error(f"{prefix} requires a private key", ".privateKey")

    def _validate_service_entry(self, res: istio.Resource) -> None:
        se: istio.ServiceEntry = res.spec
        w = _Where(self.report, res)
        for j, h in enumerate(se.hosts):
            if h == "*":
                w.error(f"invalid host {h}", f".hosts[{j}]")
                continue
            problem = _validate_wildcard_domain(h)
            if problem:
                w.error(problem, f".hosts[{j}]")
            elif "*" in h and not h.startswith("*.") and se.resolution != "DYNAMIC_DNS":
                w.warn(f"partial wildcard {h!r} not allowed", f".hosts[{j}]")
        for j, addr in enumerate(se.addresses):
            try:
                ipaddress.ip_network(addr, strict=False)
            except ValueError:
                w.error(f"{addr!r} is not a valid IP address or CIDR", f".addresses[{j}]")
        if any("/" in a for a in se.addresses) and se.resolution not in ("NONE", "STATIC"):
            w.error("CIDR addresses are allowed only for NONE/STATIC resolution types", ".addresses")
        names: set[str] = set()
        numbers: set[int] = set()
        for j, p in enumerate(se.ports):
            if p.name in names:
                w.error(f"service entry port name {p.name!r} already defined", f".ports[{j}].name")
            if p.number in numbers:
                w.error(f"service entry port {p.number} already defined", f".ports[{j}].number")
            names.add(p.name)
            numbers.add(p.number)
            if not p.name:
                w.error("port name must be set", f".ports[{j}].name")
            if p.target_port and not 1 <= p.target_port <= 65535:
                w.error(f"port number {p.target_port} must be in the range 1..65535", f".ports[{j}].targetPort")
            if p.protocol and p.protocol.upper() not in HTTP_PROTOCOLS | TLS_PROTOCOLS | TCP_PROTOCOLS | {"UDP"}:
                w.error(f"unrecognized protocol {p.protocol!r}", f".ports[{j}].protocol")
        if se.resolution == "NONE":
            if se.endpoints:
                w.error("no endpoints should be provided for resolution type none", ".endpoints")
        elif se.resolution == "STATIC":
            for j, ep in enumerate(se.endpoints):
                self._validate_endpoint(w.at(f".endpoints[{j}]"), ep, names, allow_fqdn=False)
        elif se.resolution in ("DNS", "DNS_ROUND_ROBIN"):
            if not se.endpoints:
                for j, h in enumerate(se.hosts):
                    problem = _validate_fqdn(h)
                    if problem:
                        w.error(f"hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {se.resolution}, {problem}", f".hosts[{j}]")
                        break
            if se.resolution == "DNS_ROUND_ROBIN" and len(se.endpoints) > 1:
                w.error(f"there must only be 0 or 1 endpoint for resolution mode {se.resolution}", ".endpoints")
            for j, ep in enumerate(se.endpoints):
                self._validate_endpoint(w.at(f".endpoints[{j}]"), ep, names, allow_fqdn=True)
        elif se.resolution == "DYNAMIC_DNS":
            w.warn("resolution DYNAMIC_DNS (per-request DNS) is not supported: the service has no endpoints and answers 503 (UH)", ".resolution")
        if se.resolution != "NONE" and len(se.hosts) > 1:
            for p in se.ports:
                proto = p.protocol.upper()
                if proto not in HTTP_PROTOCOLS and proto not in TLS_PROTOCOLS:
                    w.error("multiple hosts provided with non-HTTP, non-TLS ports", ".hosts")
                    break

    def _validate_endpoint(self, w: _Where, ep: istio.WorkloadEntry, port_names: set[str], allow_fqdn: bool) -> None:
        addr = ep.address
        if not addr:
            w.error("address is required", ".address")
        elif addr.startswith("unix://"):
            path = addr[len("unix://") :]
            if not path or not (path.startswith("@") or (path.startswith("/") and not path.endswith("/"))):
                w.error(f"{path} is not an absolute path to a file", ".address")
            if ep.ports:
                w.error(f"unix endpoint {addr} must not include ports", ".ports")
        elif not _is_ip(addr):
            if not allow_fqdn:
                w.error(f"endpoint address {addr!r} is not a valid IP address", ".address")
            elif _validate_fqdn(addr):
                w.error(f"endpoint address {addr!r} is not a valid FQDN or an IP address", ".address")
        for name, port in sorted(ep.ports.items()):
            if name not in port_names:
                w.error(f"endpoint port {port} is not defined by the service entry", f".ports.{name}")
            if not 1 <= port <= 65535:
                w.error(f"port number {port} must be in the range 1..65535", f".ports.{name}")

    def _validate_destination_rule(self, res: istio.Resource) -> None:
        dr: istio.DestinationRule = res.spec
        w = _Where(self.report, res)
        problem = _validate_wildcard_domain(dr.host)
        if problem:
            w.error(problem, ".host")
        self._validate_traffic_policy(w.at(".trafficPolicy"), dr.traffic_policy)
        names: set[str] = set()
        for j, subset in enumerate(dr.subsets):
            sw = w.at(f".subsets[{j}]")
            if subset.name in names:
                sw.error(f"duplicate subset names: {subset.name}", ".name")
            names.add(subset.name)
            if not _is_dns1123_label(subset.name):
                sw.error(f"subset name is invalid: {subset.name}", ".name")
            self._validate_traffic_policy(sw.at(".trafficPolicy"), subset.traffic_policy)

    def _validate_traffic_policy(self, w: _Where, policy: istio.TrafficPolicy | None) -> None:
        if policy is None:
            return
        if (
            policy.outlier_detection is None and policy.connection_pool is None and policy.load_balancer is None
            and policy.tls is None and not policy.port_level_settings and policy.tunnel is None
            and policy.proxy_protocol is None and policy.retry_budget is None
        ):
            w.error("traffic policy must have at least one field")
            return
        if policy.tunnel is not None:
            w.warn("tunnel settings are not supported here; ignored", ".tunnel")
        if policy.proxy_protocol is not None:
            w.warn("sending a PROXY protocol header upstream is not supported here; ignored", ".proxyProtocol")
        if policy.retry_budget is not None:
            w.warn("retryBudget is not supported here; the maxRetries circuit breaker applies", ".retryBudget")
        self._validate_policy_parts(w, policy.load_balancer, policy.connection_pool, policy.outlier_detection, policy.tls)
        for j, pls in enumerate(policy.port_level_settings):
            pw = w.at(f".portLevelSettings[{j}]")
            if pls.port is None or not 1 <= pls.port.number <= 65535:
                pw.error("portTrafficPolicy must have valid port", ".port")
            if pls.load_balancer is None and pls.connection_pool is None and pls.outlier_detection is None and pls.tls is None:
                pw.error("port traffic policy must have at least one field")
                continue
            self._validate_policy_parts(pw, pls.load_balancer, pls.connection_pool, pls.outlier_detection, pls.tls)

    def _validate_policy_parts(self, w: _Where, lb, pool, outlier, tls) -> None:
        if outlier is not None:
            ow = w.at(".outlierDetection")
            for name, value in (("baseEjectionTime", outlier.base_ejection_time), ("interval", outlier.interval)):
                if value is not None and (problem := _duration_problem(value)):
                    ow.error(problem, f".{name}")
            if outlier.consecutive_errors:
                ow.warn("outlier detection consecutive errors is deprecated and ignored, use consecutiveGatewayErrors or consecutive5xxErrors instead", ".consecutiveErrors")
            if not outlier.split_external_local_origin_errors and (outlier.consecutive_local_origin_failures or 0) > 0:
                ow.error("outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false", ".consecutiveLocalOriginFailures")
            for name, value in (("maxEjectionPercent", outlier.max_ejection_percent), ("minHealthPercent", outlier.min_health_percent)):
                if not 0 <= value <= 100:
                    ow.error(f"percentage {value} is not in range 0..100", f".{name}")
            for code in outlier.outlier_detection_http_error_codes:
                if not 100 <= code <= 599:
                    ow.error(f"HTTP status code {code} is not in range 100..599", ".outlierDetectionHttpErrorCodes")
        if pool is not None:
            pw = w.at(".connectionPool")
            if pool.http is None and pool.tcp is None:
                pw.error("connection pool must have at least one field")
            if pool.http is not None:
                h = pool.http
                for name, value in (
                    ("http1MaxPendingRequests", h.http1_max_pending_requests), ("http2MaxRequests", h.http2_max_requests),
                    ("maxRequestsPerConnection", h.max_requests_per_connection), ("maxRetries", h.max_retries),
                    ("maxConcurrentStreams", h.max_concurrent_streams),
                ):
                    if value < 0:
                        pw.error(f"{name} must be non-negative", f".http.{name}")
                if h.idle_timeout is not None and (problem := _duration_problem(h.idle_timeout)):
                    pw.error(problem, ".http.idleTimeout")
                if h.h2_upgrade_policy == "UPGRADE" and h.use_client_protocol:
                    pw.error("use client protocol must not be true when H2UpgradePolicy is UPGRADE", ".http.useClientProtocol")
                if h.http2_keep_alive is not None:
                    for name in ("interval", "timeout"):
                        value = getattr(h.http2_keep_alive, name)
                        if value is None:
                            pw.error(f"http2 keepalive {name} is required", f".http.http2KeepAlive.{name}")
                        elif problem := _duration_problem(value):
                            pw.error(problem, f".http.http2KeepAlive.{name}")
            if pool.tcp is not None:
                t = pool.tcp
                if t.max_connections < 0:
                    pw.error("max connections must be non-negative", ".tcp.maxConnections")
                for name, value in (("connectTimeout", t.connect_timeout), ("maxConnectionDuration", t.max_connection_duration)):
                    if value is not None and (problem := _duration_problem(value)):
                        pw.error(problem, f".tcp.{name}")
                if t.idle_timeout is not None and t.idle_timeout >= 0.001 and (problem := _duration_problem(t.idle_timeout)):
                    pw.error(problem, ".tcp.idleTimeout")
                if t.tcp_keepalive is not None:
                    for name in ("time", "interval"):
                        value = getattr(t.tcp_keepalive, name)
                        if value is not None and (problem := _duration_problem(value)):
                            pw.error(problem, f".tcp.tcpKeepalive.{name}")
        if lb is not None:
            lw = w.at(".loadBalancer")
            ch = lb.consistent_hash
            if ch is not None:
                if ch.http_header_name is not None and (problem := wire.header_name_problem(ch.http_header_name)):
                    lw.error(problem, ".consistentHash.httpHeaderName")
                if ch.http_query_parameter_name is not None and (problem := wire.query_name_problem(ch.http_query_parameter_name)):
                    lw.error(problem, ".consistentHash.httpQueryParameterName")
                if ch.http_cookie is not None:
                    # Written into Set-Cookie (edge/wire.py).
                    if problem := wire.cookie_name_problem(ch.http_cookie.name):
                        lw.error(problem, ".consistentHash.httpCookie.name")
                    if ch.http_cookie.path and (problem := wire.cookie_attribute_problem(ch.http_cookie.path)):
                        lw.error(problem, ".consistentHash.httpCookie.path")
                    seen: set[str] = set()
                    for attr in ch.http_cookie.attributes:
                        if not attr.name:
                            lw.error("cookie attribute name cannot be empty", ".consistentHash.httpCookie.attributes")
                        elif attr.name in seen:
                            lw.error(f"duplicate cookie attribute name: {attr.name}", ".consistentHash.httpCookie.attributes")
                        elif (problem := wire.cookie_name_problem(attr.name)) or (attr.value and (problem := wire.cookie_attribute_problem(attr.value))):
                            lw.error(problem, ".consistentHash.httpCookie.attributes")
                        seen.add(attr.name)
                    if ch.http_cookie.ttl is not None and ch.http_cookie.ttl < 0:
                        lw.error("cookie ttl cannot be negative", ".consistentHash.httpCookie.ttl")
                if ch.minimum_ring_size:
                    lw.warn("consistent hash minimumRingSize is deprecated, use ringHash instead", ".consistentHash.minimumRingSize")
                    if ch.ring_hash is not None or ch.maglev is not None:
                        lw.error("only one of MinimumRingSize or Maglev/Ringhash can be specified", ".consistentHash")
                if ch.maglev is not None:
                    size = ch.maglev.table_size
                    if size == 0:
                        lw.error("tableSize must be set for maglev", ".consistentHash.maglev.tableSize")
                    elif size >= 5000011:
                        lw.error("tableSize must be less than 5000011 for maglev", ".consistentHash.maglev.tableSize")
                    elif not _is_prime(size):
                        lw.error("tableSize must be a prime number for maglev", ".consistentHash.maglev.tableSize")
            if lb.simple == "PASSTHROUGH":
                lw.warn("PASSTHROUGH load balancing forwards to the original destination, which a standalone gateway does not have; LEAST_REQUEST is used", ".simple")
            if lb.warmup is not None:
                if problem := _duration_problem(lb.warmup.duration):
                    lw.error(problem, ".warmup.duration")
                if (lb.warmup.minimum_percent or 0) > 100:
                    lw.error("minimumPercent value should be less than or equal to 100", ".warmup.minimumPercent")
                if lb.warmup.aggression is not None and lb.warmup.aggression <= 0:
                    lw.error("aggression should be greater than 0", ".warmup.aggression")
            if lb.warmup is not None or lb.warmup_duration_secs is not None:
                lw.warn("slow start (warmup) is not supported here; endpoints take full traffic at once", ".warmup")
        if tls is not None:
            tw = w.at(".tls")
            if tls.credential_name and (problem := wire.credential_name_problem(tls.credential_name)):
                tw.error(problem, ".credentialName")
            if tls.sni and (problem := wire.sni_problem(tls.sni)):
                tw.error(problem, ".sni")
            if tls.insecure_skip_verify:
                if tls.mode == "SIMPLE" and (tls.ca_certificates or tls.credential_name or tls.subject_alt_names):
                    tw.error("cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true")
                if tls.mode == "MUTUAL" and (tls.ca_certificates or tls.subject_alt_names):
                    tw.error("cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true")
            if tls.mode in ("SIMPLE", "MUTUAL") and tls.credential_name:
                if tls.client_certificate or tls.ca_certificates or tls.private_key or tls.ca_crl:
                    tw.error("cannot specify client certificates or CA certificate or CA CRL If credentialName is set")
            elif tls.mode == "MUTUAL":
                if not tls.client_certificate:
                    tw.error("client certificate required for mutual tls", ".clientCertificate")
                if not tls.private_key:
                    tw.error("private key required for mutual tls", ".privateKey")
            if tls.mode == "ISTIO_MUTUAL":
                tw.warn("ISTIO_MUTUAL needs Istio workload certificates; the upstream connection is plain text (DISABLE)", ".mode")

    # -- 1c. service registry and destination rules ------------------------------------------------------

    def _index_services(self) -> None:
        for res in self.service_entries:
            for j, h in enumerate(res.spec.hosts):
                first = self.services.get(h)
                if first is not None:
                    self.report.add(WARNING, res, f"$.spec.hosts[{j}]", f"host {h} is already defined by ServiceEntry {first.res.key} ({first.res.file}:{first.res.line}), which is used")
                    continue
                self.services[h] = _Service(res=res, spec=res.spec, host=h)

    def _merge_destination_rules(self) -> None:
        """mergeDestinationRule: per host, the first top-level policy wins and subsets are concatenated, the
        first definition of a name winning."""
        for res in self.destination_rules:
            dr: istio.DestinationRule = res.spec
            host = resolve_shortname(dr.host, res.namespace, self.domain)
            merged = self.dr_exact.get(host) if not host.startswith("*") else next((m for h, m in self.dr_wildcard if h == host), None)
            if merged is None:
                merged = _MergedDR(res=res, host=host, traffic_policy=dr.traffic_policy, subsets={})
                if host.startswith("*"):
                    self.dr_wildcard.append((host, merged))
                else:
                    self.dr_exact[host] = merged
            elif merged.traffic_policy is None:
                merged.traffic_policy = dr.traffic_policy
            for j, subset in enumerate(dr.subsets):
                if subset.name in merged.subsets and merged.res is not res:
                    self.report.add(WARNING, res, f"$.spec.subsets[{j}]", f"subset {subset.name} of host {host} is already defined by DestinationRule {merged.res.key}, which is used")
                    continue
                merged.subsets.setdefault(subset.name, subset)
        # Most specific wildcard first (longest name), as MostSpecificHostMatch picks.
        self.dr_wildcard.sort(key=lambda hm: (-len(hm[0]), hm[0]))

    def _destination_rule_for(self, host: str) -> _MergedDR | None:
        merged = self.dr_exact.get(host)
        if merged is not None:
            return merged
        for pattern, merged in self.dr_wildcard:
            if host.endswith(pattern[1:]) and (host[:1] != "*" or len(host) >= len(pattern)):
                return merged
        return None

    # -- 2. gateways -------------------------------------------------------------------------------------

    def _select_gateways(self) -> list[istio.Resource]:
        selected = []
        shown = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "(none)"
        for res in self.gateways:
            if selector_matches(res.spec.selector, self.labels):
                selected.append(res)
            else:
                wanted = ",".join(f"{k}={v}" for k, v in sorted(res.spec.selector.items()))
                self.report.add(WARNING, res, "$.spec.selector", f"selector {wanted} does not match this gateway's labels {shown} (--gateway-labels): the Gateway is not served here")
        return selected

    # -- 3. servers → listener plans ---------------------------------------------------------------------

    def _merge_servers(self, gateways: list[istio.Resource]) -> list[_ListenerPlan]:
        plans: dict[tuple[str, int], _ListenerPlan] = {}
        for gw in gateways:
            for i, s in enumerate(gw.spec.servers):
                if (gw.key, i) in self.invalid_servers:
                    continue
                w = _Where(self.report, gw, f"$.spec.servers[{i}]")
                kind = _server_kind(s)
                if kind is None:
                    if s.tls is not None and s.tls.mode == "ISTIO_MUTUAL":
                        w.warn("ISTIO_MUTUAL needs Istio workload certificates and mesh clients: the server is skipped", ".tls.mode")
                    continue
                srv = _Server(gateway=gw, index=i, server=s, hosts=sanitize_server_hosts(s.hosts, gw.namespace), kind=kind)
                key = (s.bind, s.port.number)
                plan = plans.get(key)
                group = KIND_GROUP[kind]
                if plan is None:
                    plans[key] = _ListenerPlan(bind=s.bind, port=s.port.number, group=group, servers=[srv])
                    continue
                other = plan.servers[0]
                if group != plan.group or group == "tcp":
                    reason = "only one TCP server can use a port" if group == plan.group else "plain HTTP, TLS (HTTPS/TLS) and TCP servers cannot share a port and bind"
                    w.error(f"conflicts with {other.describe()} on port {s.port.number}{' bind ' + s.bind if s.bind else ''}: {reason}; this server is skipped")
                    continue
                if s.tls is not None and self._duplicate_tls_hosts(w, srv, plan):
                    continue
                plan.servers.append(srv)
        return list(plans.values())

    def _duplicate_tls_hosts(self, w: _Where, srv: _Server, plan: _ListenerPlan) -> bool:
        """model.CheckDuplicates: a host already served with TLS on this (bind, port) would be an identical
        SNI filter-chain match."""
        def names(s: _Server) -> set[str]:
            # TLS servers: SNI names ("*" when any SNI); httpsRedirect HTTP servers: the hosts as written.
            return set(s.hosts) if s.kind == KIND_HTTP else (set(_sni_names(s.hosts)) or {"*"})

        mine = names(srv)
        for other in plan.servers:
            if other.server.tls is None:
                continue
            both = sorted(mine & names(other))
            if both:
                w.error(f"duplicate TLS host names {both} on port {srv.port}: already served by {other.describe()}; this server is skipped")
                return True
        return False

    # -- 4. virtual services: resolve, merge delegates, translate rules ---------------------------------

    def _prepare_virtual_services(self) -> None:
        delegates: dict[str, tuple[istio.Resource, istio.VirtualService]] = {}
        roots = []
        for res in self.virtual_services:
            spec = _resolve_virtual_service(res.spec, res.namespace, self.domain)
            self._validate_virtual_service(res, spec)
            if not res.spec.hosts:
                delegates[res.key] = (res, spec)
            else:
                roots.append((res, spec))
        referenced: set[str] = set()
        for res, spec in roots:
            http = self._merge_delegates(res, spec, delegates, referenced)
            gateways = tuple(dict.fromkeys(g for g in spec.gateways if g != MESH_GATEWAY))
            vs = _VirtualService(res=res, spec=spec, gateways=gateways, http=http)
            vs.rules = self._translate_rules(vs)
            self.roots.append(vs)
            for g in gateways:
                self.bound.setdefault(g, []).append(vs)
        for key, (res, spec) in delegates.items():
            # Delegates are validated and translated on their own too, as Istio admits them on their own.
            self._translate_rules(_VirtualService(res=res, spec=spec, gateways=(), http=[(res, f"$.spec.http[{i}]", h) for i, h in enumerate(spec.http)]))

    def _merge_delegates(self, res, spec, delegates, referenced) -> list[tuple[istio.Resource, str, istio.HTTPRoute]]:
        """virtualservice_controller.go mergeVirtualServices + MergeHTTPRoutes (ISTIO-SEMANTICS 2.22)."""
        out = []
        for i, route in enumerate(spec.http):
            if route.delegate is None:
                out.append((res, f"$.spec.http[{i}]", route))
                continue
            ns = route.delegate.namespace or res.namespace
            key = f"{ns}/{route.delegate.name}"
            found = delegates.get(key)
            if found is None:
                other = self.vs_by_key.get(key)
                why = "it has hosts, so it is a root VirtualService, not a delegate" if other is not None else "not found"
                self.report.add(WARNING, res, f"$.spec.http[{i}].delegate", f"delegate VirtualService {key} {why}: this rule is left out")
                continue
            referenced.add(key)
            d_res, d_spec = found
            for j, sub in enumerate(d_spec.http):
                merged = _merge_http_route(route, sub)
                if merged is None:
                    self.report.add(
                        WARNING, d_res, f"$.spec.http[{j}].match",
                        f"match conflicts with every match of root {res.ref} http[{i}] (a delegate match must be a subset of a root match): this rule is left out",
                    )
                    continue
                out.append((d_res, f"$.spec.http[{j}]", merged))
        return out

    def _validate_virtual_service(self, res: istio.Resource, spec: istio.VirtualService) -> None:
        raw: istio.VirtualService = res.spec
        w = _Where(self.report, res)
        delegate = not raw.hosts
        if delegate:
            if raw.gateways:
                w.error("delegate virtual service must have no gateways specified", ".gateways")
            if raw.tls:
                w.error("delegate virtual service must have no tls route specified", ".tls")
            if raw.tcp:
                w.error("delegate virtual service must have no tcp route specified", ".tcp")
        for j, g in enumerate(raw.gateways):
            if g != MESH_GATEWAY:
                self._validate_gateway_name(w, g, f".gateways[{j}]")
        applies_to_mesh = not raw.gateways or MESH_GATEWAY in raw.gateways
        valid_hosts = True
        for j, h in enumerate(raw.hosts):
            problem = _validate_wildcard_domain(h)
            if problem and not _is_ip(h):
                w.error(problem, f".hosts[{j}]")
                valid_hosts = False
            elif h == "*" and applies_to_mesh:
                w.error("wildcard host * is not allowed for virtual services bound to the mesh gateway", f".hosts[{j}]")
                valid_hosts = False
        if valid_hosts:
            for a in range(len(raw.hosts)):
                for b in range(a + 1, len(raw.hosts)):
                    if host_matches(raw.hosts[a], raw.hosts[b]):
                        w.error(f"duplicate hosts in virtual service: {raw.hosts[a]} & {raw.hosts[b]}", ".hosts")
        if not raw.http and not raw.tcp and not raw.tls:
            w.error("http, tcp or tls must be provided in virtual service")
        if not delegate and not [g for g in raw.gateways if g != MESH_GATEWAY]:
            w.warn(
                "no gateways: the VirtualService applies to sidecars (the `mesh` gateway) only and is never bound to a Gateway here; list the Gateway in spec.gateways",
                ".gateways",
            )
        for i, route in enumerate(raw.http):
            rw = w.at(f".http[{i}]")
            if route.redirect is not None and route.fault is not None:
                rw.error("HTTP route cannot contain both fault and redirect", ".fault")
            if route.delegate is not None:
                if delegate:
                    rw.error("delegate HTTP route cannot contain delegate", ".delegate")
                if route.redirect is not None:
                    rw.error(f"root HTTP route {route.name} must not specify redirect", ".redirect")
                if route.route:
                    rw.error(f"root HTTP route {route.name} must not specify route", ".route")
            for k, m in enumerate(route.match):
                for j, g in enumerate(m.gateways):
                    if g != MESH_GATEWAY:
                        self._validate_gateway_name(rw, g, f".match[{k}].gateways[{j}]")
                for name in list(m.headers) + list(m.without_headers):
                    if name.lower().startswith(JWT_CLAIM_PREFIX) and applies_to_mesh and not delegate:
                        rw.error(f"JWT claim based routing (key: {name}) is only supported for gateway, found no gateways: {raw.gateways}", f".match[{k}].headers")
        for i, t in enumerate(raw.tls):
            tw = w.at(f".tls[{i}]")
            if not t.match:
                tw.error("TLS route must have at least one match condition", ".match")
            for k, m in enumerate(t.match):
                if not m.sni_hosts:
                    tw.error("TLS match must have at least one SNI host", f".match[{k}].sniHosts")
                for s, sni in enumerate(m.sni_hosts):
                    problem = _validate_wildcard_domain(sni)
                    if problem:
                        if _is_ip(sni):
                            tw.warn(f"using an IP address ({sni!r}) goes against SNI spec and most clients do not support this", f".match[{k}].sniHosts[{s}]")
                        else:
                            tw.error(problem, f".match[{k}].sniHosts[{s}]")
                        continue
                    if not any(host_subset_of(sni, h) for h in raw.hosts):
                        tw.error(f"SNI host {sni!r} is not a compatible subset of any of the virtual service hosts: [{', '.join(raw.hosts)}]", f".match[{k}].sniHosts[{s}]")
                self._validate_l4_match(tw.at(f".match[{k}]"), m.port, m.gateways)
            if not t.route:
                tw.error("TLS route is required", ".route")
            self._validate_l4_destinations(tw, t.route)
        for i, t in enumerate(raw.tcp):
            tw = w.at(f".tcp[{i}]")
            for k, m in enumerate(t.match):
                self._validate_l4_match(tw.at(f".match[{k}]"), m.port, m.gateways)
            if not t.route:
                tw.error("TCP route is required", ".route")
            self._validate_l4_destinations(tw, t.route)
        _analyze_unreachable(w, raw.http, ".http")
        _analyze_unreachable(w, raw.tcp, ".tcp")

    def _validate_gateway_name(self, w: _Where, name: str, sub: str) -> None:
        """validateGatewayNames. Note: Istio's validation rejects `./name` although resolveGatewayName knows it."""
        ns, sep, gw = name.partition("/")
        if not sep:
            if "." in name:
                parts = name.split(".")
                w.warn(f"using legacy gatewayName format {name!r}; prefer the <namespace>/<name> format: {parts[1]}/{parts[0]!r}", sub)
            problem = _validate_fqdn(name)
            if problem:
                w.error(problem, sub)
            return
        if not ns or not gw:
            w.error("config namespace and gateway name cannot be empty", sub)
            return
        if not _is_dns1123_label(ns):
            w.error(f"invalid value for namespace: {ns!r}" + (" (Istio's validation rejects ./name; write the namespace)" if ns == "." else ""), sub)
        if not _is_dns1123_label(gw):
            w.error(f"invalid value for gateway name: {gw!r}", sub)

    def _validate_l4_match(self, w: _Where, port: int, gateways: list[str]) -> None:
        if port and not 1 <= port <= 65535:
            w.error(f"port number {port} must be in the range 1..65535", ".port")
        for j, g in enumerate(gateways):
            if g != MESH_GATEWAY:
                self._validate_gateway_name(w, g, f".gateways[{j}]")

    def _validate_l4_destinations(self, w: _Where, routes: list[istio.RouteDestination]) -> None:
        total = 0
        for j, d in enumerate(routes):
            self._validate_destination(w, d.destination, f".route[{j}].destination")
            if d.weight < 0:
                w.error(f"weight {d.weight} < 0", f".route[{j}].weight")
            total += d.weight
        if len(routes) > 1 and total == 0:
            w.error("total destination weight = 0", ".route")

    def _validate_destination(self, w: _Where, d: istio.Destination, sub: str) -> None:
        if d.host == "*":
            w.error(f"invalid destination host {d.host}", sub + ".host")
        else:
            problem = _validate_wildcard_domain(d.host)
            if problem:
                w.error(problem, sub + ".host")
        if d.subset and not _is_dns1123_label(d.subset):
            w.error(f"subset name is invalid: {d.subset}", sub + ".subset")
        if d.port is not None and not 1 <= d.port.number <= 65535:
            w.error(f"port number {d.port.number} must be in the range 1..65535", sub + ".port.number")

    # -- 6a. HTTP rules: everything that does not depend on the gateway and port ------------------------

    def _translate_rules(self, vs: _VirtualService) -> list[_Rule]:
        rules = []
        for index, (owner, path, route) in enumerate(vs.http):
            rule = self._translate_rule(_Where(self.report, owner, path), index, route)
            if rule is not None:
                rules.append(rule)
        return rules

    def _translate_rule(self, w: _Where, index: int, h: istio.HTTPRoute) -> _Rule | None:
        if h.delegate is not None:
            return None  # merged away (or reported) already
        if h.redirect is None and h.direct_response is None and not h.route:
            w.error("HTTP route, redirect or direct_response is required")
        matches = None
        if h.match:
            matches = []
            for k, m in enumerate(h.match):
                compiled = self._translate_match(w, m, f".match[{k}]")
                if compiled is not None:
                    matches.append(compiled)
        headers = self._translate_header_rules(w, h.headers, ".headers")
        authority = headers.authority if headers is not None else ""
        rewrite = None
        if h.rewrite is not None:
            rewrite = self._translate_rewrite(w, h.rewrite, h.match)
            if rewrite is not None and rewrite.authority and authority:
                w.error(f'authority header cannot be set multiple times: have "{rewrite.authority}", attempting to set "{authority}"', ".headers.request")
        redirect_supported = True
        needs_prefix = rewrite is not None and rewrite.prefix is not None
        if h.redirect is not None:
            redirect_supported = self._validate_redirect(w, h.redirect, h.match)
            needs_prefix = bool(h.redirect.prefix_rewrite)
        direct = self._translate_direct(w, h.direct_response) if h.direct_response is not None else None
        timeout_s = 0.0
        if h.timeout is not None:
            if problem := _duration_problem(h.timeout):
                w.error(problem, ".timeout")
            timeout_s = float(h.timeout)
        retry = self._translate_retry(w, h.retries) if h.retries is not None else None
        fault = self._translate_fault(w, h.fault) if h.fault is not None else None
        cors = self._translate_cors(w, h.cors_policy) if h.cors_policy is not None else None
        self._validate_mirrors(w, h)
        total = 0
        dest_headers = []
        for j, d in enumerate(h.route):
            dw = w.at(f".route[{j}]")
            self._validate_destination(dw, d.destination, ".destination")
            if d.weight < 0:
                dw.error(f"weight {d.weight} < 0", ".weight")
            total += d.weight
            dest_headers.append(self._translate_header_rules(dw, d.headers, ".headers") if d.headers is not None else None)
        if len(h.route) > 1 and total == 0:
            w.error("total destination weight = 0", ".route")
        if w.failed:
            return None
        return _Rule(
            owner=w.res, path=w.path, index=index, http=h, matches=matches, headers=headers, timeout_s=timeout_s,
            retry=retry, fault=fault, cors=cors, direct=direct, rewrite=rewrite, redirect_supported=redirect_supported,
            needs_prefix=needs_prefix, dest_headers=dest_headers,
        )

    def _translate_match(self, w: _Where, m: istio.HTTPMatchRequest, sub: str) -> _Match | None:
        mw = w.at(sub)
        path = None
        catch_all = m.uri is None
        if m.uri is not None:
            u = m.uri
            if u.exact is not None:
                path = table.StringMatcher(kind=table.MATCH_EXACT, value=u.exact, ignore_case=m.ignore_uri_case)
            elif u.prefix is not None:
                path = table.StringMatcher(kind=table.MATCH_PREFIX, value=u.prefix, ignore_case=m.ignore_uri_case)
                catch_all = u.prefix == "/"
            elif u.regex is not None:
                pattern = self._regex(mw, u.regex, ".uri.regex")
                path = table.StringMatcher(kind=table.MATCH_REGEX, value=pattern or "")
                catch_all = u.regex == ".*"
            else:
                catch_all = True  # uri: {} is Envoy's prefix "/"
        headers: list[table.HeaderMatcher] = []
        for invert, source, where in ((False, m.headers, ".headers"), (True, m.without_headers, ".withoutHeaders")):
            for name in sorted(source):
                key = f"{where}.{name}"
                if name.lower().startswith(JWT_CLAIM_PREFIX):
                    if invert:
                        mw.warn("JWT claims need RequestAuthentication, which is not supported here: the claim is never present, so this condition always holds", key)
                        continue
                    mw.warn("JWT claims need RequestAuthentication, which is not supported here: this match block never matches and is left out", key)
                    return None
                if name not in _PSEUDO_HEADERS and wire.header_name_problem(name) is not None:
                    mw.error(f"header name {name} is not a valid header name", key)
                    continue
                sm = source[name]
                if invert and sm.regex == "*":
                    matcher = table.StringMatcher(kind=table.MATCH_PRESENT)
                else:
                    matcher = self._string_matcher(mw, sm, key)
                if matcher is not None:
                    headers.append(table.HeaderMatcher(name=name.lower(), matcher=matcher, invert=invert))
        for pseudo, sm, where in ((":method", m.method, ".method"), (":authority", m.authority, ".authority"), (":scheme", m.scheme, ".scheme")):
            if sm is not None:
                matcher = self._string_matcher(mw, sm, where)
                if matcher is not None:
                    headers.append(table.HeaderMatcher(name=pseudo, matcher=matcher))
        query = []
        for name in sorted(m.query_params):
            matcher = self._string_matcher(mw, m.query_params[name], f".queryParams.{name}")
            if matcher is not None:
                query.append(table.QueryMatcher(name=name, matcher=matcher))
        if m.port and not 1 <= m.port <= 65535:
            mw.error(f"port number {m.port} must be in the range 1..65535", ".port")
        if mw.failed:
            return None
        headers.sort(key=lambda hm: (hm.name, hm.invert))
        catch_all = catch_all and not headers and not query
        return _Match(
            match=table.RouteMatch(path=path, headers=tuple(headers), query=tuple(query), name=m.name),
            port=m.port,
            gateways=tuple(m.gateways),
            source_labels=m.source_labels,
            source_namespace=m.source_namespace,
            catch_all=catch_all,
            path=w.path + sub,
            stat_prefix=m.stat_prefix,
        )

    def _string_matcher(self, w: _Where, sm: istio.StringMatch, sub: str) -> table.StringMatcher | None:
        """translateHeaderMatch / translateQueryParamMatch: `{}` and regex `*` are presence matches."""
        if sm.is_empty or sm.regex == "*":
            return table.StringMatcher(kind=table.MATCH_PRESENT)
        if sm.exact is not None:
            return table.StringMatcher(kind=table.MATCH_EXACT, value=sm.exact)
        if sm.prefix is not None:
            if sm.prefix == "":
                w.error("prefix string match should not be empty", sub)
                return None
            return table.StringMatcher(kind=table.MATCH_PREFIX, value=sm.prefix)
        pattern = self._regex(w, sm.regex, sub + ".regex")
        return table.StringMatcher(kind=table.MATCH_REGEX, value=pattern) if pattern is not None else None

    def _regex(self, w: _Where, pattern: str, sub: str) -> str | None:
        """The pattern as written, once RE2 accepted it (workers/regex.py matches it with RE2, as Envoy does)."""
        problem = regex_problem(pattern)
        if problem is not None:
            w.error(f"invalid regex {pattern!r}: {problem}; Istio uses RE2 syntax (https://github.com/google/re2/wiki/Syntax)", sub)
            return None
        return pattern

    def _translate_header_rules(self, w: _Where, headers: istio.Headers | None, sub: str) -> table.HeaderRules | None:
        """TranslateHeadersOperations: names lowercased; `:authority`/`host` in request set/add is a host
        rewrite (set beats add); other pseudo-headers and `host` can be neither set nor removed."""
        if headers is None:
            return None
        hw = w.at(sub)
        authority = ""
        ops = {}
        for side, op in (("request", headers.request), ("response", headers.response)):
            if op is None:
                ops[side] = None
                continue
            sets, adds = [], []
            set_authority = add_authority = ""
            for kind, source, target in (("set", op.set, sets), ("add", op.add, adds)):
                for name in sorted(source):
                    value = source[name]
                    key = f".{side}.{kind}.{name}"
                    if not name:
                        hw.error("header name cannot be empty", key)
                        continue
                    if problem := _header_value_problem(value):
                        hw.error(problem, key)
                    lname = name.lower()
                    if side == "request" and lname in (":authority", "host"):
                        if problem := wire.authority_problem(value):
                            hw.error(problem, key)
                        if kind == "set":
                            set_authority = value
                        else:
                            add_authority = value
                        continue
                    if not lname.startswith(":") and (problem := wire.header_name_problem(name)):
                        hw.error(problem, key)
                        continue
                    if lname.startswith(":") or lname == "host":
                        hw.error(f'invalid header "{name}": ' + ("cannot set Host header" if lname == "host" else 'header cannot have ":" prefix'), key)
                        continue
                    target.append((lname, value))
            removes = []
            for j, name in enumerate(op.remove):
                lname = name.lower()
                if not name:
                    hw.error("header name cannot be empty", f".{side}.remove[{j}]")
                elif not lname.startswith(":") and (problem := wire.header_name_problem(name)):
                    hw.error(problem, f".{side}.remove[{j}]")
                elif lname == "host" or lname.startswith(":"):
                    hw.error(f'invalid header "{name}": ' + ("cannot set Host header" if lname == "host" else 'header cannot have ":" prefix'), f".{side}.remove[{j}]")
                else:
                    removes.append(lname)
            if side == "request":
                if set_authority and add_authority:
                    hw.error(f'authority header cannot be set multiple times: have "{set_authority}", attempting to set "{add_authority}"', f".{side}")
                authority = set_authority or add_authority
            ops[side] = table.HeaderOps(set=tuple(sets), add=tuple(adds), remove=tuple(removes)) if (sets or adds or removes) else None
        if ops["request"] is None and ops["response"] is None and not authority:
            return None
        return table.HeaderRules(request=ops["request"], response=ops["response"], authority=authority)

    def _translate_rewrite(self, w: _Where, rw: istio.HTTPRewrite, matches: list[istio.HTTPMatchRequest]) -> table.Rewrite | None:
        """`uri` is Envoy's prefix_rewrite: the matched prefix is replaced, or the whole path when the match is
        exact or regex (Envoy's matched "prefix" is then the whole path)."""
        ww = w.at(".rewrite")
        if not rw.uri and rw.uri_regex_rewrite is None and not rw.authority:
            ww.error("rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified")
            return None
        prefix = regex = None
        substitution = ""
        if rw.uri_regex_rewrite is not None:
            rr = rw.uri_regex_rewrite
            if not rr.match or not rr.rewrite:
                ww.error("UriRegexRewrite requires both Rewrite and Match fields to be specified", ".uriRegexRewrite")
                return None
            regex = self._regex(ww, rr.match, ".uriRegexRewrite.match")
            if regex is None:
                return None
            try:
                substitution = translate_re2_rewrite(rr.rewrite, regex_groups(regex))
            except RegexError as exc:
                ww.error(str(exc), ".uriRegexRewrite.rewrite")
                return None
        elif rw.uri:
            if problem := wire.path_problem(rw.uri, "rewrite uri", absolute=False):
                ww.error(problem, ".uri")
                return None
            prefix = rw.uri  # per route, an exact or regex path match turns it into full_path (_route_rewrite)
        if rw.uri_regex_rewrite is not None and (problem := wire.path_problem(rw.uri_regex_rewrite.rewrite, "uriRegexRewrite.rewrite", absolute=False)):
            ww.error(problem, ".uriRegexRewrite.rewrite")
            return None
        if rw.authority and (problem := wire.authority_problem(rw.authority)):
            ww.error(problem, ".authority")
            return None
        return table.Rewrite(prefix=prefix, regex=regex, regex_substitution=substitution, authority=rw.authority)

    def _validate_redirect(self, w: _Where, r: istio.HTTPRedirect, matches: list[istio.HTTPMatchRequest]) -> bool:
        rw = w.at(".redirect")
        if r.prefix_rewrite:
            for m in matches:
                if m.uri is not None and m.uri.prefix is None:
                    rw.error("redirect prefix_rewrite requires all URI matches to use prefix match type", ".prefixRewrite")
                    break
        if not (r.uri or r.prefix_rewrite or r.authority or r.port is not None or r.derive_port is not None or r.scheme):
            rw.error("redirect must specify URI, authority, scheme, or port")
        if r.redirect_code and not 300 <= r.redirect_code <= 399:
            rw.error(f"{r.redirect_code} is not a valid redirect code, must be 3xx", ".redirectCode")
            return False
        if r.scheme and r.scheme not in ("http", "https"):
            rw.error('invalid redirect scheme, must be "http" or "https"', ".scheme")
        if r.port is not None and not 1 <= r.port <= 65535:
            rw.error(f"port number {r.port} must be in the range 1..65535", ".port")
        # What becomes the Location header (edge/wire.py): a CR or LF here would split the response.
        wire_ok = True
        for field_name, value, check in (
            (".uri", r.uri, lambda v: wire.path_problem(v, "redirect uri")),
            (".prefixRewrite", r.prefix_rewrite, lambda v: wire.path_problem(v, "redirect prefixRewrite", absolute=False)),
            (".authority", r.authority, wire.authority_problem),
        ):
            if value and (problem := check(value)):
                rw.error(problem, field_name)
                wire_ok = False
        if not wire_ok:
            return False
        if r.redirect_code and r.redirect_code not in SUPPORTED_REDIRECT_CODES:
            rw.warn(f"Redirect Code {r.redirect_code} is not yet supported (Envoy takes 301, 302, 303, 307, 308): the rule has no action and is left out", ".redirectCode")
            return False
        return True

    def _translate_direct(self, w: _Where, d: istio.HTTPDirectResponse) -> table.DirectResponse | None:
        dw = w.at(".directResponse")
        if not 200 <= d.status <= 599:
            dw.error(f"HTTP status {d.status} is not in range 200-599", ".status")
        body = b""
        if d.body is not None:
            if d.body.string is not None:
                body = d.body.string.encode("utf-8")
            elif d.body.bytes is not None:
                try:
                    body = base64.b64decode(d.body.bytes, validate=True)
                except (binascii.Error, ValueError):
                    dw.error("body.bytes is not valid base64", ".body.bytes")
        if len(body) > MAX_DIRECT_RESPONSE_BYTES:
            dw.error("large direct_responses may impact control plane performance, must be less than 1MB", ".body")
        elif len(body) > WARN_DIRECT_RESPONSE_BYTES:
            dw.warn("large direct_responses may impact control plane performance", ".body")
        return table.DirectResponse(status=d.status, body=body)

    def _translate_retry(self, w: _Where, r: istio.HTTPRetry) -> table.RetryPolicy | None:
        """retry.ConvertPolicy; an explicit `attempts: 0` is RetryPolicy(attempts=0): no retries at all."""
        rw = w.at(".retries")
        if r.attempts < 0:
            rw.error("attempts cannot be negative", ".attempts")
        if r.attempts == 0 and (r.per_try_timeout is not None or r.retry_on or r.retry_remote_localities is not None):
            rw.error("http retry policy configured when attempts are set to 0 (disabled)")
        codes: list[int] = []
        tokens: list[str] = []
        if r.retry_on:
            for policy in r.retry_on.split(","):
                number = int(policy) if policy.isdigit() else 0
                if number not in HTTP_STATUS_CODES and policy not in RETRY_ON_POLICIES:
                    rw.error(f'"{policy}" is not a valid retryOn policy', ".retryOn")
            for part in (p.strip() for p in r.retry_on.split(",")):
                if not part:
                    continue
                if part.isdigit() and int(part) in HTTP_STATUS_CODES:
                    codes.append(int(part))
                else:
                    tokens.append(part)
            if codes and "retriable-status-codes" not in tokens:
                tokens.append("retriable-status-codes")
        for name, value in (("perTryTimeout", r.per_try_timeout), ("backoff", r.backoff)):
            if value is not None and (problem := _duration_problem(value)):
                rw.error(problem, f".{name}")
        if r.attempts <= 0:
            return table.RetryPolicy(attempts=0)
        return table.RetryPolicy(
            attempts=r.attempts,
            per_try_timeout_s=float(r.per_try_timeout or 0.0),
            retry_on=tuple(tokens) if r.retry_on else DEFAULT_RETRY_ON,
            retriable_status_codes=tuple(codes),
            backoff_base_s=float(r.backoff) if r.backoff is not None else 0.025,
            # Resolved per route: True unless set, or consistent hashing turns it off (_route_retry).
            ignore_previous_hosts=r.retry_ignore_previous_hosts if r.retry_ignore_previous_hosts is not None else True,
        )

    def _translate_fault(self, w: _Where, f: istio.HTTPFaultInjection) -> table.Fault | None:
        """TranslateFault: an absent percentage is 0 % (legacy delay.percent honoured); ppm precision."""
        fw = w.at(".fault")
        if f.delay is None and f.abort is None:
            fw.error("HTTP fault injection must have an abort and/or a delay")
            return None
        delay_s = 0.0
        delay_ppm = 0
        if f.delay is not None:
            d = f.delay
            if problem := _percent_problem(d.percentage):
                fw.error(problem, ".delay.percentage")
            if d.exponential_delay is not None:
                fw.error("exponentialDelay not supported yet", ".delay.exponentialDelay")
            elif d.fixed_delay is None:
                fw.warn("delay has no fixedDelay: ignored", ".delay")
            else:
                if problem := _duration_problem(d.fixed_delay):
                    fw.error(problem, ".delay.fixedDelay")
                if not 0 <= d.percent <= 100:
                    fw.error(f"percentage {d.percent} is not in range 0..100", ".delay.percent")
                delay_s = float(d.fixed_delay)
                delay_ppm = _ppm(d.percentage) if d.percentage is not None else d.percent * PPM_PER_PERCENT
        abort_status = 0
        grpc = ""
        abort_ppm = 0
        if f.abort is not None:
            a = f.abort
            if problem := _percent_problem(a.percentage):
                fw.error(problem, ".abort.percentage")
            if a.http_status is not None:
                if not 200 <= a.http_status <= 599:
                    fw.error(f"HTTP status {a.http_status} is not in range 200-599", ".abort.httpStatus")
                abort_status = a.http_status
            elif a.grpc_status is not None:
                if a.grpc_status not in GRPC_STATUSES:
                    fw.error(f"gRPC status {a.grpc_status!r} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'", ".abort.grpcStatus")
                grpc = a.grpc_status
            elif a.http2_error is not None:
                fw.error("HTTP/2 abort fault injection not supported yet", ".abort.http2Error")
            else:
                fw.warn("abort configured, but error type not set: ignored", ".abort")
            if abort_status or grpc:
                abort_ppm = _ppm(a.percentage) if a.percentage is not None else 0
        if not delay_s and not (abort_status or grpc):
            return None
        return table.Fault(delay_s=delay_s, delay_ppm=delay_ppm, abort_status=abort_status, abort_grpc_status=grpc, abort_ppm=abort_ppm)

    def _translate_cors(self, w: _Where, c: istio.CorsPolicy) -> table.Cors:
        cw = w.at(".corsPolicy")
        origins = []
        if c.allow_origins:
            for j, o in enumerate(c.allow_origins):
                value = o.exact or o.prefix or o.regex
                if not value:
                    cw.error(f"'{value or ''}' is not a valid match type for CORS allow origins", f".allowOrigins[{j}]")
                    continue
                m = self._string_matcher(cw, o, f".allowOrigins[{j}]")
                if m is not None:
                    origins.append(m)
        else:
            origins = [table.StringMatcher(kind=table.MATCH_EXACT, value=o) for o in c.allow_origin]
        for j, method in enumerate(c.allow_methods):
            if method not in CORS_METHODS:
                cw.error(f'"{method}" is not a supported HTTP method', f".allowMethods[{j}]")
        for field_name, names in (("allowHeaders", c.allow_headers), ("exposeHeaders", c.expose_headers)):
            for j, name in enumerate(names):
                if not name:
                    cw.error("header name cannot be empty", f".{field_name}[{j}]")
                elif name != "*" and (problem := wire.header_name_problem(name)):
                    cw.error(problem, f".{field_name}[{j}]")
        max_age = ""
        if c.max_age is not None:
            if problem := _duration_problem(c.max_age):
                cw.error(problem, ".maxAge")
            if c.max_age != int(c.max_age):
                cw.error("max_age duration is accurate only to seconds precision", ".maxAge")
            max_age = str(int(c.max_age))
        return table.Cors(
            allow_origins=tuple(origins),
            allow_methods=",".join(c.allow_methods),
            allow_headers=",".join(c.allow_headers),
            expose_headers=",".join(c.expose_headers),
            max_age=max_age,
            allow_credentials=bool(c.allow_credentials),
            unmatched_preflights="IGNORE" if c.unmatched_preflights == "IGNORE" else "FORWARD",
        )

    def _validate_mirrors(self, w: _Where, h: istio.HTTPRoute) -> None:
        if h.mirror_percent is not None:
            if h.mirror_percent > 100:
                w.error(f"mirror_percent must have a max value of 100 (it has {h.mirror_percent})", ".mirrorPercent")
            w.warn('using deprecated setting "mirrorPercent", use "mirrorPercentage" instead', ".mirrorPercent")
        if h.mirror is not None:
            self._validate_destination(w, h.mirror, ".mirror")
        for j, m in enumerate(h.mirrors):
            self._validate_destination(w, m.destination, f".mirrors[{j}].destination")

    # -- 6b. routes for one (VirtualService, gateway, port) ----------------------------------------------

    def _routes_for(self, vs: _VirtualService, gw_key: str, port: int, is_tls: bool) -> tuple[table.Route, ...]:
        """BuildHTTPRoutesForVirtualService: blocks filtered by port and gateways, stop at the first catch-all."""
        key = (vs.key, gw_key, port, is_tls)
        cached = self.route_cache.get(key)
        if cached is not None:
            return cached
        out: list[table.Route] = []
        for rule in vs.rules or ():
            if rule.matches is None:
                route = self._route(vs, rule, None, -1, port, is_tls)
                if route is not None:
                    out.append(route)
                break
            stop = False
            for index, m in enumerate(rule.matches):
                if m.port and m.port != port:
                    continue
                if not self._source_matches(vs, rule, m, gw_key):
                    continue
                route = self._route(vs, rule, m, index, port, is_tls)
                if route is not None:
                    out.append(route)
                    if m.catch_all:
                        stop = True
                        break
            if stop:
                break
        result = tuple(out)
        self.route_cache[key] = result
        return result

    def _route(self, vs: _VirtualService, rule: _Rule, m: _Match | None, index: int, port: int, is_tls: bool) -> table.Route | None:
        """One built Route per (rule, match block), shared by every gateway and port it does not depend on:
        the port only matters for destinations without a port on a multi-port service, and for redirect ports."""
        if rule.port_sensitive is None:
            rule.port_sensitive = self._port_sensitive(rule)
        key = (id(rule), index, (port, is_tls) if rule.port_sensitive else None)
        if key in self.built_routes:
            return self.built_routes[key]
        route = self._build_route(vs, rule, m, port, is_tls)
        self.built_routes[key] = route
        if route is not None and (m is None or m.catch_all):
            self.catch_alls.add(id(route))  # IsCatchAllRoute, known from the match block
        return route

    def _port_sensitive(self, rule: _Rule) -> bool:
        h = rule.http
        if h.redirect is not None:
            return h.redirect.port is not None or h.redirect.derive_port is not None
        dests = [r.destination for r in h.route] + ([h.mirror] if h.mirror is not None else []) + [mp.destination for mp in h.mirrors]
        for d in dests:
            if d.port is None:
                service = self.services.get(d.host)
                if service is not None and len(service.spec.ports) != 1:
                    return True
        return False

    def _source_matches(self, vs: _VirtualService, rule: _Rule, m: _Match, gw_key: str) -> bool:
        """sourceMatchHTTP: `gateways` decides alone when given; else sourceLabels ⊆ the gateway's labels and
        sourceNamespace (a standalone gateway has no namespace) must be empty."""
        if m.gateways:
            return gw_key in m.gateways
        if m.source_labels and not selector_matches(m.source_labels, self.labels):
            self.report.add(WARNING, rule.owner, m.path + ".sourceLabels", "sourceLabels do not match this gateway's labels (--gateway-labels): the match block is left out")
            return False
        if m.source_namespace:
            self.report.add(WARNING, rule.owner, m.path + ".sourceNamespace", "sourceNamespace never matches a standalone gateway (it has no namespace): the match block is left out")
            return False
        return True

    def _build_route(self, vs: _VirtualService, rule: _Rule, m: _Match | None, port: int, is_tls: bool) -> table.Route | None:
        h = rule.http
        match = m.match if m is not None else table.RouteMatch()
        name = h.name + ("." + m.match.name if m is not None and m.match.name else "")
        if rule.needs_prefix and match.path is None:
            match = msgspec.structs.replace(match, path=table.StringMatcher(kind=table.MATCH_PREFIX, value="/"))
        common = dict(
            name=name,
            virtual_service=vs.key,
            rule_index=rule.index,
            match=match,
            headers=rule.headers,
            fault=rule.fault,
            cors=rule.cors,
            stat_prefix=m.stat_prefix if m is not None else "",
        )
        if h.redirect is not None:
            if not rule.redirect_supported:
                return None
            return table.Route(action=table.ACTION_REDIRECT, redirect=_redirect(h.redirect, port, is_tls), **common)
        if rule.direct is not None:
            return table.Route(action=table.ACTION_DIRECT, direct=rule.direct, **common)
        clusters, total, hashed = self._weighted_clusters(rule, port)
        retry = rule.retry
        if retry is None:
            retry = DEFAULT_RETRY_CONSISTENT_HASH if hashed else None
        elif retry.attempts and hashed and h.retries.retry_ignore_previous_hosts is None:
            retry = msgspec.structs.replace(retry, ignore_previous_hosts=False)
        return table.Route(
            action=table.ACTION_FORWARD,
            clusters=clusters,
            total_weight=total,
            rewrite=_route_rewrite(rule.rewrite, m),
            timeout_s=rule.timeout_s,
            retry=retry,
            mirrors=self._mirrors(rule, port) if h.mirror is not None or h.mirrors else (),
            **common,
        )

    def _weighted_clusters(self, rule: _Rule, port: int):
        """applyHTTPRouteDestination: one destination takes everything; with several, weight 0 is dropped."""
        dests = rule.http.route
        single = len(dests) == 1
        route_authority = bool(rule.headers is not None and rule.headers.authority)
        out = []
        hashed = False
        for j, d in enumerate(dests):
            if not single and d.weight == 0:
                continue
            cluster = self._cluster_for(rule.owner, f"{rule.path}.route[{j}].destination", d.destination, port)
            headers = rule.dest_headers[j]
            if single and headers is not None and headers.authority and route_authority:
                # With one destination Istio puts the route's authority first and the destination's only
                # applies when the route has none.
                headers = msgspec.structs.replace(headers, authority="")
            hash_policy = self._hash_for_destination(d.destination)
            if single and hash_policy is not None:
                hashed = True
            out.append(
                table.WeightedCluster(
                    cluster=cluster,
                    weight=1 if single else d.weight,
                    headers=headers,
                    host=d.destination.host,
                    hash_policy=hash_policy,
                )
            )
        return tuple(out), sum(c.weight for c in out), hashed

    def _mirrors(self, rule: _Rule, port: int) -> tuple[table.Mirror, ...]:
        """MirrorPercent / MirrorPercentByPolicy: absent → 100 %, explicit 0 → no mirror."""
        h = rule.http
        out = []
        if h.mirror is not None:
            if h.mirror_percentage is not None:
                ppm = _ppm(h.mirror_percentage)
            elif h.mirror_percent is not None:
                ppm = h.mirror_percent * PPM_PER_PERCENT
            else:
                ppm = 100 * PPM_PER_PERCENT
            if ppm > 0:
                cluster = self._cluster_for(rule.owner, f"{rule.path}.mirror", h.mirror, port)
                if cluster:
                    out.append(table.Mirror(cluster=cluster, ppm=ppm, host=h.mirror.host))
        for j, mp in enumerate(h.mirrors):
            ppm = _ppm(mp.percentage) if mp.percentage is not None else 100 * PPM_PER_PERCENT
            if ppm > 0:
                cluster = self._cluster_for(rule.owner, f"{rule.path}.mirrors[{j}].destination", mp.destination, port)
                if cluster:
                    out.append(table.Mirror(cluster=cluster, ppm=ppm, host=mp.destination.host))
        return tuple(out)

    # -- 7. clusters ------------------------------------------------------------------------------------

    def _cluster_for(self, res: istio.Resource, path: str, d: istio.Destination, listen_port: int) -> str:
        """GetDestinationCluster + the registry lookup: "" (503 NC) when host, port or subset do not exist."""
        key = (d.host, d.subset, d.port.number if d.port is not None else 0, listen_port)
        name = self.resolved.get(key)
        if name is not None:
            return name
        service = self.services.get(d.host)
        if service is None:
            self.report.add(WARNING, res, path + ".host", f"destination host {d.host} is not defined by any ServiceEntry: requests routed to it answer 503 (NC)")
            return ""
        se = service.spec
        if d.port is not None:
            port = d.port.number
        elif len(se.ports) == 1:
            port = se.ports[0].number
        else:
            port = listen_port
        service_port = None
        for p in se.ports:
            if p.number == port:
                service_port = p
                break
        if service_port is None:
            known = ", ".join(str(p.number) for p in se.ports) or "none"
            how = "given" if d.port is not None else "taken from the Gateway server port, since the ServiceEntry does not have exactly one port"
            self.report.add(WARNING, res, path + (".port" if d.port is not None else ".host"), f"port {port} ({how}) is not a port of ServiceEntry {service.res.key} (ports: {known}): requests answer 503 (NC)")
            return ""
        dr = self._destination_rule_for(d.host)
        subset = None
        if d.subset:
            subset = dr.subsets.get(d.subset) if dr is not None else None
            if subset is None:
                where = f"DestinationRule {dr.res.key}" if dr is not None else "any DestinationRule"
                self.report.add(WARNING, res, path + ".subset", f"subset {d.subset} of host {d.host} is not defined by {where}: requests answer 503 (NC)")
                return ""
        name = f"outbound|{port}|{d.subset}|{d.host}"
        if name not in self.clusters:
            self.clusters[name] = self._build_cluster(name, service, service_port, dr, subset)
        self.resolved[key] = name
        return name

    def _build_cluster(self, name: str, service: _Service, sp: istio.ServicePort, dr: _MergedDR | None, subset: istio.Subset | None) -> table.Cluster:
        se = service.spec
        w = _Where(self.report, service.res)
        policy = _effective_policy(dr.traffic_policy if dr else None, subset.traffic_policy if subset else None, sp.number)
        lb = policy.get("load_balancer")
        hash_policy = _hash_policy(lb.consistent_hash) if lb is not None and lb.consistent_hash is not None else None
        lb_policy = "CONSISTENT_HASH" if hash_policy is not None else LB_POLICIES.get(lb.simple if lb is not None else None, "LEAST_REQUEST")
        endpoints = _endpoints(se, sp, service.host, subset)
        if not endpoints:
            why = "its resolution is NONE and a gateway has no original destination" if se.resolution == "NONE" else (
                f"no endpoint has the labels of subset {subset.name}" if subset is not None and se.endpoints else "it lists no endpoints"
            )
            if se.resolution != "DYNAMIC_DNS":
                w.warn(f"cluster {name} has no endpoints ({why}): requests answer 503 (UH)", "$.spec.endpoints")
        upstream_tls = _upstream_tls(policy.get("tls"), se)
        return table.Cluster(
            name=name,
            service=service.host,
            port=sp.number,
            subset=subset.name if subset is not None else "",
            protocol=sp.protocol.upper(),
            resolution=RESOLUTIONS[se.resolution],
            endpoints=endpoints,
            lb_policy=lb_policy,
            hash_policy=hash_policy,
            pool=_connection_pool(policy.get("connection_pool")),
            outlier=_outlier(policy.get("outlier_detection")),
            tls=upstream_tls,
        )

    def _hash_for_destination(self, d: istio.Destination) -> table.HashPolicy | None:
        key = (d.host, d.subset, d.port.number if d.port is not None else 0)
        if key not in self.hashes:
            self.hashes[key] = self._find_hash(d)
        return self.hashes[key]

    def _find_hash(self, d: istio.Destination) -> table.HashPolicy | None:
        """HashForHTTPDestination: subset port-level, subset, DR port-level (only for an explicit port), DR."""
        dr = self._destination_rule_for(d.host)
        if dr is None or d.host not in self.services:
            return None
        tp = dr.traffic_policy
        chosen = tp.load_balancer.consistent_hash if tp is not None and tp.load_balancer is not None else None
        pls = _port_level_hash(d, tp)
        subset_hash = subset_pls = None
        subset = dr.subsets.get(d.subset) if d.subset else None
        if subset is not None and subset.traffic_policy is not None:
            stp = subset.traffic_policy
            subset_hash = stp.load_balancer.consistent_hash if stp.load_balancer is not None else None
            subset_pls = _port_level_hash(d, stp)
        for candidate in (subset_pls, subset_hash, pls):
            if candidate is not None:
                chosen = candidate
                break
        return _hash_policy(chosen) if chosen is not None else None

    # -- 5. listeners, route configs and virtual hosts ----------------------------------------------------

    def _build_listener(self, plan: _ListenerPlan) -> table.Listener | None:
        bind = plan.bind or "0.0.0.0"
        name = f"{bind}_{plan.port}"
        gateways = tuple(dict.fromkeys(s.gw_key for s in plan.servers))
        if plan.group == "http":
            rc_name = f"http.{plan.port}" + (f".{plan.bind}" if plan.bind else "")
            rc = self._route_config(rc_name, plan.servers, plan.port)
            return table.Listener(name=name, port=plan.port, bind=bind, protocol=table.PROTO_HTTP, route_config=rc, gateways=gateways)
        if plan.group == "tcp":
            srv = plan.servers[0]
            l4 = self._tcp_route(srv)
            if l4 is None:
                self.report.add(WARNING, srv.gateway, srv.path, f"no VirtualService bound to Gateway {srv.gw_key} has a tcp route for port {srv.port}: the port is not opened (Istio creates no listener)")
                return None
            return table.Listener(name=name, port=plan.port, bind=bind, protocol=table.PROTO_TCP, tcp=l4, gateways=gateways)
        chains: list[table.FilterChain] = []
        # SNI name → who claimed it: terminating servers first, then passthrough matches (first wins).
        claimed: dict[str, str] = {n: s.describe() for s in plan.servers if s.kind != KIND_PASSTHROUGH for n in _sni_names(s.hosts)}
        for srv in plan.servers:
            chains.extend(self._tls_chains(srv, plan, claimed))
        if not chains:
            srv = plan.servers[0]
            self.report.add(WARNING, srv.gateway, srv.path, f"no filter chain for port {plan.port}: no VirtualService bound to these servers has a matching tls/tcp route, so the port is not opened (Istio creates no listener)")
            return None
        proto = table.PROTO_HTTPS if all(c.route_config is not None for c in chains) else table.PROTO_TLS
        return table.Listener(name=name, port=plan.port, bind=bind, protocol=proto, filter_chains=tuple(chains), gateways=gateways)

    def _tls_chains(self, srv: _Server, plan: _ListenerPlan, claimed: dict[str, str]) -> list[table.FilterChain]:
        s = srv.server
        server_name = s.name or f"{srv.gw_key}/{s.port.name}"
        if srv.kind == KIND_HTTPS:
            gw = srv.gateway
            rc_name = f"https.{s.port.number}.{s.port.name}.{gw.name}.{gw.namespace}" + (f".{s.bind}" if s.bind else "")
            rc = self._route_config(rc_name, [srv], srv.port)
            return [table.FilterChain(server_names=_sni_names(srv.hosts), server_name=server_name, gateway=srv.gw_key, tls=_server_tls(s.tls), route_config=rc)]
        if srv.kind == KIND_TLS_TERMINATE:
            l4 = self._tcp_route(srv)
            if l4 is None:
                self.report.add(WARNING, srv.gateway, srv.path, f"no VirtualService bound to Gateway {srv.gw_key} has a tcp route for this TLS server on port {srv.port}: it gets no filter chain")
                return []
            return [table.FilterChain(server_names=_sni_names(srv.hosts), server_name=server_name, gateway=srv.gw_key, tls=_server_tls(s.tls), tcp=l4)]
        return self._passthrough_chains(srv, server_name, claimed)

    def _passthrough_chains(self, srv: _Server, server_name: str, claimed: dict[str, str]) -> list[table.FilterChain]:
        """buildGatewayNetworkFiltersFromTLSRoutes: one chain per matching tls match, SNI = its sniHosts."""
        chains = []
        for vs in self.bound.get(srv.gw_key, ()):
            if not _pick_matching_hosts(srv.hosts, vs):
                continue
            for i, tls_route in enumerate(vs.spec.tls):
                if not tls_route.route:
                    continue
                for k, m in enumerate(tls_route.match):
                    if (m.port and m.port != srv.port) or (m.gateways and srv.gw_key not in m.gateways):
                        continue
                    path = f"$.spec.tls[{i}].match[{k}]"
                    names = [h.lower() for h in m.sni_hosts]
                    dups = [h for h in names if h in claimed]
                    if dups:
                        self.report.add(WARNING, vs.res, path + ".sniHosts", f"SNI host(s) {dups} on port {srv.port} are already routed by {claimed[dups[0]]}: this match is skipped (first wins)")
                        continue
                    for h in names:
                        claimed[h] = f"VirtualService {vs.res.key} tls[{i}]"
                    w = _Where(self.report, vs.res, f"$.spec.tls[{i}]")
                    l4 = self._l4_route(w, vs, tls_route.route, srv.port)
                    server_names = () if "*" in names else tuple(sorted(set(names)))
                    chains.append(table.FilterChain(server_names=server_names, server_name=server_name, gateway=srv.gw_key, tcp=l4))
        if not chains:
            self.report.add(WARNING, srv.gateway, srv.path, f"no VirtualService bound to Gateway {srv.gw_key} has a tls route (sniHosts) for this passthrough server on port {srv.port}")
        return chains

    def _tcp_route(self, srv: _Server) -> table.L4Route | None:
        """buildGatewayNetworkFiltersFromTCPRoutes: the first bound VS (creation order) whose hosts match the
        server's and that has a tcp route matching port and gateway supplies the single TCP proxy."""
        for vs in self.bound.get(srv.gw_key, ()):
            if not _pick_matching_hosts(srv.hosts, vs):
                continue
            for i, tcp in enumerate(vs.spec.tcp):
                if tcp.match and not any((not m.port or m.port == srv.port) and (not m.gateways or srv.gw_key in m.gateways) for m in tcp.match):
                    continue
                if not tcp.route:
                    continue
                return self._l4_route(_Where(self.report, vs.res, f"$.spec.tcp[{i}]"), vs, tcp.route, srv.port)
        return None

    def _l4_route(self, w: _Where, vs: _VirtualService, dests: list[istio.RouteDestination], port: int) -> table.L4Route:
        single = len(dests) == 1
        clusters = []
        for j, d in enumerate(dests):
            if not single and d.weight == 0:
                continue
            cluster = self._cluster_for(w.res, f"{w.path}.route[{j}].destination", d.destination, port)
            clusters.append(table.WeightedCluster(cluster=cluster, weight=1 if single else d.weight, host=d.destination.host))
        return table.L4Route(virtual_service=vs.res.key, clusters=tuple(clusters), total_weight=sum(c.weight for c in clusters))

    def _route_config(self, name: str, servers: list[_Server], port: int) -> table.RouteConfig:
        """buildGatewayHTTPRouteConfig."""
        vhosts: dict[str, _VHostBuild] = {}
        for srv in servers:
            redirect = bool(srv.server.tls is not None and srv.server.tls.https_redirect)
            is_tls = srv.server.tls is not None
            visible: dict[str, list[str]] = {}  # VS namespace → server hosts it may bind
            for vs in self.bound.get(srv.gw_key, ()):
                hosts = visible.get(vs.res.namespace)
                if hosts is None:
                    hosts = visible[vs.res.namespace] = names_for_namespace(srv.hosts, vs.res.namespace)
                domains = intersect_hosts(hosts, vs.spec.hosts)
                if not domains:
                    continue
                routes = self._routes_for(vs, srv.gw_key, port, is_tls)
                if not routes:
                    continue  # Istio: "no routes matched"; the VS contributes nothing, not even a vhost
                contributor = (vs.key, srv.gw_key)
                for domain in domains:
                    domain = domain.lower()
                    vh = vhosts.get(domain)
                    if vh is None:
                        vh = vhosts[domain] = _VHostBuild()
                    if contributor not in vh.seen:
                        vh.seen.add(contributor)
                        # The same VS bound through several gateways gives the same Route objects again:
                        # Istio appends them twice; the copies could never match, so they are left out.
                        vh.routes.extend(r for r in routes if id(r) not in vh.route_ids)
                        vh.route_ids.update(map(id, routes))
                    if redirect:
                        vh.require_tls = True
            if redirect:
                # Every server host is redirected, also hosts no VirtualService covers.
                for h in srv.hosts:
                    domain = h.partition("/")[2].lower() if "/" in h else h.lower()
                    vhosts.setdefault(domain, _VHostBuild()).require_tls = True
        if not vhosts:
            blackhole = table.VirtualHost(name=f"blackhole:{port}", domains=("*",))
            return table.RouteConfig(name=name, virtual_hosts=(blackhole,), wildcard_host=0)
        # collapseDuplicateRoutes: identical route lists share one vhost named after its first domain.
        groups: dict[tuple, list[str]] = {}
        for domain in sorted(vhosts):
            vh = vhosts[domain]
            key = (tuple(map(id, vh.routes)), vh.require_tls)
            groups.setdefault(key, []).append(domain)
        built = []
        for domains in groups.values():
            vh = vhosts[domains[0]]
            catch_alls = [r for r in vh.routes if id(r) in self.catch_alls]
            ordered = [r for r in vh.routes if id(r) not in self.catch_alls] + catch_alls if catch_alls else vh.routes
            built.append(table.VirtualHost(name=f"{domains[0]}:{port}", domains=tuple(domains), routes=tuple(ordered), require_tls=vh.require_tls))
        built.sort(key=lambda v: v.name)
        exact, suffix, wildcard = {}, {}, -1
        for index, vh in enumerate(built):
            for d in vh.domains:
                if d == "*":
                    wildcard = index
                elif d.startswith("*"):
                    suffix[d[1:]] = index
                else:
                    exact[d] = index
        return table.RouteConfig(name=name, virtual_hosts=tuple(built), exact_hosts=exact, suffix_hosts=suffix, wildcard_host=wildcard)

    # -- cross-resource checks (istioctl analyze) ---------------------------------------------------------

    def _check_bindings(self) -> None:
        selected = {g.key for g in self.selected}
        for vs in self.roots:
            for j, g in enumerate(vs.spec.gateways):
                if g == MESH_GATEWAY:
                    continue
                if g not in self.gateway_by_key:
                    self.report.add(WARNING, vs.res, f"$.spec.gateways[{j}]", f"gateway {g} is not defined by any Gateway: the VirtualService is not served through it")
                elif g not in selected:
                    self.report.add(NOTE, vs.res, f"$.spec.gateways[{j}]", f"gateway {g} is not selected by this gateway's labels")
            servers = [
                (self.gateway_by_key[g], s) for g in vs.gateways if g in selected for s in self.gateway_by_key[g].spec.servers
            ]
            if not servers:
                continue
            for j, h in enumerate(vs.spec.hosts):
                exposed = any(
                    host_matches(sh, h) for gw, s in servers for sh in names_for_namespace(sanitize_server_hosts(s.hosts, gw.namespace), vs.res.namespace)
                )
                if not exposed:
                    names = ", ".join(vs.gateways)
                    self.report.add(WARNING, vs.res, f"$.spec.hosts[{j}]", f"host {h} is not exposed by any server of gateway(s) {names}: no traffic reaches it")


# ---------------------------------------------------------------------------------------------------------
# Helpers of the stages (pure functions of their arguments)
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _gateway_host_problem(host: str) -> str | None:
    """ValidateNamespaceSlashWildcardHostname for gateways."""
    ns, sep, name = host.partition("/")
    if not sep:
        name = host
    else:
        if not ns or not name:
            return "config namespace and dnsName in host entry cannot be empty"
        if ns not in ("*", ".") and not _is_dns1123_label(ns):
            return f"invalid namespace value {ns!r} in gateway"
    if name != "*" and "." not in name:
        return "short names (non FQDN) are not allowed"
    problem = _validate_wildcard_domain(name)
    if problem and not _is_ip(name):
        return problem
    if "*" in name and len(name) != 1 and not name.startswith("*."):
        return f"partial wildcard {name!r} not allowed"
    return None


def _valid_cipher(cs: str) -> bool:
    if not cs or cs == "ALL" or not (cs[0].isalnum()):
        return True
    return cs in CIPHER_SUITES


def _is_prime(x: int) -> bool:
    if 0 < x < 4:
        return True
    if x % 2 == 0:
        return False
    f = 3
    while f * f <= x:
        if x % f == 0:
            return False
        f += 2
    return True


def _server_kind(s: istio.Server) -> str | None:
    proto = s.port.protocol.upper()
    mode = s.tls.mode if s.tls is not None else None
    if proto in HTTP_PROTOCOLS:
        return KIND_HTTP
    if proto in TCP_PROTOCOLS:
        return KIND_TCP
    if proto in TLS_PROTOCOLS:
        if mode == "PASSTHROUGH":
            return KIND_PASSTHROUGH
        if mode in TERMINATING_MODES:
            return KIND_HTTPS if proto == "HTTPS" else KIND_TLS_TERMINATE
    return None  # ISTIO_MUTUAL, AUTO_PASSTHROUGH, unknown protocols: reported elsewhere


def _sni_names(hosts: list[str]) -> tuple[str, ...]:
    """GetSNIHostsForServer + toFilterChainMatch: host parts, lowercased, sorted; `*` means any SNI."""
    names = {(h.partition("/")[2] if "/" in h else h).lower() for h in hosts}
    return () if "*" in names else tuple(sorted(names))


def _pick_matching_hosts(server_hosts: list[str], vs: _VirtualService) -> bool:
    """pickMatchingGatewayHosts: any VS host overlaps a server host visible to the VS's namespace."""
    for vh in vs.spec.hosts:
        for sh in server_hosts:
            ns, sep, name = sh.partition("/")
            if sep:
                if ns != vs.res.namespace:
                    continue
                sh = name
            if host_matches(sh, vh):
                return True
    return False


def _resolve_virtual_service(spec: istio.VirtualService, ns: str, domain: str) -> istio.VirtualService:
    """ResolveVirtualServiceShortnames: hosts and destinations to FQDN, gateway names to `<ns>/<name>`.
    Parts that need no change are shared with the input (it is frozen data), which keeps this cheap."""
    replace = msgspec.structs.replace

    def gateways(names: list[str]) -> list[str]:
        return [g if g == MESH_GATEWAY else resolve_gateway_name(g, ns) for g in names]

    def matches(items: list) -> list:
        if not any(m.gateways for m in items):
            return items
        return [replace(m, gateways=gateways(m.gateways)) if m.gateways else m for m in items]

    def destinations(items: list) -> list:
        out = None
        for i, r in enumerate(items):
            host = resolve_shortname(r.destination.host, ns, domain)
            if host != r.destination.host:
                if out is None:
                    out = list(items)
                out[i] = replace(r, destination=replace(r.destination, host=host))
        return items if out is None else out

    def dest(d: istio.Destination | None) -> istio.Destination | None:
        if d is None:
            return None
        host = resolve_shortname(d.host, ns, domain)
        return d if host == d.host else replace(d, host=host)

    http = []
    for h in spec.http:
        changes: dict[str, Any] = {}
        if (m := matches(h.match)) is not h.match:
            changes["match"] = m
        if (r := destinations(h.route)) is not h.route:
            changes["route"] = r
        if h.mirror is not None and (d := dest(h.mirror)) is not h.mirror:
            changes["mirror"] = d
        if h.mirrors and (ms := destinations(h.mirrors)) is not h.mirrors:
            changes["mirrors"] = ms
        http.append(replace(h, **changes) if changes else h)
    l4 = {}
    for name in ("tls", "tcp"):
        routes = []
        for t in getattr(spec, name):
            m, r = matches(t.match), destinations(t.route)
            routes.append(t if m is t.match and r is t.route else replace(t, match=m, route=r))
        l4[name] = routes
    return replace(
        spec,
        hosts=[resolve_shortname(h, ns, domain) for h in spec.hosts],
        gateways=gateways(spec.gateways),
        http=http,
        **l4,
    )


# Delegate merging (pilot/pkg/model/virtualservice.go).

_INHERITED_FIELDS = (
    "rewrite", "direct_response", "timeout", "retries", "fault", "mirror", "mirror_percent", "mirror_percentage",
    "cors_policy", "headers",
)


def _merge_http_route(root: istio.HTTPRoute, delegate: istio.HTTPRoute) -> istio.HTTPRoute | None:
    """mergeHTTPRoute: matches merged (None on conflict), names joined with "-", unset fields inherited."""
    merged_matches = _merge_match_requests(root.match, delegate.match)
    if merged_matches is None:
        return None
    changes: dict[str, Any] = {"match": merged_matches}
    if not delegate.name:
        changes["name"] = root.name
    elif root.name:
        changes["name"] = f"{root.name}-{delegate.name}"
    for name in _INHERITED_FIELDS:
        if getattr(delegate, name) is None and getattr(root, name) is not None:
            changes[name] = getattr(root, name)
    if not delegate.mirrors and root.mirrors:
        changes["mirrors"] = root.mirrors
    # Combinations the resource model rejects; Istio's translation ignores the inherited part anyway
    # (a redirect or direct response never forwards, so it is neither rewritten nor mirrored).
    if delegate.redirect is not None or delegate.direct_response is not None:
        for name in ("rewrite", "mirror", "mirrors", "mirror_percent", "mirror_percentage"):
            changes.pop(name, None)
        if delegate.direct_response is not None:
            changes.pop("fault", None)
    if delegate.mirrors:
        changes.pop("mirror", None)
    elif delegate.mirror is not None:
        changes.pop("mirrors", None)
    return msgspec.structs.replace(delegate, **changes)


def _merge_match_requests(root: list[istio.HTTPMatchRequest], delegate: list[istio.HTTPMatchRequest]):
    if not root:
        return delegate
    if not delegate:
        return root
    out = []
    for sub in delegate:
        found = False
        for r in root:
            if _match_conflict(r, sub):
                continue
            out.append(_merge_match(r, sub))
            found = True
        if not found:
            return None
    return out or None


def _merge_match(root: istio.HTTPMatchRequest, leaf: istio.HTTPMatchRequest) -> istio.HTTPMatchRequest:
    name = leaf.name or root.name
    if leaf.name and root.name:
        name = f"{root.name}-{leaf.name}"
    return msgspec.structs.replace(
        leaf,
        name=name,
        uri=leaf.uri if leaf.uri is not None else root.uri,
        scheme=leaf.scheme if leaf.scheme is not None else root.scheme,
        method=leaf.method if leaf.method is not None else root.method,
        authority=leaf.authority if leaf.authority is not None else root.authority,
        headers={**root.headers, **leaf.headers},
        without_headers={**root.without_headers, **leaf.without_headers},
        query_params={**root.query_params, **leaf.query_params},
        port=leaf.port or root.port,
        source_labels={**root.source_labels, **leaf.source_labels},
        source_namespace=leaf.source_namespace or root.source_namespace,
        gateways=leaf.gateways or root.gateways,
        stat_prefix=leaf.stat_prefix or root.stat_prefix,
    )


def _match_conflict(root: istio.HTTPMatchRequest, leaf: istio.HTTPMatchRequest) -> bool:
    for a, b in ((root.uri, leaf.uri), (root.scheme, leaf.scheme), (root.method, leaf.method), (root.authority, leaf.authority)):
        if _string_match_conflict(a, b):
            return True
    for mine, theirs in ((root.headers, leaf.headers), (root.without_headers, leaf.without_headers), (root.query_params, leaf.query_params)):
        for key, value in theirs.items():
            if _string_match_conflict(mine.get(key), value):
                return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    for key, value in leaf.source_labels.items():
        if key in root.source_labels and root.source_labels[key] != value:
            return True
    if root.gateways and leaf.gateways:
        if len(root.gateways) < len(leaf.gateways) or not set(leaf.gateways) <= set(root.gateways):
            return True
    return False


def _string_match_conflict(root: istio.StringMatch | None, leaf: istio.StringMatch | None) -> bool:
    """stringMatchConflict: the leaf must be a subset of the root."""
    if root is None or leaf is None:
        return False
    if root.regex:
        if leaf.regex or leaf.prefix or leaf.exact:
            return True
    if leaf.regex:
        if root.regex or root.prefix or root.exact:
            return True
    if root.exact:
        if leaf.prefix:
            return True
        return leaf.exact != root.exact
    if root.prefix:
        if leaf.prefix:
            return not leaf.prefix.startswith(root.prefix)
        if leaf.exact:
            return not leaf.exact.startswith(root.prefix)
    return True


def _analyze_unreachable(w: _Where, routes: list, sub: str) -> None:
    """analyzeUnreachableHTTPRules / TCPRules (the duplicate and no-match parts) as warnings."""
    seen: dict[bytes, int] = {}
    empty_at = -1
    for i, r in enumerate(routes):
        name = f"{sub}[{i}]" + (f" ({r.name})" if getattr(r, "name", "") else "")
        if not r.match:
            if empty_at >= 0:
                w.warn(f"virtualService rule {name} not used (only the last rule can have no matches)", f"{sub}[{i}]")
            empty_at = i
            continue
        duplicates = 0
        for k, m in enumerate(r.match):
            if empty_at >= 0:
                w.warn(f"virtualService rule {name} not used (route without matches defined before)", f"{sub}[{i}]")
                break
            key = msgspec.json.encode(m, order="sorted")
            if key in seen:
                w.warn(f"virtualService rule {name} match {k} is not used (duplicate/overlapping match in rule {sub}[{seen[key]}])", f"{sub}[{i}].match[{k}]")
                duplicates += 1
                continue
            seen[key] = i
        if duplicates and duplicates == len(r.match):
            w.warn(f"virtualService rule {name} not used (all matches used by prior rules)", f"{sub}[{i}]")


def _route_rewrite(rewrite: table.Rewrite | None, m: _Match | None) -> table.Rewrite | None:
    """`rewrite.uri` per route: prefix_rewrite replaces what the path matcher matched, which for an exact or a
    regex match is the whole path."""
    if rewrite is None or rewrite.prefix is None:
        return rewrite
    path = m.match.path if m is not None else None
    if path is not None and path.kind in (table.MATCH_EXACT, table.MATCH_REGEX):
        return msgspec.structs.replace(rewrite, prefix=None, full_path=rewrite.prefix)
    return rewrite


def _redirect(r: istio.HTTPRedirect, port: int, is_tls: bool) -> table.Redirect:
    """ApplyRedirect. An explicit or derived port of 80 with http, or 443 with https, is left out."""
    out_port = 0
    from_request = False
    if r.port is not None or r.derive_port is not None:
        if r.derive_port == "FROM_REQUEST_PORT":
            from_request = True
            out_port = 0
        elif r.port is not None:
            out_port = r.port
        scheme = r.scheme or ("https" if is_tls else "http")
        if (out_port == 80 and scheme == "http") or (out_port == 443 and scheme == "https"):
            out_port = 0
    return table.Redirect(
        code=r.redirect_code or 301,
        scheme=r.scheme,
        authority=r.authority,
        port=out_port,
        port_from_request=from_request,
        path=r.uri if not r.prefix_rewrite else "",
        prefix_rewrite=r.prefix_rewrite or None,
    )


def _port_level_hash(d: istio.Destination, tp: istio.TrafficPolicy | None):
    if d.port is None or tp is None:
        return None
    for pls in tp.port_level_settings:
        if pls.port is not None and pls.port.number == d.port.number:
            return pls.load_balancer.consistent_hash if pls.load_balancer is not None else None
    return None


def _hash_policy(ch: istio.ConsistentHashLB) -> table.HashPolicy:
    if ch.http_header_name is not None:
        return table.HashPolicy(kind="header", name=ch.http_header_name.lower())
    if ch.http_cookie is not None:
        c = ch.http_cookie
        return table.HashPolicy(
            kind="cookie",
            name=c.name,
            cookie_path=c.path,
            cookie_ttl_s=float(c.ttl) if c.ttl is not None else -1.0,
            cookie_attributes=tuple((a.name, a.value) for a in c.attributes),
        )
    if ch.use_source_ip:
        return table.HashPolicy(kind="source_ip")
    return table.HashPolicy(kind="query", name=ch.http_query_parameter_name or "")


_POLICY_FIELDS = ("connection_pool", "outlier_detection", "load_balancer", "tls")


def _effective_policy(top: istio.TrafficPolicy | None, sub: istio.TrafficPolicy | None, port: int) -> dict[str, Any]:
    """MergeSubsetTrafficPolicy: each side first replaced wholesale by its portLevelSettings entry for the
    port; then the subset overrides per top-level field (wholesale when its port-level entry applied)."""

    def for_port(policy: istio.TrafficPolicy | None) -> tuple[dict[str, Any] | None, bool]:
        if policy is None:
            return None, False
        for pls in policy.port_level_settings:
            if pls.port is not None and pls.port.number == port:
                return {f: getattr(pls, f) for f in _POLICY_FIELDS}, True
        return {f: getattr(policy, f) for f in _POLICY_FIELDS}, False

    base, _ = for_port(top)
    override, port_level = for_port(sub)
    if override is None:
        return base or {}
    if base is None:
        return override
    merged = dict(base)
    for f in _POLICY_FIELDS:
        if override[f] is not None or port_level:
            merged[f] = override[f]
    return merged


def _endpoints(se: istio.ServiceEntry, sp: istio.ServicePort, host: str, subset: istio.Subset | None) -> tuple[table.Endpoint, ...]:
    """Endpoint port: ports[<service port name>], else targetPort, else the port number. Weight 0 → 1."""
    default_port = sp.target_port or sp.number
    if se.resolution in ("NONE", "DYNAMIC_DNS"):
        return ()
    if se.resolution in ("DNS", "DNS_ROUND_ROBIN") and not se.endpoints:
        if subset is not None and subset.labels:
            return ()
        return (table.Endpoint(address=host, port=default_port),)
    out = []
    for ep in se.endpoints:
        if subset is not None and not selector_matches(subset.labels, ep.labels):
            continue
        unix = ep.address.startswith("unix://")
        out.append(
            table.Endpoint(
                address=ep.address,
                port=0 if unix else ep.ports.get(sp.name, default_port),
                weight=ep.weight or 1,
                labels=dict(sorted(ep.labels.items())),
            )
        )
    return tuple(out)


def _connection_pool(pool: istio.ConnectionPoolSettings | None) -> table.ConnectionPool:
    """applyConnectionPool: unset or zero thresholds stay at 2^32-1; connect timeout 10 s."""
    if pool is None:
        return table.ConnectionPool()
    t, h = pool.tcp, pool.http
    kw: dict[str, Any] = {}
    if t is not None:
        if t.max_connections > 0:
            kw["max_connections"] = t.max_connections
        if t.connect_timeout is not None:
            kw["connect_timeout_s"] = float(t.connect_timeout)
        if t.tcp_keepalive is not None:
            k = t.tcp_keepalive
            kw["tcp_keepalive"] = (k.probes, float(k.time or 0.0), float(k.interval or 0.0))
        if t.max_connection_duration is not None:
            kw["max_connection_duration_s"] = float(t.max_connection_duration)
        if t.idle_timeout is not None:
            kw["tcp_idle_timeout_s"] = float(t.idle_timeout)
    idle = None
    if h is not None:
        if h.http1_max_pending_requests > 0:
            kw["http1_max_pending_requests"] = h.http1_max_pending_requests
        if h.http2_max_requests > 0:
            kw["http2_max_requests"] = h.http2_max_requests
        if h.max_requests_per_connection > 0:
            kw["max_requests_per_connection"] = h.max_requests_per_connection
        if h.max_retries > 0:
            kw["max_retries"] = h.max_retries
        idle = h.idle_timeout
    if idle is None and t is not None:
        idle = t.idle_timeout
    if idle is not None:
        kw["idle_timeout_s"] = float(idle)
    return table.ConnectionPool(**kw)


def _outlier(o: istio.OutlierDetection | None) -> table.OutlierPolicy | None:
    """applyOutlierDetection with Envoy's defaults: 5 consecutive 5xx, 10 s interval, 30 s base, 10 %."""
    if o is None:
        return None
    return table.OutlierPolicy(
        consecutive_5xx=o.consecutive_5xx_errors if o.consecutive_5xx_errors is not None else 5,
        consecutive_gateway_errors=o.consecutive_gateway_errors or 0,
        interval_s=float(o.interval) if o.interval is not None else 10.0,
        base_ejection_time_s=float(o.base_ejection_time) if o.base_ejection_time is not None else 30.0,
        max_ejection_percent=o.max_ejection_percent if o.max_ejection_percent > 0 else 10,
        min_health_percent=o.min_health_percent,
        error_codes=tuple(o.outlier_detection_http_error_codes),
    )


def _upstream_tls(tls: istio.ClientTLSSettings | None, se: istio.ServiceEntry) -> table.UpstreamTLS | None:
    if tls is None or tls.mode not in ("SIMPLE", "MUTUAL"):
        return None  # DISABLE, or ISTIO_MUTUAL (warned): plain text
    return table.UpstreamTLS(
        mode=tls.mode,
        client_cert_file=tls.client_certificate,
        private_key_file=tls.private_key,
        ca_file=tls.ca_certificates,
        credential_name=wire.credential_folder(tls.credential_name),
        subject_alt_names=tuple(tls.subject_alt_names or se.subject_alt_names),
        sni=tls.sni,
        insecure_skip_verify=bool(tls.insecure_skip_verify),
        crl_file=tls.ca_crl,
    )


def _server_tls(tls: istio.ServerTLSSettings) -> table.ServerTLS:
    cert, key = tls.server_certificate, tls.private_key
    extra: tuple[tuple[str, str], ...] = ()
    if tls.tls_certificates:
        cert, key = tls.tls_certificates[0].server_certificate, tls.tls_certificates[0].private_key
        extra = tuple((c.server_certificate, c.private_key) for c in tls.tls_certificates[1:])
    seen: set[str] = set()
    ciphers = []
    for c in tls.cipher_suites:
        if _valid_cipher(c) and c not in seen:
            seen.add(c)
            ciphers.append(c)
    return table.ServerTLS(
        mode=tls.mode,
        cert_chain_file=cert,
        private_key_file=key,
        ca_file=tls.ca_certificates,
        crl_file=tls.ca_crl,
        credential_name=wire.credential_folder(tls.credential_name or (tls.credential_names[0] if tls.credential_names else "")),
        extra_certificates=extra,
        subject_alt_names=tuple(tls.subject_alt_names),
        verify_certificate_spki=tuple(tls.verify_certificate_spki),
        verify_certificate_hash=tuple(tls.verify_certificate_hash),
        min_version="TLSV1_2" if tls.min_protocol_version == "TLS_AUTO" else tls.min_protocol_version,
        max_version=tls.max_protocol_version,
        cipher_suites=tuple(ciphers),
        ecdh_curves=tuple(tls.ecdh_curves),
        insecure_skip_verify=bool(tls.insecure_skip_verify),
    )
