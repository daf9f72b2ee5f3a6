# HTTP/1.1 request framing and head rules shared by both server codecs (workers/http/codec.py), sans-IO.
#
# Both engines give the same verdict on the same bytes because everything that decides where a request starts
# and ends, and whether its head is acceptable, is decided here, once, from edge's own parse:
# - A head is the bytes up to the first CRLF CRLF, after any empty lines (RFC 9112 §2.2: a server SHOULD ignore
#   them). It must be complete within max_head_bytes: 431, or 414 while the request line itself is unfinished.
#   The request line is judged first, as soon as it is whole (check_request_line): `method SP request-target SP
#   HTTP/d.d`, several SP between the parts taken as Envoy's codec takes them (400 otherwise); a version other
#   than HTTP/1.0 or HTTP/1.1 is 505; a method outside KNOWN_METHODS is 400 (Envoy takes no custom methods by
#   default); a request-target with a byte outside visible ASCII, or in a form its method does not allow, is
#   400 (a fragment is allowed here and dropped by the router, as at an Istio gateway, whose bootstrap turns
#   Envoy's fragment rejection off). Then the bytes (check_head_bytes): no bare CR or LF, no control character
#   other than HTAB, no obs-fold (a line starting with SP or HTAB): 400. llhttp refuses those bytes itself,
#   with the same 400, so the httptools codec skips that pass (RAW_CHECKS); h11 would take some of them.
# - The engine (h11 or llhttp) then tokenises the head into fields. check_fields() decides the rest from the
#   fields, reading in the same pass the few the gateway acts on (RequestHead): at most MAX_HEADERS fields
#   (431); exactly one Host on HTTP/1.1, at most one on HTTP/1.0, and a valid authority
#   (workers/paths.parse_authority) in it or in an absolute-form target (400); Content-Length as one field of
#   digits no larger than 2^63−1 (400); no Transfer-Encoding on HTTP/1.0 (400), never with Content-Length
#   (400), and nothing but `chunked` (501, as Envoy); at most MAX_CONNECTION_TOKENS Connection tokens, none
#   naming an x-forwarded-* field (400, Envoy's http1.connection_header_rejected). When the engine refuses a
#   head, these checks still pick the status if one of them applies, so an engine's own preference (h11 says
#   501 where llhttp says 400) never shows.
# - The body is framed by RequestFramer from those two values only: Content-Length bytes, or chunks (size in hex
#   up to 2^63−1, extensions as RFC 9112 §7.1.1 writes them, with BWS and quoted strings; data; CRLF), then a
#   trailer section kept apart from the header fields (never merged, never forwarded) and bounded like a head.
#   No header a client nominates in Connection changes any of this.
# - Bytes after a message belong to the next request (pipelining): the framer does not look at them until the
#   codec starts the next cycle. EOF inside a message is IncompleteMessage (the client left); EOF between
#   messages is a clean close.
# Every malformed input raises ProtocolError with the status to answer; nothing else escapes.
from __future__ import annotations

import re

from workers.paths import parse_authority

MAX_HEADERS = 100  # Envoy's max_headers_count default (HttpProtocolOptions), 431 above it
MAX_CONTENT_LENGTH = (1 << 63) - 1  # a length a 64-bit signed reader agrees on; larger is refused, never wrapped
MAX_CHUNK_LINE_BYTES = 4096  # a chunk-size line with its extensions
MAX_CONNECTION_TOKENS = 9  # Envoy's codec refuses a Connection header with 10 or more tokens
# Names a Connection header may not nominate (Envoy answers 400): the proxy's own forwarding facts.
_UNNOMINATABLE = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"})
HTTP_VERSIONS = (b"1.1", b"1.0")

# Methods Envoy's HTTP/1 codec accepts without `allow_custom_methods` (its http-parser list), which is also
# what llhttp parses in HTTP mode.
KNOWN_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH SEARCH UNLOCK BIND "
    b"REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE "
    b"MKCALENDAR LINK UNLINK SOURCE".split()
)


