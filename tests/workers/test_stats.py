# workers/stats.py: the per-request and TCP calls land in the worker's slot; without a segment they are no-ops.
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from edge.stats_shm import E_DURATION_BUCKETS, E_REQUEST_BYTES_SUM, E_RESPONSE_BYTES_SUM, E_TCP_CLOSED, E_TCP_OPENED, E_TCP_RECEIVED, E_TCP_SENT, SlotWriter, StatsSegment
from workers.stats import WorkerStats


@pytest.fixture
def segment():
    seg = StatsSegment.create(1, max_entries=16, key_area_bytes=4096, status_area_bytes=4096)
    yield seg
    seg.close()


def test_record_request_uses_the_logs_key_fields_and_its_own_clock(segment):
    writer = SlotWriter.attach(segment.name, 0)
    stats = WorkerStats(writer)
    log = SimpleNamespace(listener="0.0.0.0:80", route_name="r", upstream_cluster="outbound|80||a", status=201, flags="-", start=time.time() - 0.002, bytes_received=5, bytes_sent=7, request=None, grpc_status=-1, rbac=None)
    stats.record_request(log)
    writer.close()
    [(key, words)] = segment.read_slot(0).http
    assert key == ("0.0.0.0:80", "r", "outbound|80||a", 201, "-", -1)
    assert sum(words[E_DURATION_BUCKETS : E_DURATION_BUCKETS + 20]) == 1
    assert words[E_DURATION_BUCKETS + 2] == 1  # 2 ms: (1, 5]
    assert (words[E_REQUEST_BYTES_SUM], words[E_RESPONSE_BYTES_SUM]) == (5, 7)


def test_tcp_api_counts_opened_closed_and_bytes_both_ways(segment):
    writer = SlotWriter.attach(segment.name, 0)
    stats = WorkerStats(writer)
    stats.tcp_connection_opened("0.0.0.0:31400", "outbound|9000||echo")
    assert stats.tcp_active == 1
    stats.tcp_bytes("0.0.0.0:31400", "outbound|9000||echo", sent=100, received=10)
    stats.tcp_connection_closed("0.0.0.0:31400", "outbound|9000||echo", sent=1, received=2)
    stats.tcp_connection_opened("0.0.0.0:31400", "")  # no cluster (NC): counted under "-"
    stats.tcp_connection_closed("0.0.0.0:31400", "")
    assert stats.tcp_active == 0
    writer.close()
    tcp = dict(segment.read_slot(0).tcp)
    echo = tcp[("0.0.0.0:31400", "outbound|9000||echo")]
    assert (echo[E_TCP_OPENED], echo[E_TCP_CLOSED], echo[E_TCP_SENT], echo[E_TCP_RECEIVED]) == (1, 1, 101, 12)
    assert tcp[("0.0.0.0:31400", "-")][E_TCP_CLOSED] == 1


def test_without_a_segment_everything_is_a_no_op():
    stats = WorkerStats(None)
    assert not stats.enabled
    stats.tcp_connection_opened("l", "c")
    stats.tcp_bytes("l", "c", 1, 1)
    stats.tcp_connection_closed("l", "c", 1, 1)
    assert stats.tcp_active == 0


def test_open_tcp_connections_report_their_bytes_as_they_grow_and_the_rest_at_close(segment):
    from workers.access_log import TcpLog
    from workers.l4.splice import Splice

    writer = SlotWriter.attach(segment.name, 0)
    stats = WorkerStats(writer)
    key = ("0.0.0.0:31400", "outbound|9000||echo")
    log = TcpLog(time.time(), key[0])
    log.upstream_cluster = key[1]
    splice = Splice()
    stats.tcp_connection_opened(*key)
    stats.track_tcp(log, splice)

    def totals():
        words = dict(segment.read_slot(0).tcp)[key]
        return words[E_TCP_SENT], words[E_TCP_RECEIVED], words[E_TCP_CLOSED]

    splice.bytes_up, splice.bytes_down = 10, 100
    stats._publish_tcp_progress()  # what every publish does
    assert totals() == (100, 10, 0)  # seen while the connection is open
    stats._publish_tcp_progress()
    assert totals() == (100, 10, 0)  # nothing new, nothing added
    splice.bytes_up, splice.bytes_down = 15, 130
    stats._publish_tcp_progress()
    assert totals() == (130, 15, 0)
    splice.bytes_up, splice.bytes_down = 16, 135  # the last bytes, then the connection closes
    sent, received = stats.untrack_tcp(log, splice.bytes_down, splice.bytes_up)
    assert (sent, received) == (5, 1)  # only what the metrics have not seen
    stats.tcp_connection_closed(*key, sent=sent, received=received)
    assert totals() == (135, 16, 1)  # each byte counted once
    stats._publish_tcp_progress()
    assert totals() == (135, 16, 1)  # a closed connection is no longer reported
    writer.close()


