"""Drives a server codec of workers/http/codec.py over a byte string the way the proxy does, and records what it saw.

    outcome = drive(FastServer, b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n", chunking="bytes")
    outcome.requests   # [(method, target, version, headers, body, trailers), ...]
    outcome.status     # None when every request was accepted, else the status the codec asked for

Rules:
- chunking "whole" feeds everything at once, "bytes" one byte per receive_data (every split point), "halves"
  splits once in the middle; then EOF.
- Each complete request is answered with an empty 200 before the next cycle starts (as the proxy does), so
  pipelined requests are read in order; a request the codec will not let the connection keep (Connection: close,
  HTTP/1.0) ends the run after its answer, as does a CONNECT (answered 404 with a close, as the proxy does).
- A ProtocolError ends the run with its status; IncompleteMessage (EOF inside a message) is status 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.http.codec import CLOSED, END_OF_MESSAGE, NEED_DATA, Data, IncompleteMessage, ProtocolError, Request

MAX_HEAD_BYTES = 60 * 1024


@dataclass
class Outcome:
    requests: list = field(default_factory=list)
    status: int | None = None


def _pieces(data: bytes, chunking: str) -> list[bytes]:
    if chunking == "whole":
        return [data]
    if chunking == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    if chunking == "halves":
        return [data[: len(data) // 2], data[len(data) // 2 :]]
    raise ValueError(chunking)


def drive(codec_class, data: bytes, chunking: str = "whole", max_head_bytes: int = MAX_HEAD_BYTES) -> Outcome:
    codec = codec_class(max_head_bytes)
    out = Outcome()
    current = None  # [method, target, version, headers, body bytearray]
    pieces = [p for p in _pieces(data, chunking) if p] + [b""]  # b"" is EOF
    try:
        for piece in pieces:
            codec.receive_data(piece)
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    break
                if event is CLOSED:
                    return out
                if type(event) is Request:
                    current = [event.method, event.target, event.http_version, list(event.headers), bytearray()]
                elif type(event) is Data:
                    current[4] += event.data
                elif event is END_OF_MESSAGE:
                    out.requests.append((*current[:4], bytes(current[4]), list(codec.trailers)))
                    if current[0] == b"CONNECT":  # the proxy answers 404 and closes (no tunnel at a gateway)
                        codec.send_response(404, b"Not Found", [(b"content-length", b"0")], close=True)
                        codec.send_end()
                        return out
                    current = None
                    codec.send_response(200, b"OK", [(b"content-length", b"0")])
                    codec.send_end()
                    if not codec.start_next_cycle():
                        return out
                else:
                    raise AssertionError(event)
    except IncompleteMessage:
        out.status = 0
    except ProtocolError as exc:
        out.status = exc.status_hint
    return out
