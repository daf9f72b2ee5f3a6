# Sans-IO reader for a TLS ClientHello, for TLS passthrough routing by SNI, and SniIndex: the one place that picks
# a listener's filter chain by SNI (Envoy's filter_chain_match.server_names precedence: exact SNI → the longest
# "*.suffix" (a.b.c tries "*.b.c", then "*.c") → the first chain with no server names; no SNI: that catch-all
# chain only). The worker's TLS listener and `edge route` both use it.
#
# The worker feeds the client's first bytes to ClientHelloReader (or parse_client_hello()) until it has the hello,
# routes on the result and then forwards ALL bytes it read (hello included) to the upstream untouched.
# Nothing here decrypts or answers; it only reads the plaintext first flight.
#
# Byte layout read (integers big-endian; RFC 8446 §4.1.2 and §5.1, RFC 6066 §3, RFC 7301 §3.1)
#
#   TLS record, repeated until the ClientHello is complete
#     [0]       content_type            22 = handshake (anything else fails at once)
#     [1:3]     legacy_record_version   major byte 3 (0x0300..0x03ff; clients send 0x0301 or 0x0303)
#     [3:5]     length                  1 .. 16384 (2**14), then that many payload bytes
#
#   Handshake message = the concatenated payloads of those records
#     [0]       msg_type                1 = client_hello
#     [1:4]     length                  uint24, length of the body below
#
#   ClientHello body
#     legacy_version        uint16, major byte 3
#     random                32 bytes
#     legacy_session_id     uint8 length 0..32, bytes
#     cipher_suites         uint16 length, even and >= 2, bytes
#     compression_methods   uint8 length >= 1, bytes
#     extensions            absent (pre-extension TLS 1.2 hellos end here), or a uint16 length that ends
#                           exactly at the body end, then entries: uint16 type, uint16 length, data
#
#   Extensions read (all others skipped; each type may appear at most once)
#     0   server_name         uint16 list length (>= 1), entries: uint8 name_type (only 0 = host_name
#                             exists), uint16 length (>= 1), name bytes; at most one host_name
#     16  ALPN                uint16 list length (>= 2), entries: uint8 length (>= 1), name bytes
#     43  supported_versions  uint8 list length (even, >= 2), uint16 versions (GREASE values kept)
#
# Rules
# - parse_client_hello() returns None for "need more bytes" and raises only SNIParseError (a ValueError)
#   on malformed input. Every check runs on the bytes already present, so HTTP, an SSLv2-compatible
#   hello (first byte has the high bit set) or other garbage fails on its first byte, not after a timeout.
# - The hello may be fragmented across several records, every one of them a handshake record. The
#   record that holds its last byte must end with it (a client sends no other handshake message in its
#   first flight; RFC 8446 §5.1 requires the boundary), so ClientHello.length falls on a record
#   boundary. Bytes after that record (early data, pipelining) are never looked at.
# - MAX_CLIENT_HELLO_BYTES bounds the record bytes (headers included) a hello may span. A record or
#   handshake length that could only be satisfied past the cap fails when its header arrives, so a
#   caller never buffers more than the cap plus one read waiting for a hello.
# - parse_client_hello() re-walks its input on every call; ClientHelloReader keeps its place between
#   reads, so a hello split into thousands of one-byte records costs linear, not quadratic, time.
# - server_name holds ASCII 0x21..0x7e only and is lowercased; IDNA A-labels ("xn--…") and a trailing
#   dot are kept as sent (matching is the router's business). ALPN names are opaque bytes on the wire
#   and are decoded as latin-1 so every value round-trips.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.table import FilterChain


__all__ = [
    "MAX_CLIENT_HELLO_BYTES",
    "ClientHello",
    "ClientHelloReader",
    "SNIParseError",
    "parse_client_hello",
]

MAX_CLIENT_HELLO_BYTES = 64 * 1024
MAX_RECORD_PAYLOAD_BYTES = 2**14

RECORD_HEADER_BYTES = 5
HANDSHAKE_HEADER_BYTES = 4
CONTENT_TYPE_HANDSHAKE = 22
HANDSHAKE_TYPE_CLIENT_HELLO = 1
RANDOM_BYTES = 32
MAX_SESSION_ID_BYTES = 32
# legacy_version + random + the three length prefixes with their minimum contents.
MIN_CLIENT_HELLO_BODY_BYTES = 2 + RANDOM_BYTES + 1 + 2 + 2 + 1 + 1

