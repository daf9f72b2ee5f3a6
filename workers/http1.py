# HTTP/1.1 codecs of the proxy, behind one small sans-IO interface with two implementations:
#   "h11"        h11 on both sides — the reference engine, and the default.
#   "httptools"  the accelerated codec: llhttp (httptools) parses client requests, a lean parser written here
#                reads upstream responses, and both sides serialise heads with one bytes join.
# The proxy only sees this module's events and methods, so both codecs run the same proxy code and the same
# test suite (`--http-codec h11|httptools`, as uvicorn offers `--http h11|httptools`).
#
# Rules every codec keeps:
# - Events: Request / Response / InformationalResponse heads (headers as [(lowercase name, value)]), Data,
#   END_OF_MESSAGE, NEED_DATA (feed more bytes), CLOSED (the peer closed at a message boundary). Malformed
#   input raises ProtocolError with the status a server should answer (400, 414, 431, 501, 505).
# - Server side: the request stream is framed by workers/http1_framing.py for both engines — where a head ends,
#   the raw head checks, the header rules (Host, Content-Length, Transfer-Encoding), the body (Content-Length or
#   chunked, extensions, trailers kept apart) and pipelining — so both give the same verdict on the same bytes;
#   the engine only tokenises the head that module cut out and checked (h11, or llhttp). Each Request carries
#   the RequestHead read for it. Responses are framed by the codec: Content-Length when the head has one, else
#   chunked for HTTP/1.1 clients, else close-delimited; no body for HEAD, 1xx, 204 and 304; `connection: close`
#   added whenever the connection will close. HTTP/1.0 clients get no keep-alive.
# - Client side: requests are sent as HTTP/1.1 with the framing headers the proxy computed; a response is
#   framed per RFC 9112 §6.3 (HEAD, 1xx, 204, 304 have no body; chunked; Content-Length; else read until
#   close). Conflicting framing is a ProtocolError.
# - A connection is reusable only when both directions finished their message cleanly, neither side asked to
#   close, and no byte beyond the message is waiting (a pooled upstream connection with unread bytes is never
#   handed to the next request).
# - Protocol upgrades (WebSocket): the server side hands back what the client sent after its upgrade request
#   once the proxy answered 101 (`send_switching`, `take_switched_data`); the client side returns the
#   upstream's 101 as an InformationalResponse and then its leftover bytes. From there the proxy splices
#   bytes; the codecs are done with the connection. An upgrade request answered with anything but 101 closes
#   the connection after the response.
from __future__ import annotations

import http
import re

import h11

from workers.http1_framing import (
    CLOSED,
    END_OF_MESSAGE,
    NEED_DATA,
    Data,
    IncompleteMessage,
    ProtocolError,
    RequestFramer,
    RequestHead,
    RequestLine,
    check_fields,
    check_head_bytes,
    check_request_line,
    tokenize_fields,
)
from workers.paths import split_target

try:  # the accelerated codec is optional: `pip install edge[fast]`
    import httptools
except ImportError:  # pragma: no cover - exercised only where httptools is absent
    httptools = None

CODECS = ("h11", "httptools")


class Request:
    __slots__ = ("method", "target", "headers", "http_version", "head")

    def __init__(self, method: bytes, target: bytes, headers, http_version: bytes, head: RequestHead | None = None):
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.head = head  # what workers/http1_framing.check_fields read from the fields


class Response:
    __slots__ = ("status_code", "reason", "headers", "http_version")

    def __init__(self, status_code: int, reason: bytes, headers, http_version: bytes = b"1.1"):
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.http_version = http_version


class InformationalResponse(Response):
    __slots__ = ()


def _status_line(status: int, reason: bytes) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def _join_headers(headers) -> bytes:
    """The header lines of a head, each ending in CRLF (one join per line, one for the block)."""
    if not headers:
        return b""
    return b"\r\n".join(map(_FIELD_JOIN, headers)) + b"\r\n"


_FIELD_JOIN = b": ".join


def _has_token(headers, name: bytes, token: bytes) -> bool:
    for n, v in headers:
        if n == name:
            for part in v.split(b","):
                if part.strip().lower() == token:
                    return True
    return False


# ---------------------------------------------------------------------------------------------------------
# h11: the reference codec
# ---------------------------------------------------------------------------------------------------------


_IDLE, _BODY, _DONE = 0, 1, 2  # the request being read (their) / the response being written (ours)
_OWS = frozenset(b" \t")


