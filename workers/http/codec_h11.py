# The h11 engine of the HTTP/1 codec (workers/http/codec.py): the reference, selected by `--http-codec h11`.
#
# Rules:
# - The server side gets heads already cut out and checked by workers/http/framing.py; a fresh h11.Connection
#   per request validates each head with h11's own rules and writes the response. Fields come from edge's own
#   tokeniser (h11 normalises some of them before anyone could see the original).
# - The client side is h11 as it is; a connection with bytes beyond the response is never reusable.
from __future__ import annotations

import h11

from workers.http.codec import BODY, DONE, MAX_RESPONSE_HEAD_BYTES, InformationalResponse, Request, Response, ServerCodec
from workers.http.framing import CLOSED, END_OF_MESSAGE, NEED_DATA, Data, ProtocolError, RequestLine, tokenize_fields

class H11Server(ServerCodec):
    """The server side on h11: a fresh h11 connection per request validates each checked head (h11's own head
    rules) and writes the response; the fields come from edge's own tokeniser, since h11 normalises some of them
    (a Content-Length list, duplicate lengths, a coding's case) before anyone could see the original."""

    __slots__ = ("conn", "response_has_body")

    def __init__(self, max_head_bytes: int):
        super().__init__(max_head_bytes)
        self.conn: h11.Connection | None = None
        self.response_has_body = True

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
        self.ours = DONE
        self.keep_alive = False
        try:
            if self.conn.their_state is h11.SEND_BODY:
                self.conn.next_event()  # h11's EndOfMessage of the body-less upgrade request, so that a 101 may follow
            return self.conn.send(h11.InformationalResponse(status_code=101, headers=headers))
        except (h11.LocalProtocolError, h11.RemoteProtocolError) as exc:
            raise ProtocolError(str(exc), 502) from None

    def send_response(self, status: int, reason: bytes, headers, close: bool = False) -> bytes:
        # A response to HEAD, a 1xx, 204 or 304 has no body (RFC 9112 §6.3): body bytes given for it are dropped,
        # as FastServer does (a local reply keeps its Content-Length for HEAD, as Envoy's does).
        self.response_has_body = not (self.line.method == b"HEAD" or status < 200 or status in (204, 304))
        self.keep_alive = keep_alive = self._response_keep_alive(headers, close)
        if not keep_alive:
            headers = list(headers)
            headers.append((b"connection", b"close"))
        self.ours = BODY
        try:
            return self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
        except h11.LocalProtocolError as exc:  # an upstream head h11 will not write
            raise ProtocolError(str(exc), 502) from None

    def send_data(self, data: bytes) -> bytes:
        if not self.response_has_body:
            return b""
        try:
            return self.conn.send(h11.Data(data=data))
        except h11.LocalProtocolError as exc:  # more body than the Content-Length said
            raise ProtocolError(str(exc), 502) from None

    def send_end(self) -> bytes:
        try:
            data = self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # less body than the Content-Length said
            raise ProtocolError(str(exc), 502) from None
        self.ours = DONE
        if self.conn.our_state is h11.MUST_CLOSE:
            self.keep_alive = False  # a close-delimited body
        return data


class H11Client:
    """The client (upstream) side on h11."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)

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
            if _conflicting_framing(event.headers):
                # h11 would let Transfer-Encoding win; Envoy refuses the response (a smuggling risk; RFC 9112 §6.3
                # lets a recipient reject it), as FastClient does.
                raise ProtocolError("upstream response with both Content-Length and Transfer-Encoding", 502)
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
        # Nothing unread, and the upstream did not close (a read-until-close response ends with its EOF).
        return c.our_state is h11.DONE and c.their_state is h11.DONE and not c.trailing_data[0] and not c.trailing_data[1]

    def start_next_cycle(self) -> None:
        self.conn.start_next_cycle()


def _conflicting_framing(headers) -> bool:
    length = chunked = False
    for name, _ in headers:
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            chunked = True
    return length and chunked
