# HTTP/2 limits and flood defences of the downstream side, pure: byte counts, frame headers and times in, verdicts
# out. workers/http2/connection.py feeds it and carries the verdicts out (GOAWAY, RST_STREAM, close).
#
# Rules (the h2 library parses and validates frames; these are the defences it does not have):
# - The preface: an HTTP/2 client with prior knowledge starts with the 24 bytes of PREFACE (RFC 9113 §3.4); any
#   other first bytes are HTTP/1.1. The verdict waits while the bytes so far are a prefix of it (a client may send
#   it byte by byte).
# - Settings edge advertises are Envoy's edge best practice ("Configuring Envoy as an edge proxy"): 100 concurrent
#   streams, a 64 KiB initial stream window, a 1 MiB connection window; the header list limit is the HTTP/1
#   head limit (max_request_headers_kb, 60 KiB). A stream beyond the concurrent limit is refused alone
#   (RST_STREAM REFUSED_STREAM), as is one beyond the worker's active-stream limit.
# - InboundGuard reads the frame headers of the inbound byte stream (before h2 does) and keeps Envoy's inbound
#   constraints (source/common/http/http2/protocol_constraints.cc, defaults from Http2ProtocolOptions):
#     empty-payload frames (CVE-2019-9518): more than MAX_CONSECUTIVE_EMPTY_FRAMES consecutive DATA, HEADERS or
#       CONTINUATION frames with no payload and no END_STREAM;
#     PRIORITY floods (CVE-2019-9513): more than MAX_PRIORITY_FRAMES_PER_STREAM × (1 + streams opened);
#     WINDOW_UPDATE floods (CVE-2019-9513): more than 5 + 2 × (streams opened + MAX_WINDOW_UPDATES_PER_DATA_FRAME ×
#       DATA frames sent);
#     CONTINUATION floods: a header block (HEADERS + CONTINUATION payloads) longer than the header list limit,
#       judged on the frame headers, before h2 buffers the block (its own bound is 64 frames of up to 16 KiB).
# - OutboundBudget counts the frames queued for the client and not yet written to its socket (Envoy's
#   max_outbound_frames 10,000 and max_outbound_control_frames 1,000 for PING, SETTINGS and RST_STREAM): a client
#   that makes us answer (ping, settings, reset floods: CVE-2019-9512/9515/9514) without reading is cut off.
# - ResetGuard is Envoy's premature-reset check (CVE-2023-44487, Rapid Reset): once RAPID_RESET_MIN_STREAMS
#   streams of a connection have closed, more than half of them reset by the client within
#   RAPID_RESET_LIFETIME_S of opening ends the connection.
# - Every flood ends the connection with GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §7: the peer "might be generating
#   excessive load"); a client whose first frame is not SETTINGS gets PROTOCOL_ERROR (§3.4; h2 lets it pass). Waiting for flow-control window is bounded by the stream idle timeout (CVE-2019-9511/9517:
#   a zero window or a dribble cannot hold a stream longer than a stalled HTTP/1 response).
from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PREFACE_MATCH, PREFACE_PARTIAL, PREFACE_NO = 0, 1, 2

# Envoy's edge best practice (docs: configuration/best_practices/edge), the defaults of `edge run`'s flags.
DEFAULT_MAX_CONCURRENT_STREAMS = 100
DEFAULT_INITIAL_STREAM_WINDOW = 64 * 1024
DEFAULT_INITIAL_CONNECTION_WINDOW = 1024 * 1024
DEFAULT_MAX_ACTIVE_STREAMS_PER_WORKER = 10_000  # edge's own: at most max-connections-per-worker streams by default
MIN_WINDOW = 65_535  # RFC 9113's initial window; Envoy's lower bound for both windows
MAX_WINDOW = 2**31 - 1
HARD_STREAM_LIMIT = 2**31 - 1  # what h2 itself is told: edge refuses streams over the advertised limit itself

# Envoy's Http2ProtocolOptions defaults.
MAX_OUTBOUND_FRAMES = 10_000
MAX_OUTBOUND_CONTROL_FRAMES = 1_000
MAX_CONSECUTIVE_EMPTY_FRAMES = 1
MAX_PRIORITY_FRAMES_PER_STREAM = 100
MAX_WINDOW_UPDATES_PER_DATA_FRAME = 10
# Envoy's overload.premature_reset_total_stream_count and premature_reset_min_stream_lifetime_seconds.
RAPID_RESET_MIN_STREAMS = 500
RAPID_RESET_LIFETIME_S = 1.0

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4
FRAME_HEADER_BYTES = 9
_CONTROL_TYPES = frozenset({PING, SETTINGS, RST_STREAM})
_EMPTY_WATCHED = frozenset({DATA, HEADERS, CONTINUATION})

# Violations: the reason logged and the GOAWAY sent.
EMPTY_FRAMES = "inbound empty frames flood"
PRIORITY_FLOOD = "inbound PRIORITY frames flood"
WINDOW_UPDATE_FLOOD = "inbound WINDOW_UPDATE frames flood"
HEADER_BLOCK_TOO_LARGE = "header block larger than the header list limit (CONTINUATION flood)"
OUTBOUND_FLOOD = "outbound frames flood"
OUTBOUND_CONTROL_FLOOD = "outbound control frames flood"
RAPID_RESET = "too many streams reset by the client (rapid reset)"
NO_SETTINGS_FIRST = "the client's preface is not followed by SETTINGS"  # RFC 9113 §3.4: a PROTOCOL_ERROR, not a flood
PROTOCOL_ERROR = 0x1
ENHANCE_YOUR_CALM = 0xB
REFUSED_STREAM = 0x7


