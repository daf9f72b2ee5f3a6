# The stats segment (edge/stats_shm.py): the byte layout, one writer per slot, continuity across restarts,
# the bounded key space and the seqlocked status area.
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from edge.shm import SHM_DIR, remove_stale_segments
from edge.stats_shm import (
    DURATION_BUCKETS_MS,
    E_DURATION_BUCKETS,
    E_DURATION_SUM_US,
    E_REQUEST_BYTES_BUCKETS,
    E_REQUEST_BYTES_SUM,
    E_RESPONSE_BYTES_BUCKETS,
    E_RESPONSE_BYTES_SUM,
    E_TCP_CLOSED,
    E_TCP_OPENED,
    E_TCP_RECEIVED,
    E_TCP_SENT,
    ENTRY_WORDS,
    HEADER_BYTES,
    LAYOUT_VERSION,
    MAGIC,
    OVERFLOW,
    W_ACTIVE_CONNECTIONS,
    W_EJECTIONS_TOTAL,
    W_INCARNATION,
    W_OVERFLOW_RECORDS,
    W_PID,
    W_REQUESTS_TOTAL,
    SlotWriter,
    StatsSegment,
    StatsSegmentError,
    decode_key,
    encode_http_key,
    KIND_HTTP,
)


@pytest.fixture
def segment():
    seg = StatsSegment.create(2, max_entries=16, key_area_bytes=4096, status_area_bytes=4096)
    yield seg
    seg.close()


def test_header_bytes_are_as_documented(segment):
    raw = Path(SHM_DIR, segment.name).read_bytes()
    assert raw[:8] == MAGIC
    version, slots, slot_bytes, max_entries, entry_words, key_area, status_area = struct.unpack_from("<IIQIIII", raw, 8)
    assert (version, slots, max_entries, entry_words, key_area, status_area) == (LAYOUT_VERSION, 2, 16, ENTRY_WORDS, 4096, 4096)
    assert slot_bytes % 4096 == 0
    assert len(raw) == HEADER_BYTES + 2 * slot_bytes
    assert segment.name.startswith(f"edge-{os.getpid()}-") and segment.name.endswith("-stats")


def test_a_request_lands_in_the_documented_words(segment):
    writer = SlotWriter.attach(segment.name, 1)
    try:
        writer.record_http("0.0.0.0:80", "r1", "outbound|80||a.local", 200, "-", 0.003, 10, 2000)
        writer.record_http("0.0.0.0:80", "r1", "outbound|80||a.local", 200, "-", 0.0001, 0, 5)
    finally:
        writer.close()
    snap = segment.read_slot(1)
    assert snap.words[W_INCARNATION] == 1 and snap.words[W_PID] == os.getpid()
    assert snap.words[W_REQUESTS_TOTAL] == 2
    [(key, words)] = snap.http
    assert key == ("0.0.0.0:80", "r1", "outbound|80||a.local", 200, "-", -1)
    assert words[E_DURATION_SUM_US] == 3000 + 100
    durations = words[E_DURATION_BUCKETS : E_DURATION_BUCKETS + len(DURATION_BUCKETS_MS) + 1]
    assert durations[DURATION_BUCKETS_MS.index(0.5)] == 1  # 0.1 ms ≤ 0.5
    assert durations[DURATION_BUCKETS_MS.index(5)] == 1  # 1 < 3 ms ≤ 5
    assert sum(durations) == 2
    assert words[E_REQUEST_BYTES_SUM] == 10 and words[E_RESPONSE_BYTES_SUM] == 2005
    req = words[E_REQUEST_BYTES_BUCKETS : E_REQUEST_BYTES_BUCKETS + 20]
    assert req[0] == 1 and req[DURATION_BUCKETS_MS.index(10)] == 1  # 0 ≤ 0.5; 10 ≤ 10 (le is inclusive)
    resp = words[E_RESPONSE_BYTES_BUCKETS : E_RESPONSE_BYTES_BUCKETS + 20]
    assert resp[DURATION_BUCKETS_MS.index(2500)] == 1 and resp[DURATION_BUCKETS_MS.index(5)] == 1
    assert segment.read_slot(0).http == []  # the other slot is untouched


def test_a_value_beyond_the_last_bound_counts_in_plus_inf(segment):
    writer = SlotWriter.attach(segment.name, 0)
    writer.record_http("l", "r", "c", 200, "-", 7200.0, 2_000_000_000, 0)
    writer.close()
    [(_, words)] = segment.read_slot(0).http
    assert words[E_DURATION_BUCKETS + len(DURATION_BUCKETS_MS)] == 1
    assert words[E_REQUEST_BYTES_BUCKETS + len(DURATION_BUCKETS_MS)] == 1