class ProtocolError(Exception):
    def __init__(self, message: str, status_hint: int = 400):
        super().__init__(message)
        self.status_hint = status_hint


class IncompleteMessage(ProtocolError):
    """The peer closed its side in the middle of a message."""


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")
END_OF_MESSAGE = _Sentinel("END_OF_MESSAGE")
CLOSED = _Sentinel("CLOSED")


class Data:
    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# request-line = method SP request-target SP HTTP-version (RFC 9112 §3); the target is checked apart.
_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") +([^ ]+) +HTTP/([0-9]\.[0-9])")
# Control bytes a head may not hold at all (HTAB is whitespace; CR and LF are checked as line ends).
_HEAD_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A request-target: visible ASCII only.
_TARGET_BAD = re.compile(rb"[^\x21-\x7e]")
_VISIBLE_ASCII = bytes(range(0x21, 0x7F))
_USUAL_VERSIONS = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}
# field-line = field-name ":" OWS field-value OWS; the value's own bytes were checked by _HEAD_CONTROL.
# Anchored at line starts, so that a line can only be matched whole (counted against the CRLFs).
FIELD_LINE = re.compile(rb"(?m)^(" + TOKEN + rb"):[ \t]*([^\r\n]*?)[ \t]*\r\n")
_CHUNK_EXTENSIONS = re.compile(
    rb"(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + _QUOTED_STRING + rb"))?)*"
)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_NO_NAMES: frozenset[bytes] = frozenset()
_F_HOST, _F_CONTENT_LENGTH, _F_TRANSFER_ENCODING, _F_CONNECTION, _F_XFF, _F_XFP, _F_REQUEST_ID, _F_EXPECT, _F_UPGRADE = range(9)
_FIELD_KINDS = {
    b"host": _F_HOST, b"content-length": _F_CONTENT_LENGTH, b"transfer-encoding": _F_TRANSFER_ENCODING,
    b"connection": _F_CONNECTION, b"x-forwarded-for": _F_XFF, b"x-forwarded-proto": _F_XFP,
    b"x-request-id": _F_REQUEST_ID, b"expect": _F_EXPECT, b"upgrade": _F_UPGRADE,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------------


class RequestLine:
    __slots__ = ("method", "target", "version")

    def __init__(self, method: bytes, target: bytes, version: bytes):
        self.method = method
        self.target = target
        self.version = version


def check_head_bytes(head: bytes) -> RequestLine:
    """The raw checks of a whole head (request line through the empty line): returns the request line, raises
    ProtocolError. The request line is judged first, so the verdict does not depend on how the head arrived
    (next_head judges a request line as soon as it is whole)."""
    line = check_request_line(head[: _first_line_end(head)])
    crlf = head.count(b"\r\n")
    lines = crlf - 1  # the request line and the field lines
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise ProtocolError("bare CR or LF in the request head")
    if _HEAD_CONTROL.search(head) is not None:
        raise ProtocolError("control character in the request head")
    if b"\n " in head or b"\n\t" in head:
        raise ProtocolError("obsolete line folding in the request head")
    if lines - 1 > MAX_HEADERS:
        raise ProtocolError("too many header fields", 431)
    return line


def _first_line_end(data) -> int:
    """Where the request line ends (its CR), given that `data` holds an LF; a bare LF is refused."""
    lf = data.find(b"\n")
    if lf == 0 or data[lf - 1] != 0x0D:
        raise ProtocolError("bare LF in the request head")
    return lf - 1


def check_request_line(line: bytes) -> RequestLine:
    """A request line (without its CRLF) by the rules of the module comment; raises ProtocolError. Byte-level
    faults are judged before the version and the method, so a control byte is 400 wherever it is."""
    parts = line.split(b" ")
    if len(parts) == 3:  # the usual line, judged without a regex
        method, target, protocol = parts
        version = _USUAL_VERSIONS.get(protocol)
        if version is not None and method in KNOWN_METHODS and target and not target.translate(None, _VISIBLE_ASCII):
            if target[0] == 0x2F or b"://" in target or (target == b"*" and method == b"OPTIONS") or method == b"CONNECT":
                return RequestLine(method, target, version)
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise ProtocolError("invalid request line")
    method, target, version = match.groups()
    if _TARGET_BAD.search(target) is not None:
        raise ProtocolError("invalid request target")
    if version not in HTTP_VERSIONS:
        raise ProtocolError(f"HTTP/{version.decode()} is not supported", 505)
    if method not in KNOWN_METHODS:
        raise ProtocolError("unknown method")
    if target[0] != 0x2F and b"://" not in target and not (target == b"*" and method == b"OPTIONS") and method != b"CONNECT":
        raise ProtocolError("invalid request target")  # origin-, absolute-, asterisk- (OPTIONS) or authority-form (CONNECT)
    return RequestLine(method, target, version)


def tokenize_fields(head: bytes, start: int) -> list[tuple[bytes, bytes]]:
    """The field lines of a head check_head_bytes passed (through its empty line) from `start`, as (lowercase
    name, value): edge's own tokeniser, which accepts exactly what llhttp accepts from such a head (it relies on
    that check for bare CR/LF and control bytes)."""
    fields = FIELD_LINE.findall(head, start)
    if len(fields) != head.count(b"\r\n", start) - 1:
        raise ProtocolError("invalid header field line")
    return [(name.lower(), value) for name, value in fields]


class RequestHead:
    """What check_fields read from one request's fields, once, for the codec and the proxy: the framing, the
    authority, and the few fields the gateway itself acts on (so that nothing walks the header list twice)."""

    __slots__ = ("authority", "host", "port", "content_length", "chunked", "keep_alive", "expect_continue", "upgrade", "nominated", "underscore", "xff", "xfp", "request_id")

    authority: bytes  # from an absolute-form target, else the Host field ("" when HTTP/1.0 sent none)
    host: bytes  # the authority's host, lowercased (IPv6 in brackets)
    port: int  # the authority's port, 0 when it has none
    content_length: int  # -1 when the request has no Content-Length
    chunked: bool
    keep_alive: bool  # HTTP/1.1 without `Connection: close` (HTTP/1.0 clients are not offered keep-alive)
    expect_continue: bool
    upgrade: bytes | None  # the Upgrade field's value when Connection lists "upgrade"
    nominated: frozenset[bytes]  # other names Connection lists: hop-by-hop for this request
    underscore: bool  # a field name holds "_" (Envoy's edge default refuses those requests)
    xff: bytes | None  # X-Forwarded-For, X-Forwarded-Proto, X-Request-Id, repeated fields joined with ","
    xfp: bytes | None
    request_id: bytes | None


def check_fields(line: RequestLine, fields: list[tuple[bytes, bytes]], absolute_authority: bytes | None) -> RequestHead:
    """The header rules of the module comment over a tokenised head; raises ProtocolError."""
    if len(fields) > MAX_HEADERS:
        raise ProtocolError("too many header fields", 431)
    host = length = codings = nominated = upgrade = xff = xfp = request_id = None
    hosts = connection_tokens = 0
    close = expect = upgrade_token = underscore = False
    for name, value in fields:
        kind = _FIELD_KINDS.get(name)
        if kind is None:  # a field the gateway does not act on (one dict lookup for each of them)
            if b"_" in name:
                underscore = True
        elif kind == _F_HOST:
            hosts += 1
            host = value
        elif kind == _F_CONTENT_LENGTH:
            if length is not None:
                raise ProtocolError("more than one Content-Length")
            length = _content_length(value)
        elif kind == _F_TRANSFER_ENCODING:
            codings = (codings or []) + [c.strip().lower() for c in value.split(b",")]
        elif kind == _F_CONNECTION:
            tokens = value.split(b",")
            connection_tokens += len(tokens)
            for token in tokens:
                token = token.strip().lower()
                if token == b"close":
                    close = True
                elif token == b"upgrade":
                    upgrade_token = True
                elif token and token != b"keep-alive":
                    if token in _UNNOMINATABLE or token[0] == 0x3A:
                        raise ProtocolError("Connection nominates a header the proxy sets")
                    (nominated := nominated or set()).add(token)
        elif kind == _F_XFF:
            xff = value if xff is None else xff + b"," + value
        elif kind == _F_XFP:
            xfp = value if xfp is None else xfp + b"," + value
        elif kind == _F_REQUEST_ID:
            request_id = value if request_id is None else request_id + b"," + value
        elif kind == _F_EXPECT:
            expect = value.lower() == b"100-continue"
        else:  # upgrade
            upgrade = value
    if connection_tokens > MAX_CONNECTION_TOKENS:
        raise ProtocolError("too many Connection tokens")
    version = line.version
    if hosts > 1 or (hosts == 0 and version == b"1.1"):
        raise ProtocolError("a request needs exactly one Host" if version == b"1.1" else "more than one Host")
    out = RequestHead()
    out.authority = authority = absolute_authority if absolute_authority is not None else (host or b"")
    parsed = parse_authority(authority)
    if parsed is None or (host is not None and absolute_authority is not None and parse_authority(host) is None):
        raise ProtocolError("invalid authority")
    out.host, out.port = parsed
    out.nominated = frozenset(nominated) if nominated else _NO_NAMES
    out.chunked = codings is not None and _chunked(codings, length, version)
    out.content_length = -1 if length is None else length
    out.keep_alive = not close and version == b"1.1"
    out.expect_continue = expect and version == b"1.1"
    out.upgrade = upgrade if upgrade_token else None
    out.underscore = underscore
    out.xff = xff
    out.xfp = xfp
    out.request_id = request_id
    return out


def _content_length(value: bytes) -> int:
    if not value.isdigit() or not value.isascii():
        raise ProtocolError("invalid Content-Length")
    digits = value.lstrip(b"0")
    if len(digits) > 19 or int(digits or b"0") > MAX_CONTENT_LENGTH:
        raise ProtocolError("Content-Length too large")
    return int(digits or b"0")


def _chunked(codings: list[bytes], length: int | None, version: bytes) -> bool:
    """The Transfer-Encoding rules (True: a chunked body), in Envoy's order."""
    if version != b"1.1":
        raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
    if length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding")
    if codings != [b"chunked"]:
        raise ProtocolError("unsupported Transfer-Encoding (only chunked is)", 501)
    return True


# ---------------------------------------------------------------------------------------------------------
# The byte stream: heads, bodies, trailers
# ---------------------------------------------------------------------------------------------------------

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _DONE = range(7)


class RequestFramer:
    """Cuts a client's byte stream into heads and body events; see the module comment.

    next_head() → the head bytes (request line to the empty line that ends it), NEED_DATA or CLOSED;
    start_body(content_length, chunked) after the head was accepted; next_body_event() → Data, END_OF_MESSAGE
    or NEED_DATA; next_cycle() once the exchange is over, to read the next head.

    The buffer is the bytes object a receive brought while one receive holds everything (the usual request: no
    copy in), and a bytearray once pieces accumulate. Waiting for a line (a head, a chunk-size line, a trailer)
    scans only the bytes that arrived since the last look (`scanned`), so a head sent one byte at a time costs
    linear time, not quadratic."""

    __slots__ = ("buffer", "max_head_bytes", "state", "remaining", "eof", "trailers", "trailer_bytes", "started", "scanned", "line_checked")

    def __init__(self, max_head_bytes: int):
        self.buffer: bytes | bytearray = b""
        self.max_head_bytes = max_head_bytes
        self.state = _HEAD
        self.remaining = 0
        self.eof = False
        self.trailers: list[tuple[bytes, bytes]] = []
        self.trailer_bytes = 0
        self.started = False  # a byte of the current request (an empty line included) has arrived
        self.scanned = 0  # bytes of the buffer already looked at for the line being waited for
        self.line_checked = False  # the pending head's request line was judged already

    def receive_data(self, data: bytes) -> None:
        if data:
            buf = self.buffer
            if not buf:
                self.buffer = data
            elif type(buf) is bytes:
                self.buffer = bytearray(buf) + data
            else:
                buf += data
            if self.state == _HEAD:
                self.started = True
        else:
            self.eof = True

    def _consume(self, n: int) -> None:
        buf = self.buffer
        if type(buf) is bytes:
            self.buffer = buf[n:]
        else:
            del buf[:n]
        self.scanned = 0

    @property
    def in_head(self) -> bool:
        return self.state == _HEAD and self.started

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def next_head(self):
        buf = self.buffer
        if not buf:  # between requests, the usual case when a keep-alive connection asks
            return CLOSED if self.eof else NEED_DATA
        if buf.startswith(b"\r\n"):  # empty lines before a request line are skipped (RFC 9112 §2.2)
            skip = 2
            while buf.startswith(b"\r\n", skip):
                skip += 2
            self._consume(skip)
            buf = self.buffer
        scanned = self.scanned
        end = buf.find(b"\r\n\r\n", scanned - 3 if scanned > 3 else 0)
        if end < 0:
            return self._head_incomplete(buf, scanned)
        end += 4
        if end > self.max_head_bytes:
            raise self._too_large()
        if end == len(buf):  # the usual case: the receive brought exactly one head
            head = bytes(buf)
            self.buffer = b""
            self.scanned = 0
        else:
            head = bytes(buf[:end])
            self._consume(end)
        self.line_checked = False
        return head

    def _head_incomplete(self, buf, scanned: int):
        if len(buf) > self.max_head_bytes:
            raise self._too_large()
        # What is wrong already is refused now, without waiting for the rest of the head, in the order
        # check_head_bytes judges a whole head: the request line once it is whole, then bytes it may not hold.
        if not self.line_checked and b"\n" in buf:
            check_request_line(bytes(buf[: _first_line_end(buf)]))
            self.line_checked = True
        start = scanned - 1 if scanned else 0
        if buf.count(b"\n", scanned) != buf.count(b"\r\n", start):
            raise ProtocolError("bare CR or LF in the request head")
        if _HEAD_CONTROL.search(buf, scanned) is not None:
            raise ProtocolError("control character in the request head")
        self.scanned = len(buf)
        if self.eof:
            if not buf and self.state == _HEAD:
                return CLOSED
            raise IncompleteMessage("connection closed in the middle of a request head")
        return NEED_DATA

    def _too_large(self) -> ProtocolError:
        line_end = self.buffer.find(b"\r\n", 0, self.max_head_bytes + 2)
        if line_end < 0 and self.buffer.find(b"\n", 0, self.max_head_bytes + 2) < 0:
            return ProtocolError("request line too long", 414)
        return ProtocolError("request head too large", 431)

    def start_body(self, content_length: int, chunked: bool) -> None:
        if self.trailers:
            self.trailers = []
        self.trailer_bytes = 0
        if chunked:
            self.state = _CHUNK_SIZE
        elif content_length > 0:
            self.state = _LENGTH
            self.remaining = content_length
        else:
            self.state = _DONE

    def next_cycle(self) -> None:
        self.state = _HEAD
        self.started = bool(self.buffer)

    def take_rest(self) -> bytes:
        """The bytes after the current message (an upgraded connection's first bytes of the new protocol)."""
        data = bytes(self.buffer)
        self.buffer = b""
        return data

    def next_body_event(self):
        state = self.state
        if state == _DONE:
            return END_OF_MESSAGE
        if state == _LENGTH:
            return self._take_data(_DONE)
        return self._next_chunked()

    def _take_data(self, then: int):
        """Body bytes of the Content-Length or the chunk being read, up to what remains of it."""
        buf = self.buffer
        if not buf:
            return self._need_more()
        remaining = self.remaining
        if len(buf) <= remaining:
            data = bytes(buf)
            self.buffer = b""
        else:
            data = bytes(buf[:remaining])
            self._consume(remaining)
        self.remaining = remaining = remaining - len(data)
        if remaining == 0:
            self.state = then
        return Data(data)

    def _need_more(self):
        if self.eof:
            raise IncompleteMessage("connection closed in the middle of a request body")
        return NEED_DATA

    def _line(self, limit: int, what: str) -> bytes | None:
        """The next CRLF-terminated line of the buffer (without the CRLF), or None while it is incomplete; a line
        longer than `limit`, or a bare CR or LF, is refused."""
        buf = self.buffer
        scanned = self.scanned
        end = buf.find(b"\r\n", scanned - 1 if scanned else 0)
        if end < 0 or end > limit:
            if len(buf) > limit:
                raise ProtocolError(f"{what} too long", 431 if what == "trailer section" else 400)
            lf = buf.find(b"\n", scanned)
            cr = buf.find(b"\r", scanned)
            if lf >= 0 or (0 <= cr < len(buf) - 1):
                raise ProtocolError(f"bare CR or LF in the {what}")
            self.scanned = len(buf)
            return None
        line = bytes(buf[:end])
        if b"\n" in line or b"\r" in line:
            raise ProtocolError(f"bare CR or LF in the {what}")
        self._consume(end + 2)
        return line

    def _next_chunked(self):
        while True:
            state = self.state
            if state == _CHUNK_DATA:
                return self._take_data(_CHUNK_CRLF)
            if state == _CHUNK_SIZE:
                line = self._line(MAX_CHUNK_LINE_BYTES, "chunk size line")
                if line is None:
                    return self._need_more()
                self.remaining = parse_chunk_size(line)
                self.state = _CHUNK_DATA if self.remaining else _TRAILERS
            elif state == _CHUNK_CRLF:
                buf = self.buffer
                if len(buf) < 2:
                    if buf and buf[0] != 0x0D:
                        raise ProtocolError("chunk data not followed by CRLF")
                    return self._need_more()
                if buf[0] != 0x0D or buf[1] != 0x0A:
                    raise ProtocolError("chunk data not followed by CRLF")
                self._consume(2)
                self.state = _CHUNK_SIZE
            elif state == _TRAILERS:
                line = self._line(self.max_head_bytes - self.trailer_bytes, "trailer section")
                if line is None:
                    return self._need_more()
                self.trailer_bytes += len(line) + 2
                if not line:
                    self.state = _DONE
                    return END_OF_MESSAGE
                self.trailers.append(parse_trailer_line(line + b"\r\n"))
                if len(self.trailers) > MAX_HEADERS:
                    raise ProtocolError("too many trailer fields", 431)
            else:
                raise AssertionError(state)


def parse_chunk_size(line: bytes) -> int:
    """chunk-size [ chunk-ext ] (without the CRLF) → the size; ProtocolError when malformed or over 2^63−1."""
    i = 0
    n = len(line)
    while i < n and line[i] in _HEX:
        i += 1
    if i == 0:
        raise ProtocolError("invalid chunk size")
    digits = line[:i].lstrip(b"0")
    if len(digits) > 16 or int(digits or b"0", 16) > MAX_CONTENT_LENGTH:
        raise ProtocolError("chunk size too large")
    if i < n and _CHUNK_EXTENSIONS.fullmatch(line, i) is None:
        raise ProtocolError("invalid chunk extension")
    return int(digits or b"0", 16)


def parse_trailer_line(line: bytes) -> tuple[bytes, bytes]:
    """One trailer field line (with its CRLF), checked as a header field line is."""
    if _HEAD_CONTROL.search(line) is not None or line[0] in b" \t" or line.count(b"\r") != 1:
        raise ProtocolError("invalid trailer field")
    match = FIELD_LINE.fullmatch(line)
    if match is None:
        raise ProtocolError("invalid trailer field")
    return match.group(1).lower(), match.group(2)
