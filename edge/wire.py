# What a configuration may put on the wire: every value from YAML that becomes a header name or value, a path,
# an authority, a cookie or an SNI is checked here at load, so that the compiler can report it with file, line
# and field, and the workers can trust the table (they encode these values and write them as they are). Pure.
#
# Rules (each function returns None when the value is fine, else the problem in words):
# - header name: an RFC 9110 token (no space, colon, CR or LF), ASCII.
# - header value: no control character but HTAB (so no CR, LF or NUL: nothing can end a header line early); any
#   other Unicode is sent as UTF-8, as Envoy sends it.
# - path (redirect uri, prefixRewrite, rewrite uri): visible ASCII only (other characters percent-encoded), starting
#   with "/"; a "?" starts the query a redirect sends.
# - authority (redirect and rewrite authority, a Host set by headers): RFC 3986 host[:port], exactly what the
#   workers accept from clients (workers/paths.parse_authority).
# - cookie name: a token; cookie path and attribute values: visible ASCII without ";" (RFC 6265 cookie-av).
# - query parameter name (consistent hashing): visible ASCII without "&", "=" or "#".
# - SNI: a DNS name (RFC 1123 labels, dots between them), not an IP address.
# - credentialName: a Kubernetes Secret name (a DNS-1123 subdomain, at most 253 characters), optionally written
#   `kubernetes://name` as Istio also takes it; it names a folder under --credentials-dir, so nothing that could
#   leave that directory ("..", "/", an absolute path) is ever a name. credential_folder() gives the folder name.
from __future__ import annotations

import ipaddress
import re

from workers.paths import parse_authority

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_COOKIE_AV = re.compile(r"[\x20-\x3a\x3c-\x7e]*")  # visible ASCII and SP, without ";"
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
KUBERNETES_PREFIX = "kubernetes://"
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?")


def header_name_problem(name: str) -> str | None:
    if not name:
        return "header name cannot be empty"
    if not _TOKEN.fullmatch(name):
        return f"header name {name!r} is not a valid HTTP header name (an RFC 9110 token)"
    return None


def header_value_problem(value: str) -> str | None:
    if _VALUE_CONTROL.search(value):
        return f"header value {value!r} holds a control character (CR, LF, NUL, …), which would end or split the header"
    return None


def path_problem(path: str, what: str = "path", *, absolute: bool = True) -> str | None:
    if absolute and not path.startswith("/"):
        return f"{what} {path!r} must start with /"
    if path and not _VISIBLE_ASCII.fullmatch(path):
        return f"{what} {path!r} holds a space, a control character or a non-ASCII character; percent-encode it"
    return None


def authority_problem(authority: str) -> str | None:
    try:
        raw = authority.encode("ascii")
    except UnicodeEncodeError:
        return f"authority {authority!r} is not ASCII (write an IDN in its xn-- form)"
    if not authority or parse_authority(raw) is None:
        return f"authority {authority!r} is not a valid host[:port]"
    return None


def query_name_problem(name: str) -> str | None:
    if not name or not _VISIBLE_ASCII.fullmatch(name) or any(c in name for c in "&=#"):
        return f"query parameter name {name!r} must be visible ASCII without '&', '=' or '#'"
    return None


def cookie_name_problem(name: str) -> str | None:
    if not name or not _TOKEN.fullmatch(name):
        return f"cookie name {name!r} is not a token"
    return None


def cookie_attribute_problem(value: str) -> str | None:
    if not _COOKIE_AV.fullmatch(value):
        return f"cookie attribute {value!r} holds ';', a control or a non-ASCII character"
    return None


def sni_problem(name: str) -> str | None:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return f"sni {name!r} is an IP address; SNI carries host names only"
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return f"sni {name!r} is not a valid DNS name"
    return None


def credential_folder(name: str) -> str:
    """The folder under --credentials-dir that a (checked) credentialName names."""
    return name[len(KUBERNETES_PREFIX) :] if name.startswith(KUBERNETES_PREFIX) else name


def credential_name_problem(name: str) -> str | None:
    folder = credential_folder(name)
    if "/" in folder and name.startswith(KUBERNETES_PREFIX):
        return f"credentialName {name!r} names a Secret of another namespace; mount that Secret under --credentials-dir and use its name"
    if len(folder) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(folder):
        return f"credentialName {name!r} is not a Kubernetes Secret name (lowercase letters, digits, '-' and '.'; at most 253 characters)"
    return None
