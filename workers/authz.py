# AuthorizationPolicy evaluation, pure: the table's compiled RBAC filters (edge/table.py Authorization) and one
# request's or connection's facts in, a Verdict out. Built once per table generation (workers/tableview.py), so a
# request only compares: CIDRs are bisected integer ranges, strings are set lookups and str.startswith/endswith
# over tuples, regular expressions are compiled here once.
#
# Rules (Envoy's RBAC filter as Istio configures it; pilot/pkg/security/authz/builder):
# - Filters run in the table's order: AUDIT (a match is only reported), DENY (the first matching rule, by name, denies),
#   ALLOW (some rule must match, else denied with policy "none"). No filter → allowed.
# - A rule matches when one of its principal groups and one of its permission groups match; a group matches when all
#   its conditions do (an empty group matches anything). A condition is the OR of its values, NOT-ed for not-fields.
# - A missing attribute matches no value (so a not-field of it matches): no header, no JWT (req.auth None), no client
#   certificate, no SNI. A claim matches when it is a string that matches or a list with a string element that does
#   (Envoy's ListMatcher oneOf OR the value itself); anything else (numbers, objects) matches nothing.
# - Hosts compare case-insensitively with the :authority as sent (port included, as Envoy's header matcher sees it).
from __future__ import annotations

import bisect
import ipaddress
import re
from functools import lru_cache
from typing import Callable, NamedTuple

from edge import table

ACTION_AUDIT = "AUDIT"
ACTION_DENY = "DENY"
ACTION_ALLOW = "ALLOW"
NO_POLICY = "none"  # Envoy's matched policy id when an ALLOW filter matched nothing
IP_CACHE_ENTRIES = 4096  # parsed peer/client addresses kept (a dict lookup instead of ipaddress per request)


class Facts:
    """What a policy may ask about one request (HTTP) or connection (TCP: the HTTP attributes stay None)."""

    __slots__ = ("source_ip", "remote_ip", "destination_ip", "port", "sni", "principal", "host", "method", "path", "headers", "auth")

    def __init__(self, source_ip: str, remote_ip: str, destination_ip: str, port: int, sni: str = "", principal: str = "", host: str | None = None, method: str | None = None, path: str | None = None, headers=None, auth=None):
        self.source_ip = source_ip  # the direct peer (PROXY protocol's source when the listener takes it)
        self.remote_ip = remote_ip  # the trusted client address (X-Forwarded-For hops / PROXY protocol)
        self.destination_ip = destination_ip
        self.port = port
        self.sni = sni
        self.principal = principal  # the verified client certificate's URI SAN ("" = none)
        self.host = host
        self.method = method
        self.path = path
        self.headers = headers  # [(lowercase name bytes, value bytes)] as the codec read them
        self.auth = auth  # the verified JWT (principal, audiences, presenter, claims) or None


class Verdict(NamedTuple):
    allowed: bool
    policy: str  # the matched rule's id (DENY match, ALLOW match), "none" (no ALLOW match) or "" (no filter decided)
    action: str  # the filter that decided: DENY, ALLOW or ""
    audited: tuple[str, ...] = ()  # AUDIT rules that matched


ALLOWED = Verdict(True, "", "")


@lru_cache(maxsize=IP_CACHE_ENTRIES)
def ip_key(text: str | bytes) -> tuple[int, int] | None:
    """(4 or 6, the address as an integer), or None for text that is not an address."""
    try:
        if isinstance(text, bytes):
            text = text.decode("ascii")
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except (ValueError, UnicodeDecodeError):
        return None
    return address.version, int(address)


