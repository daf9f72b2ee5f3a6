# Request-target handling: split origin-form / absolute-form targets, normalise paths the way Envoy's
# `normalize_path: true` does at an Istio gateway (RFC 3986 §5.2.4 dot-segment removal, percent-encoded
# unreserved characters decoded, hex digits of other escapes uppercased), never merging slashes
# (Istio leaves merge_slashes off) and never decoding %2F. Pure functions; the common case (no "." segment,
# no "%") returns the input unchanged without allocating.
# - A malformed "%" (not followed by two hex digits) is kept as it is. An escape that decodes to a hex digit
#   right after such a "%" stays encoded: decoding it would make a new escape out of the kept "%" that the
#   next pass (an upstream, or our own router) would decode again ("/%2%45" must not become "/%2E", then "/").
#   So normalize_path(normalize_path(p)) == normalize_path(p).
# - Absolute-form needs a real scheme (RFC 3986 §3.1) before "://"; anything else that does not start with
#   "/" is handed back as the path, which normalize_path refuses.
# - An authority (Host, or the one in an absolute-form target) is RFC 3986 `host [ ":" port ]` without userinfo:
#   an IP-literal holding an IPv6 address, or a reg-name (unreserved, percent-encoded and sub-delims bytes, an
#   IPv4 address included), and a port of at most 5 ASCII digits. Anything else (a space, "#", "@", a byte
#   outside ASCII, "x:" followed by 5,000 digits) is refused, so nothing malformed is routed, logged or
#   forwarded as a host.
from __future__ import annotations

import ipaddress
import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = b"0123456789ABCDEFabcdef"
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_SCHEME_CHARS = _ALPHA | frozenset(b"0123456789+-.")
_PERCENT = 0x25
_REG_NAME_AUTHORITY = re.compile(rb"([A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::([0-9]{0,5}))?")
_IP_LITERAL_AUTHORITY = re.compile(rb"\[([0-9A-Fa-f:.]+)\](?::([0-9]{0,5}))?")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_REG_NAME_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;="  # without "%"


def _is_scheme(name: bytes) -> bool:
    return bool(name) and name[0] in _ALPHA and all(c in _SCHEME_CHARS for c in name)


def split_target(target: bytes) -> tuple[bytes | None, bytes, bytes]:
    """(authority from an absolute-form target or None, path, query) — the fragment is dropped."""
    authority = None
    if not target.startswith(b"/"):
        scheme_end = target.find(b"://")
        if scheme_end > 0 and _is_scheme(target[:scheme_end]):
            rest = target[scheme_end + 3 :]
            end = min(x for x in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#"), len(rest)) if x >= 0)
            authority = rest[:end]
            target = rest[end:] or b"/"
            if not target.startswith(b"/"):  # "?query" or "#fragment" right after the authority
                target = b"/" + target
        elif target == b"*":
            return None, b"*", b""
    hash_at = target.find(b"#")
    if hash_at >= 0:
        target = target[:hash_at]
    q = target.find(b"?")
    if q >= 0:
        return authority, target[:q], target[q + 1 :]
    return authority, target, b""


def normalize_path(path: bytes) -> bytes | None:
    """The normalised path, or None when it cannot be normalised (it does not start with "/")."""
    if path == b"*":
        return path
    if not path.startswith(b"/"):
        return None
    if b"%" in path:
        path = _normalize_escapes(path)
    if b"/." not in path:
        return path
    return _remove_dot_segments(path)


def _normalize_escapes(path: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(path)
    while i < n:
        c = path[i]
        if c == _PERCENT and i + 2 < n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            value = int(path[i + 1 : i + 3], 16)
            if value in _UNRESERVED and not (value in _HEX and _after_kept_percent(out)):
                out.append(value)
            else:
                out += b"%" + path[i + 1 : i + 3].upper()
            i += 3
            continue
        out.append(c)
        i += 1
    return bytes(out)


def _after_kept_percent(out: bytearray) -> bool:
    """Would a hex digit appended now extend a kept (malformed) "%" towards a new escape? Well-formed
    escapes are appended three bytes at a time, so a "%" among the last two bytes is a kept one."""
    return (len(out) >= 1 and out[-1] == _PERCENT) or (len(out) >= 2 and out[-2] == _PERCENT and out[-1] in _HEX)


def _remove_dot_segments(path: bytes) -> bytes:
    segments = path.split(b"/")
    out: list[bytes] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments[1:], start=1):
        if seg == b".":
            if i == last:
                out.append(b"")
            continue
        if seg == b"..":
            if out:
                out.pop()
            if i == last:
                out.append(b"")
            continue
        out.append(seg)
    return b"/" + b"/".join(out)


def parse_authority(authority: bytes) -> tuple[bytes, int] | None:
    """(host lowercased, port or 0) of a valid authority, None when it is not one (see the module comment).
    An IPv6 host keeps its brackets, as Host carries it."""
    if not authority.translate(None, _REG_NAME_BYTES):  # the usual host name, no port: no regex needed
        return authority.lower(), 0
    if authority[:1] == b"[":
        match = _IP_LITERAL_AUTHORITY.fullmatch(authority)
        if match is None:
            return None
        literal, port = match.groups()
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return None
        host = b"[" + literal.lower() + b"]"
    else:
        match = _REG_NAME_AUTHORITY.fullmatch(authority)
        if match is None:
            return None
        host, port = match.groups()
        if b"%" in host and _BAD_ESCAPE.search(host) is not None:
            return None
        host = host.lower()
    return host, int(port) if port else 0