class _ServerCodec:
    """What both server codecs share: the framing of workers/http1_framing.py, the exchange states, 100-continue
    and keep-alive. Subclasses tokenise a checked head (`_tokenize`) and write responses."""

    __slots__ = ("framer", "max_head_bytes", "their", "ours", "line", "head_facts", "continue_over", "keep_alive", "error")
    # Whether check_head_bytes' byte-level checks (bare CR/LF, control bytes, obs-fold) run before the engine:
    # h11 accepts some of those bytes, llhttp refuses them all itself.
    RAW_CHECKS = True

    def __init__(self, max_head_bytes: int):
        self.framer = RequestFramer(max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.their = _IDLE
        self.ours = _IDLE
        self.line: RequestLine | None = None
        self.head_facts: RequestHead | None = None
        self.continue_over = False  # a 100-continue request's wait is over: body bytes came, or the 100 went
        self.keep_alive = True
        self.error: ProtocolError | None = None  # once the input was refused, every later call says so again

    def receive_data(self, data: bytes) -> None:
        self.framer.receive_data(data)

    def next_event(self):
        if self.error is not None:
            raise self.error
        try:
            their = self.their
            if their == _BODY:
                event = self.framer.next_body_event()
                if event is END_OF_MESSAGE:
                    self.their = _DONE
                elif event is not NEED_DATA:
                    self.continue_over = True
                return event
            if their == _DONE:
                return END_OF_MESSAGE  # the message is over; the next one waits for start_next_cycle
            head = self.framer.next_head()
            if type(head) is not bytes:
                return head  # NEED_DATA or CLOSED
            return self._accept_head(head)
        except ProtocolError as exc:
            self.error = exc
            self.keep_alive = False
            raise

    def _accept_head(self, head: bytes) -> Request:
        if self.RAW_CHECKS:
            line = check_head_bytes(head)
        else:  # llhttp refuses the same bytes itself, with the same 400 (the differential test holds it to that)
            line = check_request_line(head[: head.find(b"\r\n")])
        target = line.target
        absolute = split_target(target)[0] if target[0] != 0x2F else None
        try:
            request, fields = self._tokenize(head, line)
        except ProtocolError:
            # The engine refused the head. The verdict is the one h11's path gives: the byte-level checks first,
            # then edge's header rules; the engine's own 400 only when neither has a word to say.
            if not self.RAW_CHECKS:
                check_head_bytes(head)
            check_fields(line, tokenize_fields(head, head.find(b"\r\n") + 2), absolute)
            raise
        facts = check_fields(line, fields, absolute)
        request.head = self.head_facts = facts
        self.line = line
        self.framer.start_body(facts.content_length, facts.chunked)
        self.their = _BODY if facts.chunked or facts.content_length > 0 else _DONE
        self.continue_over = False
        self.keep_alive = facts.keep_alive
        return request

    def _tokenize(self, head: bytes, line: RequestLine):  # -> (Request, fields for check_fields)
        raise NotImplementedError

    @property
    def trailers(self) -> list:
        """The trailer fields of the last chunked request body (kept apart; never forwarded)."""
        return self.framer.trailers

    @property
    def has_buffered_data(self) -> bool:
        """A request head has started (an empty line included): the request headers timeout runs."""
        return self.framer.in_head

    @property
    def client_is_waiting_for_100_continue(self) -> bool:
        facts = self.head_facts
        return facts is not None and facts.expect_continue and not self.continue_over and self.their == _BODY and self.ours == _IDLE and not self.framer.buffer

    @property
    def request_body_pending(self) -> bool:
        return self.their == _BODY

    @property
    def reusable(self) -> bool:
        return self.their == _DONE and self.ours == _DONE and self.keep_alive

    @property
    def will_close(self) -> bool:
        return not self.keep_alive

    def take_switched_data(self) -> bytes:
        return self.framer.take_rest()

    def start_next_cycle(self) -> bool:
        if not self.reusable:
            return False
        self.their = _IDLE
        self.ours = _IDLE
        self.head_facts = None
        self.framer.next_cycle()
        return True

    def _response_keep_alive(self, headers, close: bool) -> bool:
        return self.keep_alive and not close and not _has_token(headers, b"connection", b"close")


class H11Server(_ServerCodec):
    """The server side on h11: a fresh h11 connection per request validates each checked head (h11's own head
    rules) and writes the response; the fields come from edge's own tokeniser, since h11 normalises some of them
    (a Content-Length list, duplicate lengths, a coding's case) before anyone could see the original."""

    __slots__ = ("conn",)

    def __init__(self, max_head_bytes: int):
        super().__init__(max_head_bytes)
        self.conn: h11.Connection | None = None

    def _tokenize(self, head: bytes, line: RequestLine):
        line_end = head.find(b"\r\n")
        fields = tokenize_fields(head, line_end + 2)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes + 4)
        # The request line as h11 writes it (one SP between the parts), then the field lines as they came.
        conn.receive_data(b"%s %s HTTP/%s\r\n" % (line.method, line.target, line.version) + head[line_end + 2 :])
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(str(exc), 400) from None
        if type(event) is not h11.Request:
            raise ProtocolError("h11 did not read a request from the head", 400)
        self.conn = conn
        # h11 validated the head; the fields are edge's own reading of it, as llhttp gives them (h11 rewrites
        # some values, such as a Transfer-Encoding's case, which nothing downstream should depend on).
        return Request(line.method, line.target, fields, line.version), fields

    def send_informational(self, status: int) -> bytes:
        self.continue_over = True
        return self.conn.send(h11.InformationalResponse(status_code=status, headers=[]))

    def send_switching(self, headers) -> bytes:
        """The 101 that ends HTTP on this connection."""
        self.ours = _DONE
        self.keep_alive = False
        try:
            if self.conn.their_state is h11.SEND_BODY:
                self.conn.next_event()  # h11's EndOfMessage of the body-less upgrade request, so that a 101 may follow
            return self.conn.send(h11.InformationalResponse(status_code=101, headers=headers))
        except (h11.LocalProtocolError, h11.RemoteProtocolError) as exc:
            raise ProtocolError(str(exc), 502) from None

    def send_response(self, status: int, reason: bytes, headers, close: bool = False) -> bytes:
        self.keep_alive = keep_alive = self._response_keep_alive(headers, close)
        if not keep_alive:
            headers = list(headers)
            headers.append((b"connection", b"close"))
        self.ours = _BODY
        try:
            return self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        except h11.LocalProtocolError as exc:  # an upstream head h11 will not write
            raise ProtocolError(str(exc), 502) from None

    def send_data(self, data: bytes) -> bytes:
        try:
            return self.conn.send(h11.Data(data=data))
        except h11.LocalProtocolError as exc:  # more body than the Content-Length said
            raise ProtocolError(str(exc), 502) from None

    def send_end(self) -> bytes:
        try:
            data = self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # less body than the Content-Length said
            raise ProtocolError(str(exc), 502) from None
        self.ours = _DONE
        if self.conn.our_state is h11.MUST_CLOSE:
            self.keep_alive = False  # a close-delimited body
        return data


