"""workers/proxy_protocol.py: PROXY protocol v1 and v2 headers, table-driven; every valid header is also fed
byte by byte (NEED_MORE until its last byte) and with the connection's own bytes after it (never consumed)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.proxy_protocol import (
    MAX_HEADER_BYTES,
    NEED_MORE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse_header,
)


def v2(command: int, family: int, block: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(block)) + block


def tcp4_block(src: bytes, dst: bytes, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    return src + dst + struct.pack("!HH", sport, dport) + tlvs


V6_SRC = bytes.fromhex("20010db8000000000000000000000001")
V6_DST = bytes.fromhex("20010db8000000000000000000000002")

VALID = [
    ("v1-tcp4", b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 80\r\n", ("203.0.113.7", 56324), ("10.0.0.1", 80)),
    ("v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:DB8::2 65535 443\r\n", ("2001:db8::1", 65535), ("2001:db8::2", 443)),
    ("v1-port-0", b"PROXY TCP4 1.2.3.4 5.6.7.8 0 0\r\n", ("1.2.3.4", 0), ("5.6.7.8", 0)),
    ("v1-unknown", b"PROXY UNKNOWN\r\n", None, None),
    ("v1-unknown-with-junk", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None, None),
    ("v1-longest", b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
     ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)),
    ("v2-tcp4", v2(1, 0x11, tcp4_block(bytes([203, 0, 113, 7]), bytes([10, 0, 0, 1]), 56324, 80)),
     ("203.0.113.7", 56324), ("10.0.0.1", 80)),
    ("v2-tcp4-with-tlvs", v2(1, 0x11, tcp4_block(bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8]), 1, 2, b"\x04\x00\x03abc\xea\x00\x01z")),
     ("1.2.3.4", 1), ("5.6.7.8", 2)),
    ("v2-tcp6", v2(1, 0x21, V6_SRC + V6_DST + struct.pack("!HH", 4711, 443)), ("2001:db8::1", 4711), ("2001:db8::2", 443)),
    ("v2-local", v2(0, 0x00, b""), None, None),
    ("v2-local-with-addresses", v2(0, 0x11, tcp4_block(bytes(4), bytes(4), 0, 0)), None, None),
    ("v2-unspec", v2(1, 0x00, b""), None, None),
    ("v2-unix", v2(1, 0x31, bytes(216)), None, None),
]


@pytest.mark.parametrize(("header", "source", "destination"), [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_headers_whole_byte_by_byte_and_with_trailing_bytes(header, source, destination):
    expected = ProxyHeader(len(header), source, destination)
    assert parse_header(header) == expected
    for cut in range(len(header)):
        assert parse_header(header[:cut]) is NEED_MORE, cut
    assert parse_header(header + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == expected
    assert parse_header(header + b"\x16\x03\x01\x02\x00") == expected  # a ClientHello after it


INVALID = [
    ("http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no PROXY protocol header"),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "no PROXY protocol header"),
    ("lowercase", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY protocol header"),
    ("crlf-first", b"\r\nGET / HTTP/1.1\r\n", "no PROXY protocol header"),
    ("v1-bare-lf", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "without CRLF"),
    ("v1-too-long", b"PROXY TCP4 " + b"1" * 100, "without CRLF"),
    ("v1-udp", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "is not PROXY TCP4|TCP6|UNKNOWN"),
    ("v1-missing-port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "is not PROXY TCP4|TCP6|UNKNOWN"),
    ("v1-double-space", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "is not PROXY TCP4|TCP6|UNKNOWN"),
    ("v1-family-mismatch", b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", "is not an IPv4 address"),
    ("v1-not-an-address", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "is not an IP address"),
    ("v1-leading-zero-address", b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "is not an IP address"),
    ("v1-port-too-big", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "is not a port"),
    ("v1-port-leading-zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "is not a port"),
    ("v1-port-sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", "is not a port"),
    ("v2-version-1", v2(1, 0x11, tcp4_block(bytes(4), bytes(4), 1, 2), version=1), "version 1"),
    ("v2-command-2", v2(2, 0x11, tcp4_block(bytes(4), bytes(4), 1, 2)), "command 2"),
    ("v2-udp", v2(1, 0x12, tcp4_block(bytes(4), bytes(4), 1, 2)), "unsupported address family"),
    ("v2-tcp4-short", v2(1, 0x11, bytes(8)), "too short"),
    ("v2-tcp6-short", v2(1, 0x21, bytes(20)), "too short"),
    ("v2-too-long", V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER_BYTES), "at most"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_headers_are_refused(data, message):
    with pytest.raises(ProxyProtocolError, match=message.replace("|", r"\|")):
        parse_header(data)


def test_v2_too_long_is_refused_before_its_bytes_arrive():
    # The announced length alone decides: nobody waits for 4 KiB of TLVs that will be refused anyway.
    with pytest.raises(ProxyProtocolError):
        parse_header(V2_SIGNATURE + b"\x21\x11\xff\xff")


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    st.binary(max_size=120).map(lambda b: V2_SIGNATURE + b),
))
def test_any_bytes_give_a_header_need_more_or_a_refusal(data):
    try:
        result = parse_header(data)
    except ProxyProtocolError:
        return
    assert result is NEED_MORE or (isinstance(result, ProxyHeader) and 0 < result.length <= len(data))