EXTENSION_SERVER_NAME = 0
EXTENSION_ALPN = 16
EXTENSION_SUPPORTED_VERSIONS = 43
NAME_TYPE_HOST_NAME = 0


class SNIParseError(ValueError):
    """The bytes are not a well-formed TLS ClientHello; the message is a short reason."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    server_name: str | None
    alpn_protocols: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    # Bytes of the input that the hello's records occupy; the caller still forwards all of them.
    length: int


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | None:
    """The ClientHello at the start of `data`, or None while more bytes are needed.

    Each call walks `data` from its first byte. A caller that receives the hello in many small reads
    should use ClientHelloReader, which resumes where it stopped (a hostile client can split 64 KiB into
    ~11,000 one-byte records, and re-walking them on every read is quadratic).
    """
    if not isinstance(data, bytes):
        # An immutable private copy: no buffer export on the caller's bytearray outlives the call.
        data = bytes(data[:MAX_CLIENT_HELLO_BYTES])
    outcome = _RecordScanner().scan(data)
    return None if isinstance(outcome, int) else outcome


class ClientHelloReader:
    """Accumulates a connection's first bytes until the ClientHello is complete.

    Complete records are read once and the next parse waits until enough bytes arrived to change the
    answer, so any arrival pattern costs time linear in the bytes. `buffered` is every byte fed so
    far: what the caller forwards once it has routed.
    """

    __slots__ = ("_buffer", "_bytes_needed", "_error", "_result", "_scanner")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._bytes_needed = 1
        self._error: str | None = None
        self._result: ClientHello | None = None
        self._scanner = _RecordScanner()

    def feed(self, data: bytes | bytearray | memoryview) -> ClientHello | None:
        """The ClientHello once complete, else None; raises SNIParseError on malformed input,
        and again on every later feed."""
        if self._result is not None:
            raise RuntimeError("ClientHelloReader already has its ClientHello; forward the rest")
        if self._error is not None:
            raise SNIParseError(self._error)
        self._buffer += data
        if len(self._buffer) < self._bytes_needed:
            return None
        # The slice is a private copy of the unread bytes: a record or two, not the whole buffer.
        try:
            outcome = self._scanner.scan(self._buffer[self._scanner.consumed : MAX_CLIENT_HELLO_BYTES])
        except SNIParseError as error:
            self._error = str(error)
            raise
        if isinstance(outcome, int):
            self._bytes_needed = outcome
            return None
        self._result = outcome
        return outcome

    @property
    def result(self) -> ClientHello | None:
        return self._result

    @property
    def buffered(self) -> bytes:
        return bytes(self._buffer)


class _RecordScanner:
    """Walks the records of one hello; state changes only when a whole record has been read."""

    __slots__ = ("consumed", "message", "message_bytes")

    def __init__(self) -> None:
        self.consumed = 0  # input bytes of the complete records read so far
        self.message = bytearray()  # their payloads: the handshake message so far
        self.message_bytes: int | None = None  # handshake header + body, once the header is known

    def scan(self, unread: bytes | bytearray) -> ClientHello | int:
        """The ClientHello, or the input length at which scanning again could change the answer.

        `unread` is the input from offset `consumed` on; offsets returned and kept are absolute.
        """
        view = memoryview(unread)
        base = self.consumed
        available = base + len(view)
        while True:
            record_start = self.consumed
            if record_start + RECORD_HEADER_BYTES >= MAX_CLIENT_HELLO_BYTES:
                raise SNIParseError(f"ClientHello exceeds {MAX_CLIENT_HELLO_BYTES} bytes")
            header = view[record_start - base : record_start - base + RECORD_HEADER_BYTES]
            if len(header) >= 1 and header[0] != CONTENT_TYPE_HANDSHAKE:
                raise SNIParseError(f"not a TLS handshake record (content type {header[0]:#04x})")
            if len(header) >= 2 and header[1] != 3:
                raise SNIParseError(f"unsupported record version major byte {header[1]:#04x}")
            if len(header) < RECORD_HEADER_BYTES:
                return record_start + RECORD_HEADER_BYTES if len(header) >= 2 else available + 1
            record_length = (header[3] << 8) | header[4]
            if record_length == 0:
                raise SNIParseError("empty handshake record")
            if record_length > MAX_RECORD_PAYLOAD_BYTES:
                raise SNIParseError(f"record length {record_length} exceeds 2**14")
            payload_start = record_start + RECORD_HEADER_BYTES
            record_end = payload_start + record_length
            if record_end > MAX_CLIENT_HELLO_BYTES:
                raise SNIParseError(f"ClientHello exceeds {MAX_CLIENT_HELLO_BYTES} bytes")
            payload = view[payload_start - base : record_end - base]
            message_bytes = self.message_bytes
            if message_bytes is None:
                head = self.message + payload[: HANDSHAKE_HEADER_BYTES - len(self.message)]
                message_bytes = _check_handshake_head(head)
            if message_bytes is not None and len(self.message) + record_length > message_bytes:
                raise SNIParseError("handshake record continues past the ClientHello")
            if len(payload) < record_length:
                return record_end if message_bytes is not None else available + 1
            self.message += payload
            self.message_bytes = message_bytes
            self.consumed = record_end
            if len(self.message) == message_bytes:
                return _parse_body(self.message, HANDSHAKE_HEADER_BYTES, length=record_end)


def _check_handshake_head(head: bytearray) -> int | None:
    """Handshake header + body length, or None while the 4-byte header is incomplete."""
    if head and head[0] != HANDSHAKE_TYPE_CLIENT_HELLO:
        raise SNIParseError(f"handshake message type {head[0]} is not client_hello")
    if len(head) < HANDSHAKE_HEADER_BYTES:
        return None
    body_length = int.from_bytes(head[1:4], "big")
    if body_length < MIN_CLIENT_HELLO_BODY_BYTES:
        raise SNIParseError(f"ClientHello body of {body_length} bytes is too short")
    message_bytes = HANDSHAKE_HEADER_BYTES + body_length
    if message_bytes + RECORD_HEADER_BYTES > MAX_CLIENT_HELLO_BYTES:
        raise SNIParseError(f"ClientHello exceeds {MAX_CLIENT_HELLO_BYTES} bytes")
    return message_bytes


# The body is walked with integer offsets over the message bytes (indexing a bytes-like object gives an int):
# ~3x cheaper than slicing a memoryview per field, and every new TLS connection pays this walk. Every read is
# bounds-checked against its enclosing length, and an overrun is an SNIParseError naming the field.


def _vector(data: bytearray, pos: int, end: int, length_size: int, field: str) -> tuple[int, int]:
    """(start, stop) of the length-prefixed vector at `pos` that must end by `end`."""
    start = pos + length_size
    if start > end:
        raise SNIParseError(f"{field} length runs past its enclosing length")
    size = data[pos] if length_size == 1 else (data[pos] << 8) | data[pos + 1]
    stop = start + size
    if stop > end:
        raise SNIParseError(f"{field} runs past its enclosing length")
    return start, stop


def _parse_body(data: bytearray, pos: int, *, length: int) -> ClientHello:
    """The ClientHello body data[pos:]; `length` is the input bytes the hello's records occupy."""
    end = len(data)
    if pos + 2 > end:
        raise SNIParseError("legacy_version runs past its enclosing length")
    legacy_version = (data[pos] << 8) | data[pos + 1]
    if legacy_version >> 8 != 3:
        raise SNIParseError(f"legacy_version {legacy_version:#06x} is not TLS")
    pos += 2 + RANDOM_BYTES
    if pos > end:
        raise SNIParseError("random runs past its enclosing length")
    start, pos = _vector(data, pos, end, 1, "legacy_session_id")
    if pos - start > MAX_SESSION_ID_BYTES:
        raise SNIParseError("legacy_session_id longer than 32 bytes")
    start, pos = _vector(data, pos, end, 2, "cipher_suites")
    if pos - start < 2 or (pos - start) % 2:
        raise SNIParseError("cipher_suites length must be even and at least 2")
    start, pos = _vector(data, pos, end, 1, "compression_methods")
    if pos == start:
        raise SNIParseError("compression_methods is empty")
    found: dict[int, object] = {}
    if pos < end:
        start, pos = _vector(data, pos, end, 2, "extensions")
        if pos < end:
            raise SNIParseError("extensions end before the ClientHello does")
        found = _parse_extensions(data, start, pos)
    return ClientHello(
        server_name=found.get(EXTENSION_SERVER_NAME),  # type: ignore[arg-type]
        alpn_protocols=found.get(EXTENSION_ALPN, ()),  # type: ignore[arg-type]
        legacy_version=legacy_version,
        supported_versions=found.get(EXTENSION_SUPPORTED_VERSIONS, ()),  # type: ignore[arg-type]
        length=length,
    )


