"""workers/tls/sni.py: real ClientHellos from Python's ssl module (no network), hand-built malformed ones,
incremental feeding, re-fragmentation and fuzzing."""

from __future__ import annotations

import ast
import functools
import random
import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workers.tls.sni as sni
from workers.tls.sni import (
    MAX_CLIENT_HELLO_BYTES,
    ClientHello,
    ClientHelloReader,
    SNIParseError,
    parse_client_hello,
)

TLS1_2 = 0x0303
TLS1_3 = 0x0304
LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 bytes, the DNS maximum


# ---------------------------------------------------------------------------------------------------
# Real ClientHellos: an ssl client object wired to memory BIOs writes its first flight and stops.


@functools.cache
def real_hello(server_hostname: str | None, *, tls12_only: bool = False, alpn: tuple[str, ...] = ()) -> bytes:
    context = ssl.create_default_context()
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if server_hostname is None:
        context.check_hostname = False
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


# (id, hostname, options, expected server_name, expected ALPN, TLS 1.3 offered)
REAL_CASES = [
    ("tls13", "x.example.com", {}, "x.example.com", (), True),
    ("tls12-only", "x.example.com", {"tls12_only": True}, "x.example.com", (), False),
    ("tls13-alpn", "x.example.com", {"alpn": ("h2", "http/1.1")}, "x.example.com", ("h2", "http/1.1"), True),
    ("tls12-alpn", "api.example.com", {"tls12_only": True, "alpn": ("http/1.1",)}, "api.example.com",
     ("http/1.1",), False),
    ("no-sni", None, {}, None, (), True),
    ("no-sni-tls12", None, {"tls12_only": True}, None, (), False),
    ("ipv4-no-sni", "127.0.0.1", {}, None, (), True),
    ("ipv6-no-sni", "::1", {}, None, (), True),
    ("long-host", LONG_HOST, {}, LONG_HOST, (), True),
    ("long-host-tls12", LONG_HOST, {"tls12_only": True}, LONG_HOST, (), False),
    ("uppercase", "ABC.Example.COM", {}, "abc.example.com", (), True),
    ("idna-kept", "bücher.example", {}, "xn--bcher-kva.example", (), True),
    ("single-label", "localhost", {"alpn": ("h2",)}, "localhost", ("h2",), True),
]


def real_hellos() -> list[bytes]:
    return [real_hello(host, **options) for _, host, options, *_ in REAL_CASES]


@pytest.mark.parametrize(
    ("host", "options", "server_name", "alpn", "offers_tls13"),
    [case[1:] for case in REAL_CASES],
    ids=[case[0] for case in REAL_CASES],
)
def test_real_client_hello(host, options, server_name, alpn, offers_tls13):
    data = real_hello(host, **options)
    hello = parse_client_hello(data)
    assert hello == ClientHello(
        server_name=server_name,
        alpn_protocols=alpn,
        legacy_version=TLS1_2,
        supported_versions=hello.supported_versions,
        length=len(data),
    )
    if offers_tls13:
        assert TLS1_3 in hello.supported_versions and TLS1_2 in hello.supported_versions
    else:
        assert TLS1_3 not in hello.supported_versions


def test_uppercase_sni_is_sent_as_is_and_lowercased_on_read():
    data = real_hello("ABC.Example.COM")
    assert b"ABC.Example.COM" in data  # so the lowercasing below is ours, not the client's
    assert parse_client_hello(data).server_name == "abc.example.com"


def test_client_hello_is_frozen():
    hello = parse_client_hello(real_hello("x.example.com"))
    with pytest.raises(AttributeError):
        hello.server_name = "y.example.com"
    assert not hasattr(hello, "__dict__")


@pytest.mark.parametrize("data", [b"", bytearray(), memoryview(b"")], ids=["bytes", "bytearray", "memoryview"])
def test_empty_input_needs_more(data):
    assert parse_client_hello(data) is None


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_accepts_every_buffer_type(wrap):
    data = real_hello("x.example.com", alpn=("h2",))
    assert parse_client_hello(wrap(data)) == parse_client_hello(data)


def test_bytearray_can_grow_after_a_parse_error():
    buffer = bytearray(b"\x16\x03\x01\x00\x00")
    with pytest.raises(SNIParseError):
        parse_client_hello(buffer)
    buffer += b"more"  # no buffer export left behind by the failed parse
    assert buffer.endswith(b"more")


