"""The shared-memory statistics segment: one fixed region per worker slot, written only by that slot's worker,
read and summed by the supervisor (metrics and admin ports).

A segment is a file in /dev/shm named `edge-<supervisor pid>-<8 hex>-stats` (edge.shm.new_segment_name), created
by the supervisor before it starts workers, removed when it exits, and removed by remove_stale_segments when a
dead supervisor left it behind. tmpfs allocates only the pages that are touched, so the generous fixed sizes
below cost what is used.

Byte layout. Integers are little-endian, u64 words naturally aligned.

Segment header (HEADER_BYTES = 4096):

    offset  size  field             meaning
    ------  ----  ----------------  -------------------------------------------------------------------------
         0     8  magic             b"EDGESTA1"; written last at create
         8     4  layout_version    u32 LAYOUT_VERSION; a reader refuses any other value
        12     4  slots             u32, worker slots (= --workers)
        16     8  slot_bytes        u64, bytes per slot region
        24     4  max_entries       u32, entries per slot
        28     4  entry_words       u32, u64 words per entry (ENTRY_WORDS)
        32     4  key_area_bytes    u32
        36     4  status_area_bytes u32
        40  4056  reserved          0

Slot s starts at HEADER_BYTES + s * slot_bytes:

    offset                         size                      what
    -----------------------------  ------------------------  -------------------------------------------------
    0                              SLOT_HEADER_BYTES (4096)  512 u64 words, below
    4096                           max_entries × 8×ENTRY_WORDS  the entries
    …                              key_area_bytes            UTF-8 keys the entries point at
    …                              status_area_bytes         a JSON document (the worker's /clusters view)

Slot header words (index = offset / 8):

     0  incarnation        +1 by every worker that attaches the slot (the first worker makes it 1)
     1  pid                of the worker writing the slot now
     2  entries_used       entries [0, entries_used) hold a key; bumped after the key is written
     3  key_bytes_used     bytes of the key area in use
     4  overflow_records   records that found no free entry (they are counted in the overflow entry)
     8  active_connections       gauge, downstream connections open in this worker
     9  pool_active              gauge, upstream connections carrying a request
    10  pool_idle                gauge, idle pooled upstream connections
    11  ejected_endpoints        gauge, endpoints outlier detection keeps out now
    12  ejections_total          counter, outlier ejections
    13  table_generation         gauge, the generation the worker serves
    14  published_at_ms          wall clock of the last gauge publication (ms since the epoch)
    15  requests_total           counter, HTTP requests recorded
    16  tcp_connections_active   gauge
    17  access_log_dropped_lines counter, lines dropped because the access log could not keep up or failed
    18  connection_errors        counter, connections ended by an unexpected error (logged by the worker)
    32  status_sequence          seqlock of the status area: odd while the worker rewrites it
    33  status_length            bytes of JSON in the status area

Entry (ENTRY_WORDS = 72 u64 words; unused words are 0):

     0  key                    key offset (low 32 bits) and key length (high 32 bits) in the key area
     1  kind                   KIND_HTTP or KIND_TCP
    HTTP entries (key: listener \\x1f route \\x1f cluster \\x1f response code \\x1f response flags \\x1f grpc, layout 2
    added grpc: the gRPC status Istio labels grpc_response_status, -1 for a request that is not gRPC, -2 for a gRPC
    request without one; workers/route_policies.grpc_metric_status):
     2  duration_sum_us        sum of request durations, microseconds
     3  request_bytes_sum
     4  response_bytes_sum
     5  duration buckets       len(DURATION_BUCKETS_MS)+1 words: counts per bucket (not cumulative), last = +Inf
    25  request bytes buckets  len(BYTES_BUCKETS)+1 words
    45  response bytes buckets len(BYTES_BUCKETS)+1 words
        The request count is the sum of the duration buckets (so count and buckets always agree).
    TCP entries (key: listener \\x1f cluster):
     2  connections_opened
     3  connections_closed
     4  sent_bytes             to the downstream client (Istio: istio_tcp_sent_bytes_total)
     5  received_bytes         from the downstream client
    Counter entries (key: an Envoy stat name, e.g. http.<listener>.rbac.allowed):
     2  value

Rules:
- One writer per slot: the worker of that slot, and the supervisor never starts a slot's replacement before the
  previous worker is reaped. Counters are only ever incremented, by single aligned 8-byte stores, so a reader
  sees each word either before or after an increment (x86-64 and arm64 do not tear aligned 8-byte stores);
  a snapshot may be a few increments apart across words, never backwards.
- A replacement worker continues its slot: it re-reads the keys already there and keeps incrementing the same
  counters, so totals survive restarts and never go backwards. It resets the gauges.
- Bounded key space: at most max_entries - 2 distinct keys per slot; the last two entries are the HTTP and TCP
  overflow entries (key fields "overflow"), where records with no room left are counted (and
  overflow_records says how many). A named counter with no room left is only counted in overflow_records.
- Counter entries (KIND_COUNTER) are named Envoy stats the workers count beside the request records (the RBAC
  filters' allowed/denied/logged/not_logged); a reader of an older layout skips them.
- The status area is a seqlock like the table segment: sequence odd → write in progress; a reader copies,
  re-reads the sequence and retries on a change.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Self

from edge.shm import SHM_DIR, ShmError, new_segment_name

if sys.byteorder != "little":
    raise ImportError("edge.stats_shm needs a little-endian CPU: the segment format is little-endian")

MAGIC = b"EDGESTA1"
LAYOUT_VERSION = 2  # 2: HTTP keys carry the gRPC status (a sixth field)
HEADER_BYTES = 4096
SLOT_HEADER_BYTES = 4096
ENTRY_WORDS = 72
ENTRY_BYTES = ENTRY_WORDS * 8
DEFAULT_MAX_ENTRIES = 2048
DEFAULT_KEY_AREA_BYTES = 256 * 1024
DEFAULT_STATUS_AREA_BYTES = 1024 * 1024
STATUS_READ_ATTEMPTS = 100

KIND_HTTP = 1
KIND_TCP = 2
KIND_COUNTER = 3
KINDS = (KIND_HTTP, KIND_TCP, KIND_COUNTER)
KEY_SEPARATOR = "\x1f"
OVERFLOW = "overflow"

# Envoy's default histogram buckets, which Istio's standard metrics use for durations (ms) and sizes (bytes).
DURATION_BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000)
BYTES_BUCKETS = DURATION_BUCKETS_MS
DURATION_BUCKETS_S = tuple(b / 1000 for b in DURATION_BUCKETS_MS)

# Slot header words.
W_INCARNATION = 0
W_PID = 1
W_ENTRIES_USED = 2
W_KEY_BYTES_USED = 3
W_OVERFLOW_RECORDS = 4
W_ACTIVE_CONNECTIONS = 8
W_POOL_ACTIVE = 9
W_POOL_IDLE = 10
W_EJECTED_ENDPOINTS = 11
W_EJECTIONS_TOTAL = 12
W_TABLE_GENERATION = 13
W_PUBLISHED_AT_MS = 14
W_REQUESTS_TOTAL = 15
W_TCP_ACTIVE = 16
W_ACCESS_LOG_DROPPED = 17
W_CONNECTION_ERRORS = 18
W_STATUS_SEQUENCE = 32
W_STATUS_LENGTH = 33
GAUGE_WORDS = (W_ACTIVE_CONNECTIONS, W_POOL_ACTIVE, W_POOL_IDLE, W_EJECTED_ENDPOINTS, W_TABLE_GENERATION, W_TCP_ACTIVE)

# Entry words.
E_KEY = 0
E_KIND = 1
E_DURATION_SUM_US = 2
E_REQUEST_BYTES_SUM = 3
E_RESPONSE_BYTES_SUM = 4
E_DURATION_BUCKETS = 5
E_REQUEST_BYTES_BUCKETS = E_DURATION_BUCKETS + len(DURATION_BUCKETS_MS) + 1
E_RESPONSE_BYTES_BUCKETS = E_REQUEST_BYTES_BUCKETS + len(BYTES_BUCKETS) + 1
E_TCP_OPENED = 2
E_TCP_CLOSED = 3
E_TCP_SENT = 4
E_TCP_RECEIVED = 5
E_COUNTER_VALUE = 2
assert E_RESPONSE_BYTES_BUCKETS + len(BYTES_BUCKETS) + 1 <= ENTRY_WORDS

_U32_VERSION = 8 // 4
_U32_SLOTS = 12 // 4
_U64_SLOT_BYTES = 16 // 8
_U32_MAX_ENTRIES = 24 // 4
_U32_ENTRY_WORDS = 28 // 4
_U32_KEY_AREA = 32 // 4
_U32_STATUS_AREA = 36 // 4


class StatsSegmentError(ShmError):
    """attach() found no stats segment, or one of another layout."""


@dataclass(frozen=True)
class Geometry:
    slots: int
    max_entries: int = DEFAULT_MAX_ENTRIES
    key_area_bytes: int = DEFAULT_KEY_AREA_BYTES
    status_area_bytes: int = DEFAULT_STATUS_AREA_BYTES

    @property
    def entries_offset(self) -> int:
        return SLOT_HEADER_BYTES

    @property
    def key_area_offset(self) -> int:
        return SLOT_HEADER_BYTES + self.max_entries * ENTRY_BYTES

    @property
    def status_area_offset(self) -> int:
        return self.key_area_offset + self.key_area_bytes

    @property
    def slot_bytes(self) -> int:
        size = self.status_area_offset + self.status_area_bytes
        return (size + 4095) // 4096 * 4096

    @property
    def total_bytes(self) -> int:
        return HEADER_BYTES + self.slots * self.slot_bytes

    def slot_offset(self, slot: int) -> int:
        return HEADER_BYTES + slot * self.slot_bytes


def encode_http_key(listener: str, route: str, cluster: str, code: int, flags: str, grpc: int = -1) -> str:
    return KEY_SEPARATOR.join((listener, route, cluster, str(code), flags, str(grpc)))


def decode_key(kind: int, text: str) -> tuple:
    """An entry's key: HTTP (listener, route, cluster, code, flags, grpc); TCP (listener, cluster)."""
    parts = text.split(KEY_SEPARATOR)
    if kind == KIND_HTTP and len(parts) == 6:
        code = int(parts[3]) if parts[3].isdigit() else 0
        grpc = int(parts[5]) if parts[5].lstrip("-").isdigit() else -1
        return (parts[0], parts[1], parts[2], code, parts[4], grpc)
    return tuple(parts)