class H11Client:
    """The client (upstream) side on h11."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.CLIENT)

    def send_request(self, method: bytes, target: bytes, headers) -> bytes:
        try:
            return self.conn.send(h11.Request(method=method, target=target, headers=headers))
        except h11.LocalProtocolError as exc:
            raise ProtocolError(str(exc)) from None

    def send_data(self, data: bytes) -> bytes:
        return self.conn.send(h11.Data(data=data))

    def send_end(self) -> bytes:
        return self.conn.send(h11.EndOfMessage())

    def receive_data(self, data: bytes) -> None:
        self.conn.receive_data(data)

    def next_event(self):
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolError(str(exc), 502) from None
        t = type(event)
        if t is h11.Data:
            return Data(event.data)
        if t is h11.EndOfMessage:
            return END_OF_MESSAGE
        if t is h11.Response:
            return Response(event.status_code, event.reason, event.headers, event.http_version)
        if t is h11.InformationalResponse:
            return InformationalResponse(event.status_code, event.reason, event.headers, event.http_version)
        if event is h11.NEED_DATA:
            return NEED_DATA
        return CLOSED

    @property
    def has_buffered_data(self) -> bool:
        return bool(self.conn.trailing_data[0])

    @property
    def awaiting_response(self) -> bool:
        return self.conn.their_state is h11.SEND_RESPONSE

    def take_switched_data(self) -> bytes:
        return bytes(self.conn.trailing_data[0])

    @property
    def reusable(self) -> bool:
        c = self.conn
        return c.our_state is h11.DONE and c.their_state is h11.DONE and not c.trailing_data[0]

    def start_next_cycle(self) -> None:
        self.conn.start_next_cycle()


# ---------------------------------------------------------------------------------------------------------
# httptools: the accelerated codec
# ---------------------------------------------------------------------------------------------------------

class FastServer(_ServerCodec):
    """The server side on llhttp (httptools): a fresh parser tokenises each checked head (about 0.2 µs to create;
    it is never given a body); responses are serialised with one join."""

    __slots__ = ("response_chunked", "response_has_body", "fields")
    RAW_CHECKS = False

    def __init__(self, max_head_bytes: int):
        if httptools is None:
            raise RuntimeError("the httptools codec needs the httptools package (pip install 'edge[fast]')")
        super().__init__(max_head_bytes)
        self.response_chunked = False
        self.response_has_body = True
        self.fields: list = []

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp's only callback here: a field line (OWS around the value removed, as h11 does; llhttp drops
        the leading OWS itself)."""
        if value and value[-1] in _OWS:
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
        return _status_line(status, REASONS.get(status, b"")) + b"\r\n"

    def send_switching(self, headers) -> bytes:
        self.ours = _DONE
        self.keep_alive = False
        return _status_line(101, b"Switching Protocols") + _join_headers(headers) + b"\r\n"

    def send_response(self, status: int, reason: bytes, headers, close: bool = False) -> bytes:
        keep_alive = self.keep_alive and not close
        has_length = close_sent = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            elif name == b"connection" and _has_token(((name, value),), b"connection", b"close"):
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
        self.ours = _BODY
        return _status_line(status, reason) + _join_headers(headers) + extra + b"\r\n"

    def send_data(self, data: bytes) -> bytes:
        if not self.response_has_body or not data:
            return b""
        if self.response_chunked:
            return b"%x\r\n" % len(data) + data + b"\r\n"
        return data

    def send_end(self) -> bytes:
        self.ours = _DONE
        if self.response_chunked and self.response_has_body:
            return b"0\r\n\r\n"
        return b""


