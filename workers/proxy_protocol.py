# The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer such as AWS NLB puts in front
# of a connection's bytes; Istio turns it on with gatewayTopology.proxyProtocol (Envoy's proxy_protocol listener
# filter), edge with --proxy-protocol on every listener.
#
# Rules (sans-IO: bytes in, a value out):
# - parse_header(data) looks at the start of a connection: NEED_MORE while the header is incomplete, a
#   ProxyHeader (its length and the addresses it carries) once complete, ProxyProtocolError when the bytes are
#   not a valid header. Bytes after the header belong to the connection and are never consumed.
# - v1: "PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n" or "PROXY UNKNOWN …\r\n", at most 107 bytes; addresses
#   must be of the named family, ports decimal 0–65535.
# - v2: the 12-byte signature, version 2, command LOCAL (health checks: the connection's own addresses stay)
#   or PROXY; family TCP over IPv4 or IPv6 carries addresses, UNSPEC and UNIX carry none (the connection's own
#   addresses stay), UDP is refused. TLVs are skipped. A header longer than MAX_HEADER_BYTES is refused.
# - A connection whose first bytes are not a PROXY header is refused (Envoy's default: no
#   allow_requests_without_proxy_protocol).
from __future__ import annotations

import ipaddress
import struct

V1_PREFIX = b"PROXY "
V1_MAX_BYTES = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES = 16
MAX_HEADER_BYTES = 4096  # v2 may announce up to 64 KiB of TLVs; load balancers send a few dozen bytes

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
# (family byte high nibble, transport low nibble) → address block size and how to read it
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_UNSPEC = 0x00
_V2_UNIX_STREAM = 0x31


class ProxyProtocolError(ValueError):
    """The connection did not start with a valid PROXY protocol header."""


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore()


class ProxyHeader:
    """A complete header: `length` bytes to consume; `source`/`destination` as (ip, port), or None when the
    header carries no addresses (v2 LOCAL, UNSPEC or UNIX; v1 UNKNOWN)."""

    __slots__ = ("length", "source", "destination")

    def __init__(self, length: int, source: tuple[str, int] | None, destination: tuple[str, int] | None):
        self.length = length
        self.source = source
        self.destination = destination

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProxyHeader) and (self.length, self.source, self.destination) == (other.length, other.source, other.destination)

    def __repr__(self) -> str:
        return f"ProxyHeader({self.length}, {self.source}, {self.destination})"


def parse_header(data: bytes) -> ProxyHeader | _NeedMore:
    if not data:
        return NEED_MORE
    if data[0] == V2_SIGNATURE[0] and V2_SIGNATURE.startswith(data[:12]):
        return _parse_v2(data)
    if data[0] == V1_PREFIX[0] and V1_PREFIX.startswith(data[:6]):
        return _parse_v1(data)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | _NeedMore:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES or b"\n" in data[:V1_MAX_BYTES]:
            raise ProxyProtocolError("v1 header without CRLF within 107 bytes")
        return NEED_MORE
    fields = data[:end].split(b" ")
    length = end + 2
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":
        return ProxyHeader(length, None, None)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("v1 header is not PROXY TCP4|TCP6|UNKNOWN with 4 fields")
    version = 4 if fields[1] == b"TCP4" else 6
    source = (_v1_address(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(length, source, destination)


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"v1 header: {text[:64]!r} is not an IP address") from None
    if address.version != version or "%" in str(address):
        raise ProxyProtocolError(f"v1 header: {text[:64]!r} is not an IPv{version} address")
    return address.compressed


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise ProxyProtocolError(f"v1 header: {text[:16]!r} is not a port")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"v1 header: {port} is not a port")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | _NeedMore:
    if len(data) < V2_FIXED_BYTES:
        return NEED_MORE
    version_command, family, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        raise ProxyProtocolError(f"v2 header with command {command}")
    total = V2_FIXED_BYTES + length
    if total > MAX_HEADER_BYTES:
        raise ProxyProtocolError(f"v2 header of {total} bytes (at most {MAX_HEADER_BYTES})")
    if len(data) < total:
        return NEED_MORE
    if command == _V2_COMMAND_LOCAL:
        return ProxyHeader(total, None, None)
    block = data[V2_FIXED_BYTES:total]
    if family == _V2_TCP4:
        if length < 12:
            raise ProxyProtocolError("v2 TCP4 header too short for its addresses")
        src, dst = ipaddress.IPv4Address(block[0:4]), ipaddress.IPv4Address(block[4:8])
        sport, dport = struct.unpack_from("!HH", block, 8)
        return ProxyHeader(total, (src.compressed, sport), (dst.compressed, dport))
    if family == _V2_TCP6:
        if length < 36:
            raise ProxyProtocolError("v2 TCP6 header too short for its addresses")
        src6, dst6 = ipaddress.IPv6Address(block[0:16]), ipaddress.IPv6Address(block[16:32])
        sport, dport = struct.unpack_from("!HH", block, 32)
        return ProxyHeader(total, (src6.compressed, sport), (dst6.compressed, dport))
    if family in (_V2_UNSPEC, _V2_UNIX_STREAM):
        return ProxyHeader(total, None, None)
    raise ProxyProtocolError(f"v2 header with unsupported address family/transport 0x{family:02x}")