HTTP_OVERFLOW_KEY = (OVERFLOW, OVERFLOW, OVERFLOW, 0, "-", -1)
TCP_OVERFLOW_KEY = (OVERFLOW, OVERFLOW)


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def _read_geometry(path: str, mapping: mmap.mmap) -> Geometry:
    if mapping[0 : len(MAGIC)] != MAGIC:
        raise StatsSegmentError(f"{path} is not an edge stats segment (or its writer is still creating it)")
    u32 = memoryview(mapping)[:64].cast("I")
    try:
        if u32[_U32_VERSION] != LAYOUT_VERSION:
            raise StatsSegmentError(f"{path} has stats layout version {u32[_U32_VERSION]}; this edge reads {LAYOUT_VERSION}")
        if u32[_U32_ENTRY_WORDS] != ENTRY_WORDS:
            raise StatsSegmentError(f"{path} has {u32[_U32_ENTRY_WORDS]}-word entries; this edge uses {ENTRY_WORDS}")
        geometry = Geometry(u32[_U32_SLOTS], u32[_U32_MAX_ENTRIES], u32[_U32_KEY_AREA], u32[_U32_STATUS_AREA])
    finally:
        u32.release()
    if len(mapping) < geometry.total_bytes:
        raise StatsSegmentError(f"{path} is {len(mapping)} bytes, shorter than its header says ({geometry.total_bytes})")
    return geometry