_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?")
# A header line at the start of a line: token ":" OWS value OWS, up to the CRLF (or the end of the head).
# Values hold no CR, LF or control byte: the whole head was checked for those first.
_FIELD_LINE = re.compile(rb"(?m)^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\r\n]*[^\r\n \t])?)[ \t]*(?:\r\n|\Z)")
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[\t ]*(?:;[^\r\n]*)?")
MAX_RESPONSE_HEAD_BYTES = 64 * 1024

# Client-side reading states.
_R_HEAD, _R_LENGTH, _R_CHUNK_SIZE, _R_CHUNK_DATA, _R_CHUNK_CRLF, _R_TRAILERS, _R_UNTIL_CLOSE, _R_END, _R_DONE = range(9)


class FastClient:
    """The upstream side: requests serialised with one join; responses read by a lean strict parser."""

    __slots__ = ("buffer", "state", "remaining", "method", "keep_alive", "sent_all", "eof", "awaiting_response", "request_chunked", "upgrade_requested")

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

    def send_request(self, method: bytes, target: bytes, headers) -> bytes:
        """The head; its framing is the proxy's headers' (Content-Length, or Transfer-Encoding: chunked)."""
        self.method = method
        self.sent_all = False
        self.awaiting_response = True
        self.request_chunked = _has_token(headers, b"transfer-encoding", b"chunked")
        self.upgrade_requested = _has_token(headers, b"connection", b"upgrade")
        return b"%s %s HTTP/1.1\r\n" % (method, target) + _join_headers(headers) + b"\r\n"

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
                        if codings[-1] != b"chunked" or chunked:
                            raise ProtocolError("upstream sent an unsupported Transfer-Encoding", 502)
                        chunked = True
                    else:  # connection
                        tokens = {t.strip().lower() for t in value.split(b",")}
                        if b"close" in tokens:
                            keep_alive = False
                        elif b"keep-alive" in tokens and version == b"1.0":
                            keep_alive = True
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


REASONS = {int(s): s.phrase.encode() for s in http.HTTPStatus}


def codec_classes(name: str):
    """(server codec, client codec) classes for `--http-codec`."""
    if name == "h11":
        return H11Server, H11Client
    if name == "httptools":
        if httptools is None:
            raise RuntimeError("--http-codec httptools needs the httptools package (pip install 'edge[fast]')")
        return FastServer, FastClient
    raise ValueError(f"unknown HTTP codec {name!r}; choose one of {', '.join(CODECS)}")