# ---------------------------------------------------------------------------------------------------
# Hand-built hellos: every field explicit, so one field at a time can be broken.


def u8(n: int) -> bytes:
    return n.to_bytes(1, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def record(payload: bytes, *, content_type: int = 22, version: int = 0x0301, length: int | None = None) -> bytes:
    return u8(content_type) + u16(version) + u16(len(payload) if length is None else length) + payload


def handshake(body: bytes, *, msg_type: int = 1, length: int | None = None) -> bytes:
    return u8(msg_type) + u24(len(body) if length is None else length) + body


def extension(extension_type: int, data: bytes) -> bytes:
    return u16(extension_type) + u16(len(data)) + data


def server_name(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(u8(name_type) + u16(len(name)) + name for name in names)
    return extension(0, u16(len(entries)) + entries)


def alpn(*protocols: bytes) -> bytes:
    entries = b"".join(u8(len(p)) + p for p in protocols)
    return extension(16, u16(len(entries)) + entries)


def supported_versions(*versions: int) -> bytes:
    entries = b"".join(u16(v) for v in versions)
    return extension(43, u8(len(entries)) + entries)


def body(
    *extensions: bytes,
    version: bytes = u16(TLS1_2),
    session_id: bytes = u8(32) + bytes(range(32)),
    cipher_suites: bytes = u16(4) + b"\x13\x01\xc0\x2f",
    compression: bytes = u8(1) + b"\x00",
    extensions_block: bytes | None = None,
) -> bytes:
    if extensions_block is None:
        joined = b"".join(extensions)
        extensions_block = u16(len(joined)) + joined
    return version + bytes(32) + session_id + cipher_suites + compression + extensions_block


def built_hello(*extensions: bytes, **fields) -> bytes:
    return record(handshake(body(*extensions, **fields)))


def test_built_hello_parses():
    data = built_hello(server_name(b"Web.Example.COM"), alpn(b"h2", b"http/1.1"), supported_versions(0x0A0A, TLS1_3))
    assert parse_client_hello(data) == ClientHello(
        server_name="web.example.com",
        alpn_protocols=("h2", "http/1.1"),
        legacy_version=TLS1_2,
        supported_versions=(0x0A0A, TLS1_3),  # GREASE is kept
        length=len(data),
    )


def test_hello_without_extensions_block():
    data = built_hello(extensions_block=b"")
    assert parse_client_hello(data) == ClientHello(None, (), TLS1_2, (), len(data))


def test_hello_with_empty_extensions_block():
    data = built_hello()
    assert parse_client_hello(data) == ClientHello(None, (), TLS1_2, (), len(data))


def test_unknown_extensions_are_skipped_and_trailing_dot_is_kept():
    data = built_hello(extension(0xFAFA, b""), extension(21, bytes(300)), server_name(b"a.example."))
    assert parse_client_hello(data).server_name == "a.example."


def test_non_ascii_alpn_round_trips_as_latin1():
    assert parse_client_hello(built_hello(alpn(b"\xff\x00x"))).alpn_protocols == ("\xff\x00x",)


def test_record_versions_0x0300_to_0x0303_are_accepted():
    payload = handshake(body(server_name(b"v.example")))
    for version in (0x0300, 0x0301, 0x0302, 0x0303):
        assert parse_client_hello(record(payload, version=version)).server_name == "v.example"


def test_large_hello_spanning_records_parses():
    message = handshake(body(server_name(b"big.example"), extension(21, bytes(40_000))))
    data = b"".join(record(message[i : i + 2**14]) for i in range(0, len(message), 2**14))
    assert data.count(b"\x16\x03\x01\x40\x00") == 2  # really three records
    assert parse_client_hello(data) == ClientHello("big.example", (), TLS1_2, (), len(data))


GOOD_BODY = body(server_name(b"x.example"))

MALFORMED = [
    # record layer
    ("http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "content type 0x47"),
    ("sslv2-compat-hello", bytes.fromhex("802e0100020015000000100700c0") + bytes(16), "content type 0x80"),
    ("alert-record", record(b"\x02\x28", content_type=21), "content type 0x15"),
    ("application-data-record", record(handshake(GOOD_BODY), content_type=23), "content type 0x17"),
    ("ccs-record", record(b"\x01", content_type=20), "content type 0x14"),
    ("record-version-major-2", record(handshake(GOOD_BODY), version=0x0200), "major byte"),
    ("record-version-major-4", record(handshake(GOOD_BODY), version=0x0401), "major byte"),
    ("empty-record", record(b""), "empty handshake record"),
    ("application-data-after-fragment", record(handshake(GOOD_BODY)[:20]) + b"\x17", "content type 0x17"),
    ("tls-major-2-after-fragment", record(handshake(GOOD_BODY)[:9]) + b"\x16\x02", "major byte"),
    ("record-over-2^14", record(bytes(10), length=2**14 + 1), "exceeds 2\\*\\*14"),
    # handshake header
    ("server-hello-type", record(handshake(GOOD_BODY, msg_type=2)), "not client_hello"),
    ("finished-type", record(handshake(GOOD_BODY, msg_type=20)), "not client_hello"),
    ("handshake-length-too-short", record(handshake(bytes(10))), "too short"),
    ("handshake-length-zero", record(handshake(b"")), "too short"),
    ("handshake-length-over-cap", record(handshake(GOOD_BODY, length=MAX_CLIENT_HELLO_BYTES)), "exceeds"),
    ("handshake-length-under-record", record(handshake(GOOD_BODY, length=len(GOOD_BODY) - 1)),
     "continues past the ClientHello"),
    ("second-handshake-in-record", record(handshake(GOOD_BODY) + handshake(b"", msg_type=20)),
     "continues past the ClientHello"),
    # ClientHello fixed fields
    ("legacy-version-not-tls", built_hello(version=u16(0x0200)), "not TLS"),
    ("session-id-33", built_hello(session_id=u8(33) + bytes(33)), "longer than 32"),
    ("session-id-past-end", record(handshake(body(extensions_block=b"")[:34] + u8(32) + bytes(8))), "runs past"),
    ("cipher-suites-odd", built_hello(cipher_suites=u16(3) + b"\x13\x01\x00"), "even"),
    ("cipher-suites-empty", built_hello(cipher_suites=u16(0)), "even"),
    ("cipher-suites-past-end", built_hello(cipher_suites=u16(0xFFFE) + b"\x13\x01", extensions_block=b""),
     "cipher_suites runs past"),
    ("compression-empty", built_hello(compression=u8(0)), "compression_methods is empty"),
    ("compression-past-end", built_hello(compression=u8(200) + b"\x00", extensions_block=b""), "runs past"),
    ("compression-missing", record(handshake(body(extensions_block=b"")[:-2])), "compression_methods length runs past"),
    # extensions block
    ("extensions-length-truncated", built_hello(extensions_block=b"\x00"), "extensions length runs past"),
    ("extensions-length-past-end", built_hello(extensions_block=u16(40) + server_name(b"x.example")),
     "extensions runs past"),
    ("extensions-length-short", built_hello(extensions_block=u16(2) + server_name(b"x.example")),
     "end before"),
    ("extension-length-past-block", built_hello(extensions_block=u16(6) + u16(0xFAFA) + u16(9) + b"ab"),
     "extension 64250 runs past"),
    ("extension-header-truncated", built_hello(extensions_block=u16(3) + u16(0) + b"\x00"),
     "extension 0 length runs past"),
    ("duplicate-extension", built_hello(extension(21, b""), extension(21, b"")), "appears twice"),
    ("duplicate-server-name", built_hello(server_name(b"a.example"), server_name(b"b.example")), "appears twice"),
    # server_name
    ("sni-empty-extension", built_hello(extension(0, b"")), "server_name list length runs past"),
    ("sni-empty-list", built_hello(extension(0, u16(0))), "server_name list is empty"),
    ("sni-list-length-short", built_hello(extension(0, u16(3) + u8(0) + u16(1) + b"a")), "disagrees"),
    ("sni-list-length-long", built_hello(extension(0, u16(9) + u8(0) + u16(1) + b"a")), "list runs past"),
    ("sni-name-length-long", built_hello(extension(0, u16(4) + u8(0) + u16(2) + b"a")), "server_name runs past"),
    ("sni-entry-truncated", built_hello(extension(0, u16(2) + u8(0) + b"\x00")), "server_name length runs past"),
    ("sni-non-host-name-type", built_hello(server_name(b"x.example", name_type=1)), "not host_name"),
    ("sni-host-name-then-other", built_hello(extension(0, u16(11) + u8(0) + u16(1) + b"a" + u8(7) + u16(4) + b"abcd")),
     "not host_name"),
    ("sni-two-host-names", built_hello(extension(0, u16(8) + u8(0) + u16(1) + b"a" + u8(0) + u16(1) + b"b")),
     "more than one"),
    ("sni-zero-length-name", built_hello(server_name(b"")), "empty host_name"),
    ("sni-space", built_hello(server_name(b"a b.example")), "printable ASCII"),
    ("sni-nul", built_hello(server_name(b"a.example\x00.evil")), "printable ASCII"),
    ("sni-del", built_hello(server_name(b"a\x7f")), "printable ASCII"),
    ("sni-utf8", built_hello(server_name("bücher.example".encode())), "printable ASCII"),
    # ALPN
    ("alpn-empty-extension", built_hello(extension(16, b"")), "ALPN protocol list length runs past"),
    ("alpn-empty-list", built_hello(extension(16, u16(0))), "ALPN protocol list is empty"),
    ("alpn-empty-name", built_hello(extension(16, u16(1) + u8(0))), "empty ALPN"),
    ("alpn-name-past-list", built_hello(extension(16, u16(3) + u8(5) + b"h2")), "ALPN protocol runs past"),
    ("alpn-list-length-short", built_hello(extension(16, u16(2) + u8(2) + b"h")), "ALPN protocol runs past"),
    ("alpn-list-disagrees", built_hello(extension(16, u16(3) + u8(2) + b"h2" + b"x")), "disagrees"),
    # supported_versions
    ("versions-empty-list", built_hello(extension(43, u8(0))), "supported_versions is empty"),
    ("versions-odd", built_hello(extension(43, u8(3) + b"\x03\x04\x03")), "odd"),
    ("versions-list-long", built_hello(extension(43, u8(4) + b"\x03\x04")), "supported_versions runs past"),
    ("versions-list-short", built_hello(extension(43, u8(2) + b"\x03\x04\x03\x03")), "disagrees"),
    ("versions-empty-extension", built_hello(extension(43, b"")), "supported_versions length runs past"),
]


@pytest.mark.parametrize(("data", "reason"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_raises(data, reason):
    with pytest.raises(SNIParseError, match=reason):
        parse_client_hello(data)
    # Fed byte by byte, the reader fails on exactly the byte where the function first fails.
    first_failing = next(end for end in range(1, len(data) + 1) if outcome(data[:end]) is SNIParseError)
    reader = ClientHelloReader()
    for index in range(first_failing - 1):
        assert reader.feed(data[index : index + 1]) is None
    with pytest.raises(SNIParseError, match=reason):
        reader.feed(data[first_failing - 1 : first_failing])


def test_sni_parse_error_is_a_value_error():
    assert issubclass(SNIParseError, ValueError)


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\n", bytes.fromhex("802e0100020015"), b"\x00", b"SSH-2.0-OpenSSH_9.6\r\n", b"\x16\x02"],
    ids=["http", "sslv2", "nul", "ssh", "tls-major-2"],
)
def test_non_tls_fails_within_the_record_header(data):
    with pytest.raises(SNIParseError):
        parse_client_hello(data[:5])
    with pytest.raises(SNIParseError):
        parse_client_hello(data[:2])


def test_wrong_handshake_type_fails_on_its_byte_without_waiting_for_the_record():
    data = record(handshake(GOOD_BODY, msg_type=2))
    with pytest.raises(SNIParseError, match="not client_hello"):
        parse_client_hello(data[:6])


def test_non_handshake_record_between_fragments():
    message = handshake(GOOD_BODY)
    data = record(message[:20]) + record(b"\x01", content_type=20) + record(message[20:])
    assert parse_client_hello(data[:25]) is None
    with pytest.raises(SNIParseError, match="content type 0x14"):
        parse_client_hello(data)


def test_declared_length_over_cap_fails_on_the_header():
    head = record(b"\x01" + u24(MAX_CLIENT_HELLO_BYTES), length=2**14)
    with pytest.raises(SNIParseError, match="exceeds"):
        parse_client_hello(head)


def test_reader_keeps_failing_after_an_error():
    reader = ClientHelloReader()
    message = handshake(GOOD_BODY[:-3] + b"\x00\x00\x00")  # NULs in host_name
    with pytest.raises(SNIParseError, match="printable ASCII"):
        reader.feed(record(message))
    for _ in range(2):
        with pytest.raises(SNIParseError, match="printable ASCII"):
            reader.feed(record(b"\x01"))


def test_tiny_records_hit_the_cap_instead_of_asking_forever():
    message = handshake(GOOD_BODY + bytes(12_000))  # 6 bytes per 1-byte record: ~72 KiB of records
    reader = ClientHelloReader()
    with pytest.raises(SNIParseError, match="exceeds"):
        for byte in message:
            reader.feed(record(bytes([byte])))
    assert len(reader.buffered) <= MAX_CLIENT_HELLO_BYTES + 6


# ---------------------------------------------------------------------------------------------------
# Feeding: whole, byte by byte, with trailing bytes, re-fragmented.


def every_valid_hello() -> list[bytes]:
    return real_hellos() + [
        built_hello(server_name(b"x.example"), alpn(b"h2")),
        built_hello(extensions_block=b""),
    ]


def valid_ids() -> list[str]:
    return [case[0] for case in REAL_CASES] + ["built", "built-no-extensions"]


def handshake_payload(data: bytes) -> bytes:
    """The concatenated record payloads of a hello (its handshake message)."""
    payload, offset = b"", 0
    while offset < len(data):
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        payload += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
    return payload


def refragment(data: bytes, rng: random.Random) -> bytes:
    message = handshake_payload(data)
    records, offset = [], 0
    while offset < len(message):
        size = rng.choice([rng.randint(1, 8), rng.randint(1, 200), rng.randint(1, len(message))])
        records.append(record(message[offset : offset + size], version=rng.choice([0x0301, 0x0303])))
        offset += size
    return b"".join(records)


@pytest.mark.parametrize("data", every_valid_hello(), ids=valid_ids())
def test_prefixes_need_more_then_the_same_result(data):
    expected = parse_client_hello(data)
    assert expected is not None and expected.length == len(data)
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is None, end


@pytest.mark.parametrize("data", every_valid_hello(), ids=valid_ids())
def test_reader_byte_by_byte(data):
    expected = parse_client_hello(data)
    reader = ClientHelloReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert results == [None] * (len(data) - 1) + [expected]
    assert reader.result == expected
    assert reader.buffered == data
    with pytest.raises(RuntimeError):
        reader.feed(b"late")


TRAILERS = [
    b"\x14\x03\x03\x00\x01\x01",  # TLS 1.3 middlebox-compat change_cipher_spec
    b"\x17\x03\x03\x00\x05early",  # early data
    b"\x16\x03\x01",  # the start of another record
    b"GET / HTTP/1.1\r\n\r\n",
    bytes(range(256)),
]


@pytest.mark.parametrize("data", every_valid_hello(), ids=valid_ids())
@pytest.mark.parametrize("trailer", TRAILERS, ids=["ccs", "early-data", "record-start", "http", "binary"])
def test_trailing_bytes_are_not_read(data, trailer):
    expected = parse_client_hello(data)
    assert parse_client_hello(data + trailer) == expected
    assert parse_client_hello(bytearray(data + trailer)) == expected
    reader = ClientHelloReader()
    assert reader.feed(data[:-1]) is None
    assert reader.feed(data[-1:] + trailer) == expected
    assert reader.buffered == data + trailer  # everything the caller must forward


@pytest.mark.parametrize("data", every_valid_hello(), ids=valid_ids())
def test_refragmented_into_random_records(data):
    expected = parse_client_hello(data)
    rng = random.Random(len(data))
    for _ in range(20):
        fragmented = refragment(data, rng)
        hello = parse_client_hello(fragmented + b"\x17\x03\x03\x00\x01x")
        assert hello == ClientHello(
            expected.server_name,
            expected.alpn_protocols,
            expected.legacy_version,
            expected.supported_versions,
            length=len(fragmented),
        )
        reader = ClientHelloReader()
        chunks = [fragmented[i : i + 7] for i in range(0, len(fragmented), 7)]
        assert [reader.feed(chunk) for chunk in chunks][-1] == hello


def test_one_byte_records_split_every_header():
    data = real_hello("x.example.com", alpn=("h2",))
    fragmented = b"".join(record(bytes([b])) for b in handshake_payload(data))
    assert len(fragmented) == 6 * (len(data) - 5)
    assert parse_client_hello(fragmented) == ClientHello(
        "x.example.com", ("h2",), TLS1_2, parse_client_hello(data).supported_versions, len(fragmented)
    )
    for end in range(0, len(fragmented), 97):
        assert parse_client_hello(fragmented[:end]) is None


# ---------------------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, the answer is a ClientHello, None or SNIParseError, and the reader agrees
# with the function however the bytes are chunked.

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(data: bytes) -> ClientHello | None | type[SNIParseError]:
    try:
        return parse_client_hello(data)
    except SNIParseError:
        return SNIParseError


def check_consistent(data: bytes, chunk_sizes: list[int]) -> None:
    whole = outcome(data)
    if isinstance(whole, ClientHello):
        assert 0 < whole.length <= len(data)
        assert outcome(data[: whole.length]) == whole
        assert outcome(data[: whole.length - 1]) is None
        assert whole.server_name is None or whole.server_name == whole.server_name.lower()
    # After every chunk the reader says what the function says about the bytes fed so far.
    reader, got, offset = ClientHelloReader(), None, 0
    sizes = iter(chunk_sizes)
    while offset < len(data) and got is None:
        size = next(sizes, len(data))
        try:
            got = reader.feed(data[offset : offset + size])
        except SNIParseError:
            got = SNIParseError
        offset += size
        assert got == outcome(data[:offset])
    assert got == whole


chunk_sizes = st.lists(st.integers(1, 64), max_size=20)


@FUZZ
@given(st.binary(max_size=1024), chunk_sizes)
def test_fuzz_arbitrary_bytes(data, sizes):
    check_consistent(data, sizes)


@FUZZ
@given(st.binary(max_size=600), chunk_sizes)
def test_fuzz_arbitrary_client_hello_body(body_bytes, sizes):
    check_consistent(record(handshake(body_bytes)), sizes)


@FUZZ
@given(st.binary(max_size=300), chunk_sizes)
def test_fuzz_arbitrary_extensions_block(extensions, sizes):
    check_consistent(built_hello(extensions_block=u16(len(extensions)) + extensions), sizes)


@FUZZ
@given(st.sampled_from([0, 16, 43]), st.binary(max_size=64), st.binary(max_size=64), chunk_sizes)
def test_fuzz_arbitrary_data_in_read_extensions(extension_type, data, trailer, sizes):
    check_consistent(built_hello(extension(extension_type, data)) + trailer, sizes)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF])),
)