# ------------------------------------------------------------------------------------------------ supervisor


@dataclass
class SlotSnapshot:
    """One slot as the supervisor read it."""

    slot: int
    incarnation: int
    pid: int
    words: list[int]  # the slot header words
    http: list[tuple[tuple, list[int]]] = field(default_factory=list)  # (key, entry words)
    tcp: list[tuple[tuple, list[int]]] = field(default_factory=list)
    counters: list[tuple[str, int]] = field(default_factory=list)  # (Envoy stat name, value)
    status: bytes = b""

    def gauge(self, word: int) -> int:
        return self.words[word]


class StatsSegment:
    """The supervisor's side: creates, owns and reads the segment."""

    def __init__(self, name: str, fd: int, mapping: mmap.mmap, geometry: Geometry):
        self.name = name
        self.geometry = geometry
        self._fd = fd
        self._mmap = mapping
        self._u64 = memoryview(mapping).cast("Q")
        self._keys: dict[tuple[int, int], tuple[int, tuple]] = {}  # (slot, entry) → (key word, decoded key)
        self._closed = False

    @classmethod
    def create(
        cls,
        slots: int,
        *,
        name: str | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        key_area_bytes: int = DEFAULT_KEY_AREA_BYTES,
        status_area_bytes: int = DEFAULT_STATUS_AREA_BYTES,
    ) -> Self:
        if slots < 1 or max_entries < 3 or key_area_bytes < 64 or status_area_bytes < 64:
            raise ValueError("a stats segment needs ≥ 1 slot, ≥ 3 entries and room for keys and status")
        geometry = Geometry(slots, max_entries, key_area_bytes, status_area_bytes)
        name = name or new_segment_name("stats")
        path = _path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as the table segment: held while we live
            os.ftruncate(fd, geometry.total_bytes)
            mapping = mmap.mmap(fd, geometry.total_bytes)
        except BaseException:
            os.unlink(path)
            os.close(fd)
            raise
        u32 = memoryview(mapping)[:64].cast("I")
        u32[_U32_VERSION] = LAYOUT_VERSION
        u32[_U32_SLOTS] = slots
        u32[_U32_MAX_ENTRIES] = max_entries
        u32[_U32_ENTRY_WORDS] = ENTRY_WORDS
        u32[_U32_KEY_AREA] = key_area_bytes
        u32[_U32_STATUS_AREA] = status_area_bytes
        u32.release()
        u64 = memoryview(mapping)[:64].cast("Q")
        u64[_U64_SLOT_BYTES] = geometry.slot_bytes
        u64.release()
        mapping[0 : len(MAGIC)] = MAGIC
        return cls(name, fd, mapping, geometry)

    def read_slot(self, slot: int) -> SlotSnapshot:
        g = self.geometry
        base = g.slot_offset(slot) // 8
        u64 = self._u64
        words = u64[base : base + SLOT_HEADER_BYTES // 8].tolist()
        snap = SlotSnapshot(slot, words[W_INCARNATION], words[W_PID], words)
        used = min(words[W_ENTRIES_USED], g.max_entries)
        entries_base = base + g.entries_offset // 8
        key_base = g.slot_offset(slot) + g.key_area_offset
        for index in list(range(used)) + [g.max_entries - 2, g.max_entries - 1]:
            start = entries_base + index * ENTRY_WORDS
            entry = u64[start : start + ENTRY_WORDS].tolist()
            kind = entry[E_KIND]
            if kind not in KINDS or (index >= used and not any(entry[2:])):
                continue  # unused, or an overflow entry that never counted anything
            key = self._key(slot, index, entry[E_KEY], kind, key_base, g.key_area_bytes)
            if key is None:
                continue
            if kind == KIND_COUNTER:
                snap.counters.append((key[0], entry[E_COUNTER_VALUE]))
            else:
                (snap.http if kind == KIND_HTTP else snap.tcp).append((key, entry))
        snap.status = self._read_status(slot)
        return snap

    def _key(self, slot: int, index: int, word: int, kind: int, key_base: int, key_area_bytes: int) -> tuple | None:
        cached = self._keys.get((slot, index))
        if cached is not None and cached[0] == word:
            return cached[1]
        offset, length = word & 0xFFFFFFFF, word >> 32
        if offset + length > key_area_bytes:
            return None
        if index >= self.geometry.max_entries - 2:
            key = HTTP_OVERFLOW_KEY if kind == KIND_HTTP else TCP_OVERFLOW_KEY
        else:
            text = bytes(self._mmap[key_base + offset : key_base + offset + length]).decode("utf-8", "replace")
            key = decode_key(kind, text)
        self._keys[(slot, index)] = (word, key)
        return key

    def _read_status(self, slot: int) -> bytes:
        g = self.geometry
        base = g.slot_offset(slot) // 8
        start = g.slot_offset(slot) + g.status_area_offset
        u64 = self._u64
        for _ in range(STATUS_READ_ATTEMPTS):
            sequence = u64[base + W_STATUS_SEQUENCE]
            if sequence & 1:
                time.sleep(0)
                continue
            length = min(u64[base + W_STATUS_LENGTH], g.status_area_bytes)
            data = bytes(self._mmap[start : start + length])
            if u64[base + W_STATUS_SEQUENCE] == sequence:
                return data
        return b""

    def read_all(self) -> list[SlotSnapshot]:
        return [self.read_slot(slot) for slot in range(self.geometry.slots)]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._u64.release()
        self._mmap.close()
        try:
            os.unlink(_path(self.name))
        except FileNotFoundError:
            pass
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -------------------------------------------------------------------------------------------------- worker


class SlotWriter:
    """A worker's side: the one writer of its slot. Hot-path methods do a dict lookup and a few word stores."""

    def __init__(self, name: str, mapping: mmap.mmap, geometry: Geometry, slot: int):
        self.name = name
        self.geometry = geometry
        self.slot = slot
        self._mmap = mapping
        self._base_byte = geometry.slot_offset(slot)
        self._words = memoryview(mapping).cast("Q")
        self._header = self._base_byte // 8
        self._entries = (self._base_byte + geometry.entries_offset) // 8
        self._key_area = self._base_byte + geometry.key_area_offset
        self._status_area = self._base_byte + geometry.status_area_offset
        self._http: dict[tuple, int] = {}  # key → first word of its entry
        self._tcp: dict[tuple, int] = {}
        self._counters: dict[str, int] = {}  # stat name → its entry's value word
        self._adopt()

    @classmethod
    def attach(cls, name: str, slot: int) -> Self:
        path = _path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise StatsSegmentError(f"no stats segment {path}") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise StatsSegmentError(f"{path} is {size} bytes, shorter than its header")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        try:
            geometry = _read_geometry(path, mapping)
            if not 0 <= slot < geometry.slots:
                raise StatsSegmentError(f"{path} has {geometry.slots} slots; there is no slot {slot}")
        except BaseException:
            mapping.close()
            raise
        return cls(name, mapping, geometry, slot)

    def _adopt(self) -> None:
        """Take the slot over: continue its counters, reset its gauges."""
        w = self._words
        h = self._header
        w[h + W_INCARNATION] += 1
        w[h + W_PID] = os.getpid()
        for word in GAUGE_WORDS:
            w[h + word] = 0
        g = self.geometry
        used = min(w[h + W_ENTRIES_USED], g.max_entries - 2)
        key_bytes = w[h + W_KEY_BYTES_USED]
        for index in range(used):
            start = self._entries + index * ENTRY_WORDS
            kind = w[start + E_KIND]
            word = w[start + E_KEY]
            offset, length = word & 0xFFFFFFFF, word >> 32
            if kind not in KINDS or offset + length > key_bytes:
                # A predecessor died while writing this entry: it has no counts yet; take it from here.
                w[h + W_ENTRIES_USED] = index
                break
            text = bytes(self._mmap[self._key_area + offset : self._key_area + offset + length]).decode("utf-8", "replace")
            if kind == KIND_COUNTER:
                self._counters[text] = start + E_COUNTER_VALUE
                continue
            key = decode_key(kind, text)
            (self._http if kind == KIND_HTTP else self._tcp)[key] = start
        for kind, key, index in ((KIND_HTTP, HTTP_OVERFLOW_KEY, g.max_entries - 2), (KIND_TCP, TCP_OVERFLOW_KEY, g.max_entries - 1)):
            start = self._entries + index * ENTRY_WORDS
            w[start + E_KIND] = kind

    @property
    def incarnation(self) -> int:
        return self._words[self._header + W_INCARNATION]

    def _allocate(self, kind: int, key: tuple, text: str) -> int:
        w = self._words
        h = self._header
        g = self.geometry
        used = w[h + W_ENTRIES_USED]
        data = text.encode("utf-8")
        key_bytes = w[h + W_KEY_BYTES_USED]
        if used >= g.max_entries - 2 or key_bytes + len(data) > g.key_area_bytes:
            w[h + W_OVERFLOW_RECORDS] += 1
            if kind == KIND_COUNTER:
                return -1
            return self._entries + (g.max_entries - (2 if kind == KIND_HTTP else 1)) * ENTRY_WORDS
        start = self._entries + used * ENTRY_WORDS
        self._mmap[self._key_area + key_bytes : self._key_area + key_bytes + len(data)] = data
        w[start + E_KEY] = key_bytes | (len(data) << 32)
        w[start + E_KIND] = kind
        w[h + W_KEY_BYTES_USED] = key_bytes + len(data)
        w[h + W_ENTRIES_USED] = used + 1  # published last: a reader never sees a half-written key
        if kind == KIND_COUNTER:
            self._counters[text] = start + E_COUNTER_VALUE
        else:
            (self._http if kind == KIND_HTTP else self._tcp)[key] = start
        return start

    # ---------------------------------------------------------------------------------------- hot path

    def record_http(self, listener: str, route: str, cluster: str, code: int, flags: str, duration_s: float, request_bytes: int, response_bytes: int, grpc: int = -1) -> None:
        key = (listener, route, cluster, code, flags, grpc)
        start = self._http.get(key)
        if start is None:
            start = self._allocate(KIND_HTTP, key, encode_http_key(listener, route, cluster, code, flags, grpc))
        w = self._words
        if duration_s < 0:
            duration_s = 0.0
        w[start + E_DURATION_SUM_US] += int(duration_s * 1e6)
        w[start + E_DURATION_BUCKETS + bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
        w[start + E_REQUEST_BYTES_SUM] += request_bytes
        w[start + E_REQUEST_BYTES_BUCKETS + bisect_left(BYTES_BUCKETS, request_bytes)] += 1
        w[start + E_RESPONSE_BYTES_SUM] += response_bytes
        w[start + E_RESPONSE_BYTES_BUCKETS + bisect_left(BYTES_BUCKETS, response_bytes)] += 1
        w[self._header + W_REQUESTS_TOTAL] += 1

    def _tcp_entry(self, listener: str, cluster: str) -> int:
        key = (listener, cluster)
        start = self._tcp.get(key)
        if start is None:
            start = self._allocate(KIND_TCP, key, KEY_SEPARATOR.join(key))
        return start

    def tcp_opened(self, listener: str, cluster: str) -> None:
        self._words[self._tcp_entry(listener, cluster) + E_TCP_OPENED] += 1

    def tcp_closed(self, listener: str, cluster: str, sent_bytes: int = 0, received_bytes: int = 0) -> None:
        start = self._tcp_entry(listener, cluster)
        w = self._words
        w[start + E_TCP_CLOSED] += 1
        if sent_bytes:
            w[start + E_TCP_SENT] += sent_bytes
        if received_bytes:
            w[start + E_TCP_RECEIVED] += received_bytes

    def tcp_bytes(self, listener: str, cluster: str, sent_bytes: int, received_bytes: int) -> None:
        start = self._tcp_entry(listener, cluster)
        w = self._words
        w[start + E_TCP_SENT] += sent_bytes
        w[start + E_TCP_RECEIVED] += received_bytes

    def add_counter(self, name: str, delta: int) -> None:
        """A named Envoy stat (a counter entry), e.g. http.<listener>.rbac.allowed."""
        word = self._counters.get(name)
        if word is None:
            start = self._allocate(KIND_COUNTER, (name,), name)
            if start < 0:
                return  # no room: counted in overflow_records
            word = start + E_COUNTER_VALUE
        self._words[word] += delta

    # ------------------------------------------------------------------------------------ gauges, status

    def set_word(self, word: int, value: int) -> None:
        self._words[self._header + word] = max(0, int(value))

    def add_word(self, word: int, delta: int) -> None:
        if delta > 0:
            self._words[self._header + word] += delta

    def word(self, word: int) -> int:
        return self._words[self._header + word]

    def publish_status(self, data: bytes) -> bool:
        """Replace the status document (seqlocked); False when it does not fit (the old one stays)."""
        g = self.geometry
        if len(data) > g.status_area_bytes:
            return False
        w = self._words
        h = self._header
        sequence = w[h + W_STATUS_SEQUENCE]
        if sequence & 1:  # a predecessor died mid-write
            sequence += 1
        w[h + W_STATUS_SEQUENCE] = sequence + 1
        self._mmap[self._status_area : self._status_area + len(data)] = data
        w[h + W_STATUS_LENGTH] = len(data)
        w[h + W_STATUS_SEQUENCE] = sequence + 2
        return True

    def close(self) -> None:
        if self._mmap.closed:
            return
        self._words.release()
        self._mmap.close()


__all__ = [
    "StatsSegment", "SlotWriter", "SlotSnapshot", "StatsSegmentError", "Geometry",
    "DURATION_BUCKETS_MS", "BYTES_BUCKETS", "KIND_HTTP", "KIND_TCP", "KIND_COUNTER", "OVERFLOW",
]  # fmt: skip
