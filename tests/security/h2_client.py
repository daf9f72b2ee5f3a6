# A raw HTTP/2 client for the frame-level tests: hyperframe frames over a plain socket, HPACK by hpack, no state
# machine of its own (it sends whatever a test asks, legal or not) — what h2spec would do, with edge's cases.
from __future__ import annotations

import socket
import time

from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
NO_ERROR = 0x0

__all__ = [
    "ContinuationFrame", "DataFrame", "GoAwayFrame", "HeadersFrame", "PingFrame", "PriorityFrame", "RstStreamFrame",
    "SettingsFrame", "WindowUpdateFrame", "H2Client", "PREFACE", "ENHANCE_YOUR_CALM", "PROTOCOL_ERROR",
    "REFUSED_STREAM", "NO_ERROR", "rss_kib",
]  # fmt: skip


class H2Client:
    def __init__(self, port: int, *, settings: dict | None = None, rcvbuf: int | None = None, preface: bool = True, timeout_s: float = 10.0):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout_s)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.buffer = b""
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.eof = False
        if preface:
            frame = SettingsFrame(0)
            frame.settings = dict(settings or {})
            sock.sendall(PREFACE + frame.serialize())

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ sending

    def send(self, *frames) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def headers_frame(self, stream_id: int, path: str = "/", *, method: str = "GET", authority: str = "app.example.com",
                      end_stream: bool = True, extra: list | None = None, end_headers: bool = True) -> HeadersFrame:
        fields = [(":method", method), (":scheme", "http"), (":path", path), (":authority", authority), *(extra or [])]
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(fields)
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    def request(self, stream_id: int, path: str = "/", **kw) -> None:
        self.send(self.headers_frame(stream_id, path, **kw))

    def ack_settings(self) -> None:
        frame = SettingsFrame(0)
        frame.flags.add("ACK")
        self.send(frame)

    # ------------------------------------------------------------------ reading

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(1 << 16)
        except (TimeoutError, socket.timeout):
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    def next_frame(self, timeout_s: float = 10.0):
        """The next frame (decoded: HEADERS carry .fields), or None at EOF/timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                    self.buffer = self.buffer[9 + length :]
                    if isinstance(frame, HeadersFrame):
                        frame.fields = self.decoder.decode(frame.data, raw=False)
                    return frame
            if self.eof or time.monotonic() >= deadline or not self._fill(deadline):
                return None

    def frames_until(self, predicate, timeout_s: float = 10.0) -> list:
        """Frames up to and including the first one `predicate` accepts (all of them at EOF/timeout)."""
        out = []
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return out
            out.append(frame)
            if predicate(frame):
                return out

    def goaway(self, timeout_s: float = 10.0) -> GoAwayFrame | None:
        frames = self.frames_until(lambda f: isinstance(f, GoAwayFrame), timeout_s)
        return frames[-1] if frames and isinstance(frames[-1], GoAwayFrame) else None

    def last_goaway_before_eof(self, timeout_s: float = 15.0) -> GoAwayFrame | None:
        """Read to EOF (a flood's answer sits behind what was queued before it); the last GOAWAY seen."""
        last = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                break
            if isinstance(frame, GoAwayFrame):
                last = frame
        return last

    def response(self, stream_id: int, timeout_s: float = 10.0) -> tuple[dict, bytes, int | None]:
        """(headers, body, RST code or None) of one stream, acknowledging nothing else."""
        headers: dict = {}
        body = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            frame = self.next_frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                break
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, HeadersFrame):
                headers.update(dict(frame.fields))
            elif isinstance(frame, DataFrame):
                body += frame.data
                if frame.data:
                    self.send(_window_update(0, len(frame.data)), _window_update(stream_id, len(frame.data)))
            elif isinstance(frame, RstStreamFrame):
                return headers, body, frame.error_code
            if "END_STREAM" in frame.flags:
                return headers, body, None
        raise AssertionError(f"stream {stream_id}: no end within {timeout_s} s (headers {headers}, {len(body)} bytes)")


def _window_update(stream_id: int, increment: int) -> WindowUpdateFrame:
    frame = WindowUpdateFrame(stream_id)
    frame.window_increment = increment
    return frame


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
