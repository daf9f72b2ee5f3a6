# The HTTP/2 limits and flood decisions (workers/http2/limits.py) as tables: frame headers in, verdicts out.
from __future__ import annotations

import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from workers.http2 import limits as lim

PREFACE = lim.PREFACE


@pytest.mark.parametrize(
    "data, verdict",
    [
        (PREFACE, lim.PREFACE_MATCH),
        (PREFACE + b"\x00\x00", lim.PREFACE_MATCH),
        (PREFACE[:1], lim.PREFACE_PARTIAL),
        (PREFACE[:23], lim.PREFACE_PARTIAL),
        (b"", lim.PREFACE_PARTIAL),
        (b"GET / HTTP/1.1\r\n", lim.PREFACE_NO),
        (b"PRI * HTTP/1.1\r\n", lim.PREFACE_NO),
        (PREFACE[:18] + b"XX\r\n\r\n", lim.PREFACE_NO),
    ],
)
def test_preface_verdict(data, verdict):
    assert lim.preface_verdict(data) == verdict


def settings() -> bytes:
    return SettingsFrame(0).serialize()


def headers(stream_id: int, *, end_stream=True, end_headers=True, data=b"\x82") -> bytes:
    frame = HeadersFrame(stream_id, data=data)
    if end_stream:
        frame.flags.add("END_STREAM")
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def window_update(stream_id=0) -> bytes:
    frame = WindowUpdateFrame(stream_id)
    frame.window_increment = 1
    return frame.serialize()


def priority(stream_id=1) -> bytes:
    return PriorityFrame(stream_id).serialize()


def data(stream_id=1, payload=b"", end=False) -> bytes:
    frame = DataFrame(stream_id, data=payload)
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def continuation(stream_id=1, size=16384, end=False) -> bytes:
    frame = ContinuationFrame(stream_id, data=b"\x00" * size)
    if end:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def guard_verdict(*frames: bytes, split: int = 0, max_block: int = 60 * 1024) -> str | None:
    """Feed the preface and frames, whole or `split` bytes at a time; the first violation."""
    stream = PREFACE + b"".join(frames)
    guard = lim.InboundGuard(max_block)
    step = split or len(stream)
    for i in range(0, len(stream), step):
        violation = guard.feed(stream[i : i + step])
        if violation is not None:
            return violation
    return None


CASES = [
    ("a request", [settings(), headers(1)], None),
    ("a body and its end", [settings(), headers(1, end_stream=False), data(1, b"x"), data(1, end=True)], None),
    ("the first frame is not SETTINGS", [PingFrame(0).serialize()], lim.NO_SETTINGS_FIRST),
    ("a SETTINGS ACK first", [SettingsFrame(0, flags=["ACK"]).serialize()], lim.NO_SETTINGS_FIRST),
    ("one empty DATA frame", [settings(), headers(1, end_stream=False), data(1)], None),
    ("two empty DATA frames (CVE-2019-9518)", [settings(), headers(1, end_stream=False), data(1), data(1)], lim.EMPTY_FRAMES),
    ("empty frames apart", [settings(), headers(1, end_stream=False), data(1), data(1, b"x"), data(1)], None),
    ("an empty DATA with END_STREAM is not empty", [settings(), headers(1, end_stream=False), data(1), data(1, end=True)], None),
    ("empty HEADERS then empty CONTINUATION", [settings(), headers(1, end_headers=False, end_stream=False, data=b""), continuation(1, 0, True)], lim.EMPTY_FRAMES),
    ("100 PRIORITY frames with no stream", [settings()] + [priority()] * 100, None),
    ("101 PRIORITY frames with no stream (CVE-2019-9513)", [settings()] + [priority()] * 101, lim.PRIORITY_FLOOD),
    ("200 PRIORITY frames with one stream", [settings(), headers(1)] + [priority()] * 200, None),
    ("5 WINDOW_UPDATEs and no stream", [settings()] + [window_update()] * 5, None),
    ("6 WINDOW_UPDATEs and no stream (CVE-2019-9513)", [settings()] + [window_update()] * 6, lim.WINDOW_UPDATE_FLOOD),
    ("7 WINDOW_UPDATEs and one stream", [settings(), headers(1)] + [window_update()] * 7, None),
    ("a 60 KiB header block", [settings(), headers(1, end_headers=False), continuation(1, 30 * 1024), continuation(1, 30 * 1024 - 1, True)], None),
    ("a header block over 60 KiB (CONTINUATION flood)", [settings(), headers(1, end_headers=False)] + [continuation(1)] * 4, lim.HEADER_BLOCK_TOO_LARGE),
    ("header blocks do not add up across requests", [settings()] + [headers(i, data=b"\x00" * 40_000) for i in (1, 3, 5)], None),
    ("RST_STREAM alone", [settings(), headers(1), RstStreamFrame(1).serialize()], None),
]


@pytest.mark.parametrize("frames, expected", [(f, e) for _, f, e in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("split", [0, 1, 7])
def test_inbound_guard(frames, expected, split):
    assert guard_verdict(*frames, split=split) == expected


def test_window_update_allowance_grows_with_data_frames_sent():
    guard = lim.InboundGuard(60 * 1024)
    assert guard.feed(PREFACE + settings() + headers(1)) is None
    guard.data_frames_sent = 3  # 5 + 2 × (1 + 10 × 3) = 67
    assert guard.feed(window_update() * 67) is None
    assert guard.feed(window_update()) == lim.WINDOW_UPDATE_FLOOD


def test_count_frames():
    frames = settings() + PingFrame(0).serialize() + RstStreamFrame(1).serialize() + data(1, b"abc") + headers(3) + window_update()
    assert lim.count_frames(frames) == (6, 3, 1)
    assert lim.count_frames(b"") == (0, 0, 0)


@pytest.mark.parametrize(
    "adds, expected",
    [
        ([(1000, 1000)], None),
        ([(1001, 1001)], lim.OUTBOUND_CONTROL_FLOOD),
        ([(10_000, 0)], None),
        ([(10_001, 0)], lim.OUTBOUND_FLOOD),
        ([(600, 600), (-600, -600), (600, 600)], None),  # released in between: written
        ([(600, 600), (500, 500)], lim.OUTBOUND_CONTROL_FLOOD),
    ],
)
def test_outbound_budget(adds, expected):
    budget = lim.OutboundBudget()
    verdict = None
    for frames, control in adds:
        if frames < 0:
            budget.release(-frames, -control)
        else:
            verdict = budget.add(frames, control)
    assert verdict == expected


@pytest.mark.parametrize(
    "closes, expected",
    [
        # (count, reset by the client, lifetime in seconds)
        ([(499, True, 0.0)], None),  # under 500 streams: never
        ([(500, True, 0.0)], lim.RAPID_RESET),
        ([(250, False, 0.0), (250, True, 0.0)], None),  # exactly half: not more than half
        ([(249, False, 0.0), (251, True, 0.0)], lim.RAPID_RESET),
        ([(600, True, 1.5)], None),  # resets after a second are not premature
        ([(300, False, 5.0), (299, True, 0.1), (1, True, 0.1)], None),
    ],
)
def test_rapid_reset(closes, expected):
    guard = lim.ResetGuard()
    verdict = None
    for count, reset, lifetime in closes:
        for _ in range(count):
            verdict = guard.stream_closed(100.0, 100.0 + lifetime, reset) or verdict
    assert verdict == expected


def test_stream_budget():
    budget = lim.StreamBudget()
    assert budget.take(2) and budget.take(2) and not budget.take(2)
    budget.release()
    assert budget.take(2)
