# HTTP/2 at the frame level against the real `edge run` (one worker, one gateway for the module): the preface, the
# SETTINGS exchange, stream states, flow control, and one test per flood with the GOAWAY/RST_STREAM code edge
# answers, the worker's PID unchanged and another connection still served, and the worker's memory bounded where
# the flood is about memory. Raw frames by hyperframe (tests/security/h2_client.py): no h2spec package exists here.
from __future__ import annotations

import hashlib
import socket
import time

import pytest

from tests.e2e.harness import EdgeProcess, SampleBackends
from tests.security.h2_client import (
    ENHANCE_YOUR_CALM,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    H2Client,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
    rss_kib,
)

pytestmark = pytest.mark.e2e

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http2, protocol: HTTP2}
    hosts: ["*"]
"""
MEMORY_BOUND_KIB = 40 * 1024  # a flood may not grow the worker by more than this


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("h2floods")
    with SampleBackends(workdir / "backends", http=["v1"]) as backends:
        routes = (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app}\nspec:\n"
            '  hosts: ["app.example.com"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app.local}}]\n---\n'
            + backends.service_entry("app.local")
        )
        args = ["--stream-idle-timeout", "2", "--http2-max-active-streams-per-worker", "150"]
        with EdgeProcess(workdir / "edge", {"gw.yaml": GATEWAY, "routes.yaml": routes}, workers=1, extra_args=args) as edge:
            edge.pids = edge.worker_pids()
            yield edge


def port(gw) -> int:
    return gw.port(80)


def still_serving(gw) -> None:
    """Another connection is served by the same worker process."""
    assert gw.worker_pids() == gw.pids
    with H2Client(port(gw)) as client:
        client.request(1, "/headers")
        headers, _, reset = client.response(1)
        assert reset is None and headers[":status"] == "200"


# ---------------------------------------------------------------------------------------------- the preface


def test_settings_exchange_advertises_the_edge_limits(gw):
    with H2Client(port(gw)) as client:
        frames = client.frames_until(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
        settings = next(f for f in frames if isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
        assert settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 65536
        assert settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 60 * 1024
        update = next(f for f in frames if isinstance(f, WindowUpdateFrame))
        assert update.stream_id == 0 and update.window_increment == 1024 * 1024 - 65535


def test_preface_byte_by_byte_then_a_request(gw):
    with H2Client(port(gw), preface=False) as client:
        for byte in PREFACE:
            client.sock.sendall(bytes([byte]))
            time.sleep(0.002)
        client.send(SettingsFrame(0))
        client.request(1, "/headers")
        headers, body, reset = client.response(1)
        assert reset is None and headers[":status"] == "200" and b'"app.example.com"' in body


def test_a_preface_that_goes_wrong_is_http1(gw):
    with socket.create_connection(("127.0.0.1", port(gw)), timeout=10) as sock:
        sock.sendall(PREFACE[:18] + b"XX\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 4") or answer.startswith(b"HTTP/1.1 5")


def test_a_first_frame_other_than_settings_is_a_protocol_error(gw):
    with H2Client(port(gw), preface=False) as client:
        client.send(PREFACE, PingFrame(0))
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------- streams


def test_streams_multiplexed_on_one_connection(gw):
    with H2Client(port(gw)) as client:
        ids = list(range(1, 41, 2))
        client.send(*(client.headers_frame(i, f"/delay/0.2?n={i}") for i in ids))
        ended: dict[int, int] = {}
        statuses: dict[int, str] = {}
        while len(ended) < len(ids):
            frame = client.next_frame()
            assert frame is not None, f"ended {sorted(ended)}"
            if isinstance(frame, HeadersFrame):
                statuses[frame.stream_id] = dict(frame.fields)[":status"]
            if frame.stream_id in ids and "END_STREAM" in frame.flags:
                ended[frame.stream_id] = 1
        assert set(statuses.values()) == {"200"} and set(statuses) == set(ids)


def test_over_max_concurrent_streams_is_refused_stream_not_a_dead_connection(gw):
    with H2Client(port(gw)) as client:
        ids = list(range(1, 205, 2))  # 102 streams: two over the limit
        client.send(*(client.headers_frame(i, "/delay/0.5") for i in ids))
        resets = {}
        ends = set()
        deadline = time.monotonic() + 15
        while len(resets) + len(ends) < len(ids) and time.monotonic() < deadline:
            frame = client.next_frame()
            assert frame is not None
            if isinstance(frame, RstStreamFrame):
                resets[frame.stream_id] = frame.error_code
            elif frame.stream_id and "END_STREAM" in frame.flags:
                ends.add(frame.stream_id)
        assert resets == {ids[-2]: REFUSED_STREAM, ids[-1]: REFUSED_STREAM}
        assert len(ends) == 100
        client.request(301, "/headers")
        assert client.response(301)[0][":status"] == "200"


def test_worker_stream_limit_refuses_streams_across_connections(gw):
    with H2Client(port(gw)) as first, H2Client(port(gw)) as second:
        first.send(*(first.headers_frame(i, "/delay/1") for i in range(1, 201, 2)))  # 100 streams
        time.sleep(0.3)
        second.send(*(second.headers_frame(i, "/delay/1") for i in range(1, 201, 2)))
        refused = [f for f in second.frames_until(lambda f: False, timeout_s=3) if isinstance(f, RstStreamFrame)]
        assert len(refused) == 50 and {f.error_code for f in refused} == {REFUSED_STREAM}  # 150 per worker


@pytest.mark.parametrize("authority, path", [("bad authority", "/headers"), ("app.example.com", "/a b"), ("app.example.com", "nope")])
def test_malformed_requests_are_stream_errors(gw, authority, path):
    with H2Client(port(gw)) as client:
        client.request(1, path, authority=authority)
        assert client.response(1)[2] == PROTOCOL_ERROR
        client.request(3, "/headers")
        assert client.response(3)[0][":status"] == "200"


# h2 refuses these as connection errors, as Envoy's default (override_stream_error_on_invalid_http_message off):
# connection-specific fields (RFC 9113 §8.2.2), te other than trailers, uppercase names, a host naming another
# authority than :authority (§8.3.1).
@pytest.mark.parametrize("extra", [[("connection", "keep-alive")], [("te", "gzip")], [("X-Upper", "1")], [("host", "other.example.com")],
                                   [("x-crlf", "a\r\nb")], [("x-space", " a")], [("a b", "1")]])
def test_connection_specific_and_uppercase_fields_are_protocol_errors(gw, extra):
    with H2Client(port(gw)) as client:
        client.request(1, "/headers", extra=extra)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR


def test_malformed_trailers_are_a_protocol_error(gw):
    with H2Client(port(gw)) as client:
        client.request(1, "/sha256", method="POST", end_stream=False)
        trailers = HeadersFrame(1)
        trailers.data = client.encoder.encode([(":path", "/again"), ("x", "y")])
        trailers.flags.add("END_HEADERS")
        trailers.flags.add("END_STREAM")
        client.send(trailers)
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR
    with H2Client(port(gw)) as client:  # well-formed trailers end the request as usual
        client.request(1, "/sha256", method="POST", end_stream=False)
        trailers = HeadersFrame(1)
        trailers.data = client.encoder.encode([("x-checksum", "y")])
        trailers.flags.add("END_HEADERS")
        trailers.flags.add("END_STREAM")
        client.send(trailers)
        headers, _, reset = client.response(1)
        assert reset is None and headers[":status"] == "200"


def test_an_even_stream_id_from_a_client_is_a_protocol_error(gw):
    with H2Client(port(gw)) as client:
        client.request(2, "/headers")
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------- flow control


def test_response_data_waits_for_the_clients_window(gw):
    with H2Client(port(gw), settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000}) as client:
        client.request(1, "/bytes/5000")
        got = b""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            frame = client.next_frame(timeout_s=max(0.0, deadline - time.monotonic()))
            if isinstance(frame, DataFrame):
                got += frame.data
        assert len(got) == 1000  # the stream's window, not a byte more
        update = WindowUpdateFrame(1)
        update.window_increment = 4000
        client.send(update)
        headers, rest, reset = client.response(1)
        body = got + rest
        assert reset is None and body == bytes(i % 251 for i in range(5000))


def test_request_body_larger_than_the_windows_flows_as_it_is_forwarded(gw):
    payload = bytes(range(256)) * 1024 * 2  # 512 KiB: eight stream windows
    with H2Client(port(gw)) as client:
        client.request(1, "/sha256", method="POST", end_stream=False)
        window = {0: 65535, 1: 65536}
        sent = 0
        while sent < len(payload):
            room = min(window[0], window[1], 16384, len(payload) - sent)
            if room <= 0:
                frame = client.next_frame()
                assert frame is not None, f"no window after {sent} bytes"
                if isinstance(frame, WindowUpdateFrame):
                    window[frame.stream_id] = window.get(frame.stream_id, 0) + frame.window_increment
                continue
            frame = DataFrame(1)
            frame.data = payload[sent : sent + room]
            if sent + room == len(payload):
                frame.flags.add("END_STREAM")
            client.send(frame)
            sent += room
            window[0] -= room
            window[1] -= room
        headers, body, reset = client.response(1)
        assert reset is None and headers[":status"] == "200"
        assert hashlib.sha256(payload).hexdigest().encode() in body


def test_zero_window_stall_ends_at_the_stream_idle_timeout(gw):
    # CVE-2019-9517: the client never opens its window; the stream is reset after --stream-idle-timeout (2 s).
    with H2Client(port(gw), settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}) as client:
        client.request(1, "/bytes/100000")
        frames = client.frames_until(lambda f: isinstance(f, RstStreamFrame), timeout_s=8)
        assert isinstance(frames[-1], RstStreamFrame) and frames[-1].stream_id == 1
        assert not any(isinstance(f, DataFrame) and f.data for f in frames)
    still_serving(gw)


# ---------------------------------------------------------------------------------------------- floods


def flood(gw, frame_bytes: bytes, count: int, *, settings: dict | None = None, prefix: tuple = ()) -> int | None:
    """Send `count` copies of a frame without reading (small receive buffer), then read to EOF: the last GOAWAY's
    code. The worker's memory growth is checked against MEMORY_BOUND_KIB."""
    pid = gw.pids[0]
    before = rss_kib(pid)
    with H2Client(port(gw), settings=settings, rcvbuf=4096) as client:
        if prefix:
            client.send(*prefix)
        chunk = frame_bytes * 500
        sent = 0
        client.sock.settimeout(3)
        try:
            while sent < count:
                client.sock.sendall(chunk)
                sent += 500
        except OSError:
            pass  # the gateway stopped reading (it is closing) or reset
        grown = rss_kib(pid) - before
        goaway = client.last_goaway_before_eof()
    assert grown < MEMORY_BOUND_KIB, f"worker grew by {grown} KiB"
    still_serving(gw)
    return goaway.error_code if goaway is not None else None