def mutate(data: bytes, mutations) -> bytes:
    buffer = bytearray(data)
    for kind, position, *rest in mutations:
        position %= len(buffer) + 1
        if kind == "flip" and position < len(buffer):
            buffer[position] ^= 1 << rest[0]
        elif kind == "truncate":
            del buffer[position:]
        elif kind == "insert":
            buffer[position:position] = rest[0]
        elif kind == "delete":
            del buffer[position : position + rest[0]]
        elif kind == "set" and position < len(buffer):
            buffer[position] = rest[0]
    return bytes(buffer)


@FUZZ
@given(st.sampled_from(every_valid_hello()), st.lists(mutation, min_size=1, max_size=4), chunk_sizes)
def test_fuzz_mutated_real_hellos(data, mutations, sizes):
    check_consistent(mutate(data, mutations), sizes)


@FUZZ
@given(st.sampled_from(every_valid_hello()), st.integers(0, 2**32), st.lists(mutation, max_size=3), chunk_sizes)
def test_fuzz_mutated_refragmented_hellos(data, seed, mutations, sizes):
    check_consistent(mutate(refragment(data, random.Random(seed)), mutations), sizes)


# ---------------------------------------------------------------------------------------------------


def test_module_is_pure():
    tree = ast.parse(Path(sni.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    # The hello parser and SniIndex need nothing but the table's schema (a FilterChain's server names).
    assert imported <= {"__future__", "dataclasses", "collections.abc", "edge.table"}, imported
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "open" not in calls