class _Strings:
    __slots__ = ("exact", "prefix", "suffix", "regex", "non_empty", "present", "ignore_case")

    def __init__(self, s: table.AuthzStrings):
        self.exact = frozenset(s.exact)
        self.prefix = s.prefix
        self.suffix = s.suffix
        self.regex = re.compile("|".join(f"(?:{r})" for r in s.regex), re.DOTALL) if s.regex else None
        self.non_empty = s.non_empty
        self.present = s.present
        self.ignore_case = s.ignore_case

    def match(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.present or (self.non_empty and value):
            return True
        if self.ignore_case:
            value = value.lower()
        if value in self.exact:
            return True
        if self.prefix and value.startswith(self.prefix):
            return True
        if self.suffix and value.endswith(self.suffix):
            return True
        return self.regex is not None and self.regex.fullmatch(value) is not None


class _Cidrs:
    __slots__ = ("starts", "ends")

    def __init__(self, c: table.AuthzCidrs):
        self.starts = {4: [a for a, _ in c.v4], 6: [a for a, _ in c.v6]}
        self.ends = {4: [b for _, b in c.v4], 6: [b for _, b in c.v6]}

    def match(self, text: str | bytes) -> bool:
        key = ip_key(text) if text else None
        if key is None:
            return False
        version, n = key
        i = bisect.bisect_right(self.starts[version], n) - 1
        return i >= 0 and n <= self.ends[version][i]


def _header(headers, name: bytes) -> str | None:
    """A request header's value as Envoy's header matcher sees it: repeated headers joined with ","."""
    if headers is None:
        return None
    values = [v for k, v in headers if k == name]
    if not values:
        return None
    return b",".join(values).decode("latin-1")


def _claim(auth, path: tuple[str, ...]):
    value = getattr(auth, "claims", None) if auth is not None else None
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _claim_matches(strings: _Strings, value) -> bool:
    if isinstance(value, str):
        return strings.match(value)
    if isinstance(value, list):
        return any(isinstance(v, str) and strings.match(v) for v in value)
    return False


def _principal_pairs(pairs) -> Callable[[Facts], bool]:
    compiled = tuple((_Strings(i), _Strings(s)) for i, s in pairs)

    def test(f: Facts) -> bool:
        iss, sub = _claim(f.auth, ("iss",)), _claim(f.auth, ("sub",))
        if not isinstance(iss, str) or not isinstance(sub, str):
            return False
        return any(mi.match(iss) and ms.match(sub) for mi, ms in compiled)

    return test


def compile_condition(c: table.AuthzCondition) -> Callable[[Facts], bool]:
    """The condition as one predicate over Facts (negation included)."""
    a = c.attribute
    strings = _Strings(c.strings) if c.strings is not None else None
    if a in (table.AUTHZ_SOURCE_IP, table.AUTHZ_REMOTE_IP, table.AUTHZ_DESTINATION_IP):
        cidrs = _Cidrs(c.cidrs or table.AuthzCidrs())
        field = {table.AUTHZ_SOURCE_IP: "source_ip", table.AUTHZ_REMOTE_IP: "remote_ip", table.AUTHZ_DESTINATION_IP: "destination_ip"}[a]
        test = lambda f: cidrs.match(getattr(f, field))  # noqa: E731
    elif a == table.AUTHZ_DESTINATION_PORT:
        ports = frozenset(c.ports)
        test = lambda f: f.port in ports  # noqa: E731
    elif a == table.AUTHZ_SNI:
        test = lambda f: strings.match(f.sni or None)  # noqa: E731
    elif a == table.AUTHZ_PRINCIPAL:
        test = lambda f: strings.match(f.principal or None)  # noqa: E731
    elif a == table.AUTHZ_HOST:
        test = lambda f: strings.match(f.host)  # noqa: E731
    elif a == table.AUTHZ_METHOD:
        test = lambda f: strings.match(f.method)  # noqa: E731
    elif a == table.AUTHZ_PATH:
        test = lambda f: strings.match(f.path)  # noqa: E731
    elif a == table.AUTHZ_HEADER:
        name = c.name.encode("latin-1")
        test = lambda f: strings.match(_header(f.headers, name))  # noqa: E731
    elif a == table.AUTHZ_CLAIM:
        path = c.claim
        test = lambda f: _claim_matches(strings, _claim(f.auth, path))  # noqa: E731
    elif a == table.AUTHZ_REQUEST_PRINCIPAL:
        test = _principal_pairs(c.pairs)
    else:
        raise ValueError(f"unknown authorization attribute {a!r}")
    if c.negate:
        return lambda f: not test(f)
    return test


class CompiledRule:
    __slots__ = ("rule", "name", "principals", "permissions")

    def __init__(self, rule: table.AuthzRule):
        self.rule = rule
        self.name = rule.name
        self.principals = tuple(tuple(compile_condition(c) for c in group) for group in rule.principals)
        self.permissions = tuple(tuple(compile_condition(c) for c in group) for group in rule.permissions)

    def matches(self, f: Facts) -> bool:
        return any(all(t(f) for t in g) for g in self.permissions) and any(all(t(f) for t in g) for g in self.principals)

    def explain(self, f: Facts) -> list[tuple[str, bool]]:
        """Each condition's field and result, in order (for `edge route`)."""
        out = []
        for groups, compiled in ((self.rule.permissions, self.permissions), (self.rule.principals, self.principals)):
            for group, tests in zip(groups, compiled):
                out.extend((("not " if c.negate and not c.source.split(".")[-1].startswith("not") and "when" in c.source else "") + c.source, t(f)) for c, t in zip(group, tests))
        return out


class CompiledFilter:
    __slots__ = ("action", "rules", "policies")

    def __init__(self, f: table.AuthzFilter):
        self.action = f.action
        self.rules = tuple(CompiledRule(r) for r in f.rules)
        self.policies = f.policies

    def first_match(self, facts: Facts) -> str | None:
        for rule in self.rules:
            if rule.matches(facts):
                return rule.name
        return None


class Authorizer:
    """One table's authorization, compiled: `http` for HTTP filter chains, `tcp` for TCP and TLS passthrough."""

    __slots__ = ("http", "tcp")

    def __init__(self, authorization: table.Authorization):
        self.http = tuple(CompiledFilter(f) for f in authorization.http)
        self.tcp = tuple(CompiledFilter(f) for f in authorization.tcp)


def authorize(filters: tuple[CompiledFilter, ...], facts: Facts) -> Verdict:
    """Run the filters in order (see the module comment)."""
    audited: list[str] = []
    allowed_by = ""
    for f in filters:
        matched = f.first_match(facts)
        if f.action == ACTION_AUDIT:
            if matched is not None:
                audited.append(matched)
        elif f.action == ACTION_DENY:
            if matched is not None:
                return Verdict(False, matched, ACTION_DENY, tuple(audited))
        elif matched is None:
            return Verdict(False, NO_POLICY, ACTION_ALLOW, tuple(audited))
        else:
            allowed_by = matched
    if not audited and not allowed_by:
        return ALLOWED
    return Verdict(True, allowed_by, ACTION_ALLOW if allowed_by else "", tuple(audited))


class RbacCounts(NamedTuple):
    """What Envoy's RBAC filters count for one request or connection (http.<prefix>.rbac.* / tcp.rbac.*): Istio
    builds one RBAC filter per action present, all counting into the same names, so every filter that lets the
    request through adds to `allowed` (the AUDIT filter's LOG action always does), the one that refuses it adds to
    `denied` and stops the chain; the AUDIT filter also counts `logged` (a rule matched) or `not_logged`."""

    allowed: int
    denied: int
    logged: int
    not_logged: int


def rbac_counts(filters: tuple[CompiledFilter, ...], verdict: Verdict) -> RbacCounts:
    allowed = denied = logged = not_logged = 0
    for f in filters:
        if f.action == ACTION_AUDIT:
            allowed += 1
            if verdict.audited:
                logged += 1
            else:
                not_logged += 1
        elif not verdict.allowed and f.action == verdict.action:
            denied = 1
            break
        else:
            allowed += 1
    return RbacCounts(allowed, denied, logged, not_logged)
