# The HTTP/1.1 codec seam of the proxy: events, heads, and what both server engines share. Two engines implement
# it (workers/http/engines.py picks one by name):
#   "h11"        workers/http/codec_h11.py — h11 on both sides, the reference engine, and the default.
#   "httptools"  workers/http/codec_fast.py — llhttp parses client requests, a lean parser reads upstream
#                responses, and both sides serialise heads with one bytes join.
# The proxy only sees this module's events and methods, so both codecs run the same proxy code and the same
# test suite (`--http-codec h11|httptools`, as uvicorn offers `--http h11|httptools`).
#
# Rules every codec keeps:
# - Events: Request / Response / InformationalResponse heads (headers as [(lowercase name, value)]), Data,
#   END_OF_MESSAGE, NEED_DATA (feed more bytes), CLOSED (the peer closed at a message boundary). Malformed
#   input raises ProtocolError with the status a server should answer (400, 414, 431, 501, 505).
# - Server side: the request stream is framed by workers/http/framing.py for both engines — where a head ends,
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

from workers.http.framing import (
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

MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # an upstream response head, for both client engines (Envoy: 60 KiB)

# The events every codec yields are defined with the framing, which both engines share, and re-exported here as
# the seam (__all__ below).


class Request:
    __slots__ = ("method", "target", "headers", "http_version", "head")

    def __init__(self, method: bytes, target: bytes, headers, http_version: bytes, head: RequestHead | None = None):
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.head = head  # what workers/http/framing.check_fields read from the fields


class Response:
    __slots__ = ("status_code", "reason", "headers", "http_version")

    def __init__(self, status_code: int, reason: bytes, headers, http_version: bytes = b"1.1"):
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.http_version = http_version


class InformationalResponse(Response):
    __slots__ = ()


def status_line(status: int, reason: bytes) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


def join_headers(headers) -> bytes:
    """The header lines of a head, each ending in CRLF (one join per line, one for the block)."""
    if not headers:
        return b""
    return b"\r\n".join(map(FIELD_JOIN, headers)) + b"\r\n"


FIELD_JOIN = b": ".join


def has_token(headers, name: bytes, token: bytes) -> bool:
    for n, v in headers:
        if n == name:
            for part in v.split(b","):
                if part.strip().lower() == token:
                    return True
    return False


# ---------------------------------------------------------------------------------------------------------
# h11: the reference codec
# ---------------------------------------------------------------------------------------------------------


IDLE, BODY, DONE = 0, 1, 2  # the request being read (their) / the response being written (ours)
OWS = frozenset(b" \t")


class ServerCodec:
    """What both server codecs share: the framing of workers/http/framing.py, the exchange states, 100-continue
    and keep-alive. Subclasses tokenise a checked head (`_tokenize`) and write responses."""

    __slots__ = ("framer", "max_head_bytes", "their", "ours", "line", "head_facts", "continue_over", "keep_alive", "error")
    # Whether check_head_bytes' byte-level checks (bare CR/LF, control bytes, obs-fold) run before the engine:
    # h11 accepts some of those bytes, llhttp refuses them all itself.
    RAW_CHECKS = True

    def __init__(self, max_head_bytes: int):
        self.framer = RequestFramer(max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.their = IDLE
        self.ours = IDLE
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
            if their == BODY:
                event = self.framer.next_body_event()
                if event is END_OF_MESSAGE:
                    self.their = DONE
                elif event is not NEED_DATA:
                    self.continue_over = True
                return event
            if their == DONE:
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
        self.their = BODY if facts.chunked or facts.content_length > 0 else DONE
        self.continue_over = False
        # An upgrade request answered with anything but 101 closes the connection after the response: what the
        # client sends behind it may be the new protocol's bytes, not a request.
        self.keep_alive = facts.keep_alive and facts.upgrade is None
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
        return facts is not None and facts.expect_continue and not self.continue_over and self.their == BODY and self.ours == IDLE and not self.framer.buffer

    @property
    def request_body_pending(self) -> bool:
        return self.their == BODY

    @property
    def reusable(self) -> bool:
        return self.their == DONE and self.ours == DONE and self.keep_alive

    @property
    def will_close(self) -> bool:
        return not self.keep_alive

    def take_switched_data(self) -> bytes:
        return self.framer.take_rest()

    def start_next_cycle(self) -> bool:
        if not self.reusable:
            return False
        self.their = IDLE
        self.ours = IDLE
        self.head_facts = None
        self.framer.next_cycle()
        return True

    def _response_keep_alive(self, headers, close: bool) -> bool:
        return self.keep_alive and not close and not has_token(headers, b"connection", b"close")


REASONS = {int(s): s.phrase.encode() for s in http.HTTPStatus}


__all__ = [
    "CLOSED", "END_OF_MESSAGE", "NEED_DATA", "Data", "IncompleteMessage", "ProtocolError",
    "MAX_RESPONSE_HEAD_BYTES", "REASONS", "InformationalResponse", "Request", "Response", "ServerCodec",
    "BODY", "DONE", "IDLE", "OWS", "has_token", "join_headers", "status_line",
]  # fmt: skip