def _parse_extensions(data: bytearray, pos: int, end: int) -> dict[int, object]:
    seen: set[int] = set()
    found: dict[int, object] = {}
    readers = _EXTENSION_READERS
    while pos < end:
        if pos + 2 > end:
            raise SNIParseError("extension type runs past its enclosing length")
        extension_type = (data[pos] << 8) | data[pos + 1]
        start = pos + 4
        if start > end:  # the field name is formatted only on failure: this loop runs per extension
            raise SNIParseError(f"extension {extension_type} length runs past its enclosing length")
        pos = start + ((data[pos + 2] << 8) | data[pos + 3])
        if pos > end:
            raise SNIParseError(f"extension {extension_type} runs past its enclosing length")
        if extension_type in seen:
            raise SNIParseError(f"extension {extension_type} appears twice")
        seen.add(extension_type)
        reader = readers.get(extension_type)
        if reader is not None:
            found[extension_type] = reader(data, start, pos)
    return found


def _whole_list(data: bytearray, pos: int, end: int, length_size: int, field: str) -> tuple[int, int]:
    """(start, stop) of a length-prefixed list that must fill the extension data data[pos:end] exactly."""
    start, stop = _vector(data, pos, end, length_size, field)
    if stop != end:
        raise SNIParseError(f"{field} length disagrees with its extension length")
    if start == stop:
        raise SNIParseError(f"{field} is empty")
    return start, stop