def test_ping_flood_is_enhance_your_calm(gw):  # CVE-2019-9512
    assert flood(gw, PingFrame(0).serialize(), 200_000) == ENHANCE_YOUR_CALM


def test_settings_flood_is_enhance_your_calm(gw):  # CVE-2019-9515
    assert flood(gw, SettingsFrame(0).serialize(), 200_000) == ENHANCE_YOUR_CALM


def test_reset_flood_is_enhance_your_calm(gw):  # CVE-2019-9514: each malformed request makes edge send RST_STREAM
    with H2Client(port(gw)) as encoder:
        frames = b"".join(encoder.headers_frame(i, "/", authority="bad authority").serialize() for i in range(1, 40_001, 2))
    assert flood(gw, frames, 500) == ENHANCE_YOUR_CALM


def test_empty_frames_flood_is_enhance_your_calm(gw):  # CVE-2019-9518
    with H2Client(port(gw)) as client:
        client.request(1, "/sha256", method="POST", end_stream=False)
        client.send(DataFrame(1), DataFrame(1))
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    still_serving(gw)


def test_priority_flood_is_enhance_your_calm(gw):  # CVE-2019-9513
    frame = PriorityFrame(1)
    frame.depends_on = 0
    with H2Client(port(gw)) as client:
        client.send(*([frame] * 150))
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    still_serving(gw)


