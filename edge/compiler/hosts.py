# Host names (pkg/config/host/name.go, names.go), Istio's name resolution (pilot/pkg/model/config.go,
# gateway.go) and the DNS-1123 / wildcard / FQDN checks of pkg/config/validation/agent.
#
# Rules:
# - Names are compared as Istio's host.Name does: `*.foo.com` covers `bar.foo.com` but not `foo.com`; a
#   namespace prefix (`ns/host`, `./host`, `*/host`) only decides visibility, never matching.
# - The checks return the problem as Istio words it, or None; the caller decides where it is reported.
# - Pure functions of their arguments; the checks that run once per host of a large config are cached.
from __future__ import annotations

import functools
import ipaddress
import re

_DNS1123_LABEL = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_WILDCARD_LABEL = re.compile(r"^(?:\*|(?:\*|\*-)?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?)$")


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
    if not host or host == "*" or "." in host or is_ip(host):
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
def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)
def validate_wildcard_domain(domain: str) -> str | None:
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
def validate_fqdn(name: str) -> str | None:
    if not name:
        return "empty domain name not allowed"
    if len(name) > 255:
        return f"domain name {name!r} too long (max 255)"
    return _validate_dns1123_labels(name, name)


def is_dns1123_label(text: str) -> bool:
    return len(text) <= 63 and bool(_DNS1123_LABEL.match(text))


@functools.lru_cache(maxsize=65536)
def gateway_host_problem(host: str) -> str | None:
    """ValidateNamespaceSlashWildcardHostname for gateways."""
    ns, sep, name = host.partition("/")
    if not sep:
        name = host
    else:
        if not ns or not name:
            return "config namespace and dnsName in host entry cannot be empty"
        if ns not in ("*", ".") and not is_dns1123_label(ns):
            return f"invalid namespace value {ns!r} in gateway"
    if name != "*" and "." not in name:
        return "short names (non FQDN) are not allowed"
    problem = validate_wildcard_domain(name)
    if problem and not is_ip(name):
        return problem
    if "*" in name and len(name) != 1 and not name.startswith("*."):
        return f"partial wildcard {name!r} not allowed"
    return None