def _read_server_name(data: bytearray, pos: int, end: int) -> str:
    pos, end = _whole_list(data, pos, end, 2, "server_name list")
    host_name: str | None = None
    while pos < end:
        name_type = data[pos]
        start, pos = _vector(data, pos + 1, end, 2, "server_name")
        if name_type != NAME_TYPE_HOST_NAME:
            raise SNIParseError(f"server_name type {name_type} is not host_name")
        if host_name is not None:
            raise SNIParseError("more than one host_name in server_name")
        if start == pos:
            raise SNIParseError("empty host_name")
        raw = bytes(data[start:pos])
        if min(raw) < 0x21 or max(raw) > 0x7E:
            raise SNIParseError("host_name has bytes outside printable ASCII")
        host_name = raw.decode("ascii").lower()
    assert host_name is not None  # the list is non-empty and every entry either sets it or raises
    return host_name


def _read_alpn(data: bytearray, pos: int, end: int) -> tuple[str, ...]:
    pos, end = _whole_list(data, pos, end, 2, "ALPN protocol list")
    protocols = []
    while pos < end:
        start, pos = _vector(data, pos, end, 1, "ALPN protocol")
        if start == pos:
            raise SNIParseError("empty ALPN protocol name")
        protocols.append(data[start:pos].decode("latin-1"))
    return tuple(protocols)


def _read_supported_versions(data: bytearray, pos: int, end: int) -> tuple[int, ...]:
    pos, end = _whole_list(data, pos, end, 1, "supported_versions")
    if (end - pos) % 2:
        raise SNIParseError("supported_versions length is odd")
    return tuple((data[i] << 8) | data[i + 1] for i in range(pos, end, 2))


_EXTENSION_READERS = {
    EXTENSION_SERVER_NAME: _read_server_name,
    EXTENSION_ALPN: _read_alpn,
    EXTENSION_SUPPORTED_VERSIONS: _read_supported_versions,
}


# ---------------------------------------------------------------------------------------------------------
# SNI → filter chain (pure)
# ---------------------------------------------------------------------------------------------------------


class SniIndex:
    """Envoy's server_names precedence over a listener's filter chains; `select` answers a chain index."""

    __slots__ = ("catch_all", "exact", "suffix")

    def __init__(self, chains: Sequence[FilterChain]):
        self.exact: dict[str, int] = {}
        self.suffix: dict[str, int] = {}  # ".example.com" for "*.example.com"
        self.catch_all = -1
        for index, chain in enumerate(chains):
            if not chain.server_names:
                if self.catch_all < 0:
                    self.catch_all = index
                continue
            for name in chain.server_names:
                name = name.lower()
                if name.startswith("*."):
                    self.suffix.setdefault(name[1:], index)
                elif name == "*":
                    if self.catch_all < 0:
                        self.catch_all = index
                else:
                    self.exact.setdefault(name, index)

    def select(self, server_name: str | None) -> int | None:
        """The chain for this SNI (None when the client sent none), or None: no chain matches."""
        if server_name:
            name = server_name.lower()
            index = self.exact.get(name)
            if index is not None:
                return index
            if self.suffix:
                dot = name.find(".")
                while dot >= 0:
                    index = self.suffix.get(name[dot:])
                    if index is not None:
                        return index
                    dot = name.find(".", dot + 1)
        return self.catch_all if self.catch_all >= 0 else None