def test_window_update_flood_is_enhance_your_calm(gw):  # CVE-2019-9513 / 9511's many tiny updates
    frame = WindowUpdateFrame(0)
    frame.window_increment = 1
    with H2Client(port(gw)) as client:
        client.send(*([frame] * 20))
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    still_serving(gw)


def test_continuation_flood_is_bounded_by_the_header_list_limit(gw):
    with H2Client(port(gw)) as client:
        client.send(client.headers_frame(1, "/", end_headers=False))
        part = ContinuationFrame(1)
        part.data = b"\x00" * 16384
        try:
            client.send(*([part] * 8))  # 128 KiB of header block: over 60 KiB
        except OSError:
            pass
        goaway = client.goaway()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM
    still_serving(gw)


def test_rapid_reset_is_enhance_your_calm(gw):  # CVE-2023-44487
    with H2Client(port(gw)) as client:
        batch = []
        for stream_id in range(1, 1401, 2):  # 700 streams, each reset at once
            rst = RstStreamFrame(stream_id)
            rst.error_code = 0x8  # CANCEL
            batch += [client.headers_frame(stream_id, "/delay/2"), rst]
        try:
            client.send(*batch)
        except OSError:
            pass
        assert client.last_goaway_before_eof().error_code == ENHANCE_YOUR_CALM
    still_serving(gw)


