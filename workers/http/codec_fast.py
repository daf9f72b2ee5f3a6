# The accelerated engine of the HTTP/1 codec (workers/http/codec.py), selected by `--http-codec httptools`:
# llhttp (httptools) tokenises client request heads, a lean strict parser written here reads upstream
# responses, and both sides serialise heads with one bytes join.
#
# Rules:
# - Same events, same verdicts as the h11 engine (tests/workers/http/test_differential.py compares them).
# - The upstream response parser follows RFC 9112 §6.3: no body for HEAD, 1xx, 204, 304; chunked; Content-Length;
#   else until close. Conflicting or malformed framing is a ProtocolError (502); a response head is at most
#   MAX_RESPONSE_HEAD_BYTES.
# - Reading a response head is a pure function of its bytes (_read_head); a connection keeps its last reading, so
#   a head identical to the previous one on that connection (a backend answering alike, within the second of its
#   Date) costs one bytes comparison instead of ~4 µs of parsing (issue 13). The state it sets (HEAD, 101, body
#   framing) is applied per response from that reading; llhttp's response parser was measured for this and was no
#   faster: its Python callback per field costs more than the regex pass.
from __future__ import annotations

import re

from workers.http.codec import BODY, DONE, MAX_RESPONSE_HEAD_BYTES, OWS, REASONS, InformationalResponse, Request, Response, ServerCodec, has_token, join_headers, status_line
from workers.http.framing import CLOSED, END_OF_MESSAGE, NEED_DATA, Data, ProtocolError, RequestLine

try:  # the accelerated codec is optional where httptools cannot be installed
    import httptools
except ImportError:  # pragma: no cover - exercised only where httptools is absent
    httptools = None