def test_a_replacement_worker_continues_its_slot_and_resets_the_gauges(segment):
    first = SlotWriter.attach(segment.name, 0)
    first.record_http("l", "r", "c", 503, "UF", 0.01, 0, 19)
    first.tcp_opened("l", "c")
    first.set_word(W_ACTIVE_CONNECTIONS, 7)
    first.add_word(W_EJECTIONS_TOTAL, 2)
    first.close()  # the worker dies
    second = SlotWriter.attach(segment.name, 0)
    try:
        assert second.incarnation == 2
        second.record_http("l", "r", "c", 503, "UF", 0.01, 0, 19)
        second.record_http("l", "r", "c", 200, "-", 0.01, 0, 19)
        second.tcp_closed("l", "c", sent_bytes=100, received_bytes=7)
    finally:
        second.close()
    snap = segment.read_slot(0)
    counts = {key: sum(words[E_DURATION_BUCKETS : E_DURATION_BUCKETS + 20]) for key, words in snap.http}
    assert counts == {("l", "r", "c", 503, "UF", -1): 2, ("l", "r", "c", 200, "-", -1): 1}  # same entry, not a new one
    [(tcp_key, tcp)] = snap.tcp
    assert tcp_key == ("l", "c")
    assert (tcp[E_TCP_OPENED], tcp[E_TCP_CLOSED], tcp[E_TCP_SENT], tcp[E_TCP_RECEIVED]) == (1, 1, 100, 7)
    assert snap.words[W_ACTIVE_CONNECTIONS] == 0  # a gauge of the dead worker is not carried over
    assert snap.words[W_EJECTIONS_TOTAL] == 2  # a counter is
    assert snap.words[W_REQUESTS_TOTAL] == 3


def test_keys_beyond_the_capacity_go_to_the_overflow_entry(segment):
    writer = SlotWriter.attach(segment.name, 0)
    try:
        for code in range(200, 240):  # 40 distinct keys, room for 14
            writer.record_http("l", "r", "c", code, "-", 0.001, 0, 0)
        for i in range(3):
            writer.tcp_opened("l", f"c{i}")
    finally:
        writer.close()
    snap = segment.read_slot(0)
    keys = [key for key, _ in snap.http]
    assert len(keys) == 15  # 14 real keys + the HTTP overflow entry
    assert (OVERFLOW, OVERFLOW, OVERFLOW, 0, "-", -1) in keys
    total = sum(sum(words[E_DURATION_BUCKETS : E_DURATION_BUCKETS + 20]) for _, words in snap.http)
    assert total == 40  # nothing lost, only less detail
    assert snap.words[W_OVERFLOW_RECORDS] == 26 + 3
    assert [key for key, _ in snap.tcp] == [(OVERFLOW, OVERFLOW)]


def test_the_key_area_is_a_bound_too():
    seg = StatsSegment.create(1, max_entries=64, key_area_bytes=64, status_area_bytes=64)
    try:
        writer = SlotWriter.attach(seg.name, 0)
        writer.record_http("listener", "a-route-with-a-long-name", "outbound|80||x", 200, "-", 0.0, 0, 0)
        writer.record_http("listener", "another-route-with-a-long-name", "outbound|80||x", 200, "-", 0.0, 0, 0)
        writer.close()
        keys = [key[1] for key, _ in seg.read_slot(0).http]
        assert keys == ["a-route-with-a-long-name", OVERFLOW]
    finally:
        seg.close()


def test_status_area_round_trips_and_refuses_what_does_not_fit(segment):
    writer = SlotWriter.attach(segment.name, 1)
    try:
        assert writer.publish_status(b'{"generation": 3}')
        assert segment.read_slot(1).status == b'{"generation": 3}'
        assert not writer.publish_status(b"x" * 5000)
        assert segment.read_slot(1).status == b'{"generation": 3}'  # the old document stays
    finally:
        writer.close()


def test_attach_errors_are_clear(segment, tmp_path):
    with pytest.raises(StatsSegmentError, match="no stats segment"):
        SlotWriter.attach("edge-1-00000000-nothere", 0)
    with pytest.raises(StatsSegmentError, match="there is no slot 2"):
        SlotWriter.attach(segment.name, 2)
    bogus = f"edge-{os.getpid()}-0badf00d-stats"
    Path(SHM_DIR, bogus).write_bytes(b"\0" * 8192)
    try:
        with pytest.raises(StatsSegmentError, match="not an edge stats segment"):
            SlotWriter.attach(bogus, 0)
    finally:
        Path(SHM_DIR, bogus).unlink()


def test_close_unlinks_and_a_live_segment_is_never_taken_as_stale():
    seg = StatsSegment.create(1)
    path = Path(SHM_DIR, seg.name)
    assert path.exists()
    assert seg.name not in remove_stale_segments()  # our pid is alive
    seg.close()
    assert not path.exists()


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        (("0.0.0.0:80", "r", "outbound|80|v1|a.b.svc.cluster.local", 404, "NR"), ("0.0.0.0:80", "r", "outbound|80|v1|a.b.svc.cluster.local", 404, "NR", -1)),
        (("l", "-", "-", 0, "DC"), ("l", "-", "-", 0, "DC", -1)),
        (("l", "r", "c", 200, "-", 14), ("l", "r", "c", 200, "-", 14)),  # a gRPC status
        (("l", "r", "c", 0, "DC", -2), ("l", "r", "c", 0, "DC", -2)),  # a gRPC request without one
    ],
)
def test_http_keys_round_trip(fields, key):
    assert decode_key(KIND_HTTP, encode_http_key(*fields)) == key