# ---------------------------------------------------------------------------------------------- data dribble


def test_request_data_dribble_across_many_streams(gw):  # CVE-2019-9511, the client's side
    # 40 streams each sending its body as 1-byte DATA frames, interleaved: every byte is forwarded, memory stays
    # bounded, and another connection is served in the middle of it.
    pid = gw.pids[0]
    before = rss_kib(pid)
    ids = list(range(1, 81, 2))
    payload = bytes(range(97, 97 + 60))
    with H2Client(port(gw)) as client:
        client.send(*(client.headers_frame(i, "/sha256", method="POST", end_stream=False) for i in ids))
        for n, byte in enumerate(payload):
            frames = []
            for i in ids:
                frame = DataFrame(i)
                frame.data = bytes([byte])
                if n == len(payload) - 1:
                    frame.flags.add("END_STREAM")
                frames.append(frame)
            client.send(*frames)
            if n == len(payload) // 2:
                still_serving(gw)
        answers = {}
        while len(answers) < len(ids):
            frame = client.next_frame()
            assert frame is not None, f"answered {sorted(answers)}"
            if isinstance(frame, DataFrame) and frame.data:
                answers[frame.stream_id] = answers.get(frame.stream_id, b"") + frame.data
            elif isinstance(frame, RstStreamFrame):
                raise AssertionError(f"stream {frame.stream_id} reset ({frame.error_code})")
        digest = hashlib.sha256(payload).hexdigest().encode()
        assert all(digest in body for body in answers.values())
    assert rss_kib(pid) - before < MEMORY_BOUND_KIB


def test_response_data_dribble_by_one_byte_windows(gw):  # CVE-2019-9511, the server's side
    # A client that opens 40 streams with a 1-byte window and then grants one byte at a time makes edge send
    # DATA frames of a byte or two: never more than granted, the outbound budget bounds what is queued, memory
    # stays bounded, and the worker keeps serving another connection meanwhile.
    pid = gw.pids[0]
    before = rss_kib(pid)
    ids = list(range(1, 81, 2))
    with H2Client(port(gw), settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1}) as client:
        client.send(*(client.headers_frame(i, "/bytes/100000") for i in ids))
        got: dict[int, int] = {}
        for round_ in range(30):
            updates = []
            for i in ids:
                update = WindowUpdateFrame(i)
                update.window_increment = 1
                updates.append(update)
            conn = WindowUpdateFrame(0)
            conn.window_increment = len(ids)
            client.send(*updates, conn)
            deadline = time.monotonic() + 5
            while sum(got.values()) < len(ids) * (round_ + 2) and time.monotonic() < deadline:
                frame = client.next_frame(timeout_s=1)
                if isinstance(frame, DataFrame):
                    got[frame.stream_id] = got.get(frame.stream_id, 0) + len(frame.data)
                elif isinstance(frame, (GoAwayFrame, RstStreamFrame)):
                    raise AssertionError(f"{type(frame).__name__} {frame.error_code}")
            if round_ == 15:
                still_serving(gw)
        assert got == {i: 31 for i in ids}  # the initial byte and one per update, never more than granted
    assert rss_kib(pid) - before < MEMORY_BOUND_KIB
    still_serving(gw)