def goaway_code(violation: str) -> int:
    return PROTOCOL_ERROR if violation == NO_SETTINGS_FIRST else ENHANCE_YOUR_CALM


def preface_verdict(data: bytes) -> int:
    """Whether a connection's first bytes are HTTP/2's preface (MATCH), may still become it (PARTIAL), or are not."""
    if len(data) >= len(PREFACE):
        return PREFACE_MATCH if data.startswith(PREFACE) else PREFACE_NO
    return PREFACE_PARTIAL if PREFACE.startswith(data) else PREFACE_NO


class InboundGuard:
    """The inbound constraints of the module comment, over the frame headers of the client's bytes (its preface
    first). feed() returns a violation or None."""

    __slots__ = ("max_header_block", "_head", "_skip", "empty_run", "priority_frames", "window_updates", "streams_opened", "data_frames_sent", "_block", "_highest_stream", "_first")

    def __init__(self, max_header_block: int):
        self.max_header_block = max_header_block
        self._head = b""  # a frame header split across reads
        self._skip = len(PREFACE)  # bytes still to pass: the client's preface, then each frame's payload
        self.empty_run = 0
        self.priority_frames = 0
        self.window_updates = 0
        self.streams_opened = 0
        self.data_frames_sent = 0  # outbound DATA frames (the WINDOW_UPDATE allowance grows with them)
        self._block = -1  # bytes of the header block in progress (-1: none)
        self._highest_stream = 0
        self._first = True  # the next frame is the client's first

    def feed(self, data: bytes) -> str | None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
                continue
            need = FRAME_HEADER_BYTES - len(self._head)
            if end - pos < need:
                self._head += data[pos:]
                return None
            head = self._head + data[pos : pos + need] if self._head else data[pos : pos + need]
            self._head = b""
            pos += need
            length = int.from_bytes(head[0:3], "big")
            self._skip = length
            violation = self.frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, length)
            if violation is not None:
                return violation
        return None

    def frame(self, kind: int, flags: int, stream_id: int, length: int) -> str | None:
        """One inbound frame header."""
        if self._first:
            self._first = False
            if kind != SETTINGS or flags & 0x1:  # SETTINGS without ACK
                return NO_SETTINGS_FIRST
        if kind in _EMPTY_WATCHED:
            if length == 0 and not (kind != CONTINUATION and flags & FLAG_END_STREAM):
                self.empty_run += 1
                if self.empty_run > MAX_CONSECUTIVE_EMPTY_FRAMES:
                    return EMPTY_FRAMES
            else:
                self.empty_run = 0
        if kind == HEADERS:
            if stream_id > self._highest_stream:
                self._highest_stream = stream_id
                self.streams_opened += 1
            return self._block_part(length, flags, start=True)
        if kind == CONTINUATION:
            return self._block_part(length, flags, start=False)
        if kind == PRIORITY:
            self.priority_frames += 1
            if self.priority_frames > MAX_PRIORITY_FRAMES_PER_STREAM * (1 + self.streams_opened):
                return PRIORITY_FLOOD
        elif kind == WINDOW_UPDATE:
            self.window_updates += 1
            if self.window_updates > 5 + 2 * (self.streams_opened + MAX_WINDOW_UPDATES_PER_DATA_FRAME * self.data_frames_sent):
                return WINDOW_UPDATE_FLOOD
        return None

    def _block_part(self, length: int, flags: int, start: bool) -> str | None:
        self._block = length if start or self._block < 0 else self._block + length
        if self._block > self.max_header_block:
            return HEADER_BLOCK_TOO_LARGE
        if flags & FLAG_END_HEADERS:
            self._block = -1
        return None


def count_frames(data: bytes) -> tuple[int, int, int]:
    """(frames, control frames, DATA frames) in a run of whole serialized frames (what h2 queues to send)."""
    frames = control = data_frames = 0
    pos = 0
    end = len(data)
    while pos + FRAME_HEADER_BYTES <= end:
        kind = data[pos + 3]
        frames += 1
        if kind in _CONTROL_TYPES:
            control += 1
        elif kind == DATA:
            data_frames += 1
        pos += FRAME_HEADER_BYTES + int.from_bytes(data[pos : pos + 3], "big")
    return frames, control, data_frames


class OutboundBudget:
    """Frames queued for the client and not yet written: added when queued, released when the write finished."""

    __slots__ = ("frames", "control")

    def __init__(self) -> None:
        self.frames = 0
        self.control = 0

    def add(self, frames: int, control: int) -> str | None:
        self.frames += frames
        self.control += control
        if self.control > MAX_OUTBOUND_CONTROL_FRAMES:
            return OUTBOUND_CONTROL_FLOOD
        if self.frames > MAX_OUTBOUND_FRAMES:
            return OUTBOUND_FLOOD
        return None

    def release(self, frames: int, control: int) -> None:
        self.frames -= frames
        self.control -= control


class ResetGuard:
    """Envoy's premature-reset accounting for one connection (rules above)."""

    __slots__ = ("closed", "premature")

    def __init__(self) -> None:
        self.closed = 0
        self.premature = 0

    def stream_closed(self, opened_at: float, now: float, reset_by_client: bool) -> str | None:
        self.closed += 1
        if reset_by_client and now - opened_at < RAPID_RESET_LIFETIME_S:
            self.premature += 1
        if self.closed >= RAPID_RESET_MIN_STREAMS and self.premature * 2 > self.closed:
            return RAPID_RESET
        return None


class StreamBudget:
    """The worker's active HTTP/2 streams against its limit (all connections of the worker)."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0

    def take(self, limit: int) -> bool:
        if self.active >= limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1