GRPC_REQUEST = SimpleNamespace(method=b"POST", headers=[(b"content-type", b"application/grpc+proto")])
PLAIN_POST = SimpleNamespace(method=b"POST", headers=[(b"content-type", b"application/json")])


@pytest.mark.parametrize(
    ("down", "fields", "key", "words"),
    [
        # (down, RequestLog fields, expected entry key, (request bytes sum, response bytes sum, requests in it))
        (SimpleNamespace(listener_key="0.0.0.0:80"), dict(route_name="r", upstream_cluster="outbound|80||a", status=200, bytes_received=5, bytes_sent=7),
         ("0.0.0.0:80", "r", "outbound|80||a", 200, "-", -1), (5, 7, 1)),
        (None, dict(status=400, flags="DPE"), ("-", "-", "-", 400, "DPE", -1), (0, 0, 1)),  # a codec error before any connection facts
        (SimpleNamespace(listener_key="[::]:443"), dict(status=0, flags="DC", route_name="default", upstream_cluster="outbound|9080||items", bytes_received=3),
         ("[::]:443", "default", "outbound|9080||items", 0, "DC", -1), (3, 0, 1)),
        (SimpleNamespace(listener_key="0.0.0.0:80"), dict(status=502, flags="UPE", upstream_cluster="outbound|80||a", bytes_sent=10**9),
         ("0.0.0.0:80", "-", "outbound|80||a", 502, "UPE", -1), (0, 10**9, 1)),
        # gRPC requests: the status answered (trailers or trailers-only headers), else httpToGrpcStatus of the code
        (SimpleNamespace(listener_key="0.0.0.0:80"), dict(status=200, grpc_status=0, request=GRPC_REQUEST), ("0.0.0.0:80", "-", "-", 200, "-", 0), (0, 0, 1)),
        (SimpleNamespace(listener_key="0.0.0.0:80"), dict(status=503, flags="UF", request=GRPC_REQUEST), ("0.0.0.0:80", "-", "-", 503, "UF", 14), (0, 0, 1)),
        (SimpleNamespace(listener_key="0.0.0.0:80"), dict(status=0, flags="DC", request=GRPC_REQUEST), ("0.0.0.0:80", "-", "-", 0, "DC", -2), (0, 0, 1)),
        (SimpleNamespace(listener_key="0.0.0.0:80"), dict(status=200, grpc_status=3, request=PLAIN_POST), ("0.0.0.0:80", "-", "-", 200, "-", -1), (0, 0, 1)),
    ],
)  # fmt: skip
def test_a_request_logs_key_and_words_are_pinned(segment, down, fields, key, words):
    """The metrics a real RequestLog produces (the listener comes from its connection): the same entry key and
    words whatever the record's shape, recorded twice to check the entry is found again, not duplicated."""
    from edge.stats_shm import E_DURATION_SUM_US
    from workers.http.log import RequestLog

    writer = SlotWriter.attach(segment.name, 0)
    stats = WorkerStats(writer)
    log = RequestLog(time.time() - 0.002, down, None)
    for name, value in fields.items():
        setattr(log, name, value)
    stats.record_request(log)
    stats.record_request(log)
    writer.close()
    [(got_key, got)] = segment.read_slot(0).http
    assert got_key == key
    assert (got[E_REQUEST_BYTES_SUM], got[E_RESPONSE_BYTES_SUM], sum(got[E_DURATION_BUCKETS : E_DURATION_BUCKETS + 20])) == tuple(2 * w for w in words)
    assert 2 * 2000 <= got[E_DURATION_SUM_US] < 2 * 1_000_000