class FastServer(ServerCodec):
    """The server side on llhttp (httptools): a fresh parser tokenises each checked head (about 0.2 µs to create;
    it is never given a body); responses are serialised with one join."""

    __slots__ = ("response_chunked", "response_has_body", "fields")
    RAW_CHECKS = False

    def __init__(self, max_head_bytes: int):
        if httptools is None:
            raise RuntimeError("the httptools codec needs the httptools package (pip install httptools)")
        super().__init__(max_head_bytes)
        self.response_chunked = False
        self.response_has_body = True
        self.fields: list = []

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp's only callback here: a field line (OWS around the value removed, as h11 does; llhttp drops
        the leading OWS itself)."""
        if value and value[-1] in OWS:
            value = value.rstrip(b" \t")
        self.fields.append((name.lower(), value))

    def _tokenize(self, head: bytes, line: RequestLine):
        self.fields = fields = []
        try:
            httptools.HttpRequestParser(self).feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # llhttp stops after the head of an upgrade request; the head is all it was given anyway
        except httptools.HttpParserError as exc:
            raise ProtocolError(str(exc), 400) from None
        return Request(line.method, line.target, fields, line.version), fields

    def send_informational(self, status: int) -> bytes:
        self.continue_over = True
        return status_line(status, REASONS.get(status, b"")) + b"\r\n"

    def send_switching(self, headers) -> bytes:
        self.ours = DONE
        self.keep_alive = False
        return status_line(101, b"Switching Protocols") + join_headers(headers) + b"\r\n"

    def send_response(self, status: int, reason: bytes, headers, close: bool = False) -> bytes:
        keep_alive = self.keep_alive and not close
        has_length = close_sent = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            elif name == b"connection" and has_token(((name, value),), b"connection", b"close"):
                keep_alive = False
                close_sent = True
        line = self.line
        no_body = line.method == b"HEAD" or status < 200 or status in (204, 304)
        self.response_has_body = not no_body
        self.response_chunked = False
        extra = b""
        if not no_body and not has_length:
            if line.version == b"1.1":
                self.response_chunked = True
                extra = b"transfer-encoding: chunked\r\n"
            else:
                keep_alive = False  # close-delimited body for an HTTP/1.0 client
        if not keep_alive and not close_sent:
            extra += b"connection: close\r\n"
        self.keep_alive = keep_alive
        self.ours = BODY
        return status_line(status, reason) + join_headers(headers) + extra + b"\r\n"

    def send_data(self, data: bytes) -> bytes:
        if not self.response_has_body or not data:
            return b""
        if self.response_chunked:
            return b"%x\r\n" % len(data) + data + b"\r\n"
        return data

    def send_end(self) -> bytes:
        self.ours = DONE
        if self.response_chunked and self.response_has_body:
            return b"0\r\n\r\n"
        return b""


_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?")
# A header line at the start of a line: token ":" OWS value OWS, up to the CRLF (or the end of the head).
# Values hold no CR, LF or control byte: the whole head was checked for those first.
_FIELD_LINE = re.compile(rb"(?m)^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\r\n]*[^\r\n \t])?)[ \t]*(?:\r\n|\Z)")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_CHUNK_SIZE = re.compile(rb"0*([0-9A-Fa-f]{1,16})[\t ]*(?:;[^\r\n]*)?")  # leading zeros are 1*HEXDIG too

# Client-side reading states.
_R_HEAD, _R_LENGTH, _R_CHUNK_SIZE, _R_CHUNK_DATA, _R_CHUNK_CRLF, _R_TRAILERS, _R_UNTIL_CLOSE, _R_END, _R_DONE = range(9)


class FastClient:
    """The upstream side: requests serialised with one join; responses read by a lean strict parser."""

    __slots__ = ("buffer", "state", "remaining", "method", "keep_alive", "sent_all", "eof", "awaiting_response", "request_chunked", "upgrade_requested", "last_head", "last_read")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.state = _R_HEAD
        self.remaining = 0
        self.method = b"GET"
        self.keep_alive = True
        self.sent_all = False
        self.eof = False
        self.awaiting_response = False
        self.request_chunked = False
        self.upgrade_requested = False
        self.last_head = b""  # the previous response head on this connection and its reading (_read_head)
        self.last_read: tuple | None = None

    def send_request(self, method: bytes, target: bytes, headers) -> bytes:
        """The head; its framing is the proxy's headers' (Content-Length, or Transfer-Encoding: chunked)."""
        self.method = method
        self.sent_all = False
        self.awaiting_response = True
        self.request_chunked = has_token(headers, b"transfer-encoding", b"chunked")
        self.upgrade_requested = has_token(headers, b"connection", b"upgrade")
        return b"%s %s HTTP/1.1\r\n" % (method, target) + join_headers(headers) + b"\r\n"

    def send_data(self, data: bytes) -> bytes:
        if self.request_chunked and data:
            return b"%x\r\n" % len(data) + data + b"\r\n"
        return data

    def send_end(self) -> bytes:
        self.sent_all = True
        return b"0\r\n\r\n" if self.request_chunked else b""

    def receive_data(self, data: bytes) -> None:
        if data:
            self.buffer += data
        else:
            self.eof = True

    @property
    def has_buffered_data(self) -> bool:
        return bool(self.buffer)

    def take_switched_data(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    @property
    def reusable(self) -> bool:
        return self.state == _R_DONE and self.sent_all and self.keep_alive and not self.buffer and not self.eof

    def start_next_cycle(self) -> None:
        self.state = _R_HEAD
        self.remaining = 0
        self.keep_alive = True
        self.sent_all = False

    def next_event(self):
        state = self.state
        buf = self.buffer
        if state == _R_HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_RESPONSE_HEAD_BYTES:
                    raise ProtocolError("upstream response head too large", 502)
                if self.eof:
                    if not buf:
                        return CLOSED
                    raise ProtocolError("upstream closed in the middle of a response head", 502)
                return NEED_DATA
            head = bytes(buf[:end])
            del buf[: end + 4]
            return self._parse_head(head)
        if state == _R_LENGTH:
            if not buf:
                if self.eof:
                    raise ProtocolError("upstream closed before the end of the body", 502)
                return NEED_DATA
            take = min(self.remaining, len(buf))
            data = bytes(buf[:take])
            del buf[:take]
            self.remaining -= take
            if self.remaining == 0:
                self.state = _R_END
            return Data(data)
        if state == _R_UNTIL_CLOSE:
            if buf:
                data = bytes(buf)
                buf.clear()
                return Data(data)
            if self.eof:
                self.state = _R_DONE
                self.keep_alive = False
                return END_OF_MESSAGE
            return NEED_DATA
        if state in (_R_CHUNK_SIZE, _R_CHUNK_DATA, _R_CHUNK_CRLF, _R_TRAILERS):
            return self._next_chunked()
        if state == _R_END:
            self.state = _R_DONE
            return END_OF_MESSAGE
        if state == _R_DONE:
            return CLOSED if self.eof else NEED_DATA
        raise AssertionError(state)

    def _parse_head(self, head: bytes):
        if head == self.last_head:  # the same bytes as the previous response here: the same reading
            read = self.last_read
        else:
            read = _read_head(head)
            self.last_head, self.last_read = head, read
        version, status, reason, fields, length, chunked, keep_alive = read
        headers = list(fields)  # the response's own list: callers may keep or change it
        if 100 <= status < 200:
            if status == 101:
                if not self.upgrade_requested:
                    raise ProtocolError("upstream switched protocols unasked", 502)
                self.state = _R_DONE
                self.keep_alive = False
                self.awaiting_response = False
            return InformationalResponse(status, reason, headers, version)
        if chunked and length is not None:
            raise ProtocolError("upstream response with both Content-Length and Transfer-Encoding", 502)
        self.keep_alive = keep_alive
        self.awaiting_response = False
        if self.method == b"HEAD" or status in (204, 304) or length == 0:
            self.state = _R_END
        elif chunked:
            self.state = _R_CHUNK_SIZE
        elif length is not None:
            self.state = _R_LENGTH
            self.remaining = length
        else:
            self.state = _R_UNTIL_CLOSE
            self.keep_alive = False
        return Response(status, reason, headers, version)

    def _next_chunked(self):
        buf = self.buffer
        while True:
            state = self.state
            if state == _R_CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ProtocolError("upstream sent an invalid chunk size line", 502)
                    return self._need_more("chunk size")
                m = _CHUNK_SIZE.fullmatch(bytes(buf[:end]))
                if m is None:
                    raise ProtocolError("upstream sent an invalid chunk size", 502)
                size = int(m.group(1), 16)
                del buf[: end + 2]
                if size == 0:
                    self.state = _R_TRAILERS
                    continue
                self.remaining = size
                self.state = _R_CHUNK_DATA
            elif state == _R_CHUNK_DATA:
                if not buf:
                    return self._need_more("chunk data")
                take = min(self.remaining, len(buf))
                data = bytes(buf[:take])
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _R_CHUNK_CRLF
                return Data(data)
            elif state == _R_CHUNK_CRLF:
                if len(buf) < 2:
                    return self._need_more("chunk end")
                if buf[:2] != b"\r\n":
                    raise ProtocolError("upstream sent a chunk without its CRLF", 502)
                del buf[:2]
                self.state = _R_CHUNK_SIZE
            else:  # trailers: skipped (not forwarded), up to the empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_RESPONSE_HEAD_BYTES:
                        raise ProtocolError("upstream trailers too large", 502)
                    return self._need_more("trailers")
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self.state = _R_DONE
                    return END_OF_MESSAGE

    def _need_more(self, what: str):
        if self.eof:
            raise ProtocolError(f"upstream closed in the middle of the {what}", 502)
        return NEED_DATA


def _read_head(head: bytes) -> tuple:
    """A response head's reading: (version, status, reason, fields, Content-Length or None, chunked, keep-alive),
    or ProtocolError (502). Pure: the same bytes always read the same."""
    line_end = head.find(b"\r\n")
    m = _STATUS_LINE.fullmatch(head if line_end < 0 else head[:line_end])
    if m is None:
        raise ProtocolError("upstream sent an invalid status line", 502)
    version = b"1." + m.group(1)
    status = int(m.group(2))
    reason = m.group(3) or b""
    headers = []
    length = None
    chunked = False
    keep_alive = version == b"1.1"
    if line_end >= 0:
        # Checks over the whole head in C (control bytes, lone CR or LF), then one split; a header name
        # must be a non-empty token, which also rejects obs-fold (a line starting with whitespace).
        crlf = head.count(b"\r\n")
        if _CONTROL_BYTES.search(head) is not None or head.count(b"\r") != crlf or head.count(b"\n") != crlf:
            raise ProtocolError("upstream sent a control character in its head", 502)
        # Every line must be one anchored field match (so a bad line cannot hide behind a later match).
        fields = _FIELD_LINE.findall(head, line_end + 2)
        if len(fields) != crlf:
            raise ProtocolError("upstream sent an invalid header line", 502)
        for name, value in fields:
            name = name.lower()
            headers.append((name, value))
            if name in _FRAMING_NAMES:
                if name == b"content-length":
                    for part in value.split(b","):
                        part = part.strip()
                        if not part.isdigit() or len(part) > 18:
                            raise ProtocolError("upstream sent an invalid Content-Length", 502)
                        if length is not None and int(part) != length:
                            raise ProtocolError("upstream sent differing Content-Lengths", 502)
                        length = int(part)
                elif name == b"transfer-encoding":
                    codings = [c.strip().lower() for c in value.split(b",")]
                    if codings != [b"chunked"] or chunked:  # only chunked, as H11Client (and the server side) take
                        raise ProtocolError("upstream sent an unsupported Transfer-Encoding", 502)
                    chunked = True
                else:  # connection
                    tokens = {t.strip().lower() for t in value.split(b",")}
                    if b"close" in tokens:
                        keep_alive = False
                    elif b"keep-alive" in tokens and version == b"1.0":
                        keep_alive = True
    return version, status, reason, tuple(headers), length, chunked, keep_alive
