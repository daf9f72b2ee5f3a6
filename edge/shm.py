"""The shared-memory table segment: one writer (the supervisor), many lock-free readers (the workers).

A segment is a file in /dev/shm (tmpfs) mapped with mmap. Its name is `edge-<supervisor pid>-<8 hex>-table`, so a
segment whose supervisor is gone can be recognised and removed at the next start (remove_stale_segments).
multiprocessing.shared_memory is deliberately not used: on Python 3.11 every attach registers the segment with
the resource tracker, which unlinks it when that (worker) process exits.

Byte layout. All integers are little-endian and naturally aligned; fields marked "seqlock" change only while
the sequence is odd.

    offset  size  field           meaning
    ------  ----  --------------  ---------------------------------------------------------------------------
         0     8  magic           b"EDGETBL1"; written last at create, so a half-created segment has none
         8     4  layout_version  u32 LAYOUT_VERSION; a reader refuses any other value
        12     4  reserved        0
        16     8  slot_capacity   u64 C, bytes per payload slot, fixed at create
        24     8  sequence        u64 seqlock counter: odd while the writer changes the four fields below
        32     8  generation      u64 (seqlock), 0 = nothing published yet, +1 on every publish
        40     4  active_slot     u32 (seqlock), 0 = slot A, 1 = slot B
        44     4  reserved        0
        48     8  payload_length  u64 (seqlock), bytes at the start of the active slot that hold the table
        56     4  checksum        u32 (seqlock), zlib.crc32 of those bytes
        60     4  reserved        0
        64  4032  reserved        0; the header fills one page so slot A starts page-aligned
      4096     C  slot A
    4096+C     C  slot B          file size = 4096 + 2*C

Writer (publish), one process only:
    1. copy the payload into the INACTIVE slot; readers are not looking at it, the header points at the other
    2. sequence += 1 (odd)
    3. write generation, active_slot, payload_length, checksum
    4. sequence += 1 (even)
Reader (read):
    1. s = sequence; while odd a flip is in progress: retry
    2. copy generation, active_slot, payload_length, checksum and the active payload
    3. sequence != s: the writer flipped meanwhile and may be refilling the slot we copied: retry
    4. crc32(copy) != checksum: retry
    Retries spin briefly, then sleep READ_RETRY_SLEEP_S; after timeout_s (READ_TIMEOUT_S) of failures read()
    raises TableReadError. Torn data is never returned. A writer killed between steps 2 and 4 leaves the sequence
    odd for good: every read() then fails and workers keep the table they already have.
Generation check (hot path, once per request): current_generation() is one aligned 8-byte load at offset 32,
outside the seqlock. A changed value only makes the worker call read(), which does all the verifying.

Memory ordering: CPython gives us no fences, but every field access is a separate C call the compiler cannot
reorder across, and x86-64 keeps stores in order and loads in order (TSO), which is all a seqlock needs. On
weakly ordered CPUs (arm64) the crc32 of the copied payload is the backstop: a torn copy would need a reordering
and a crc collision at once.

Memory: tmpfs only allocates pages that are touched, so the 64 MiB default slots cost what the tables use (the
high-water mark; tests check st_blocks). The writer reserves each payload range with posix_fallocate before
copying, so a full /dev/shm (Docker defaults to 64 MB) is a TableTooLarge error instead of a SIGBUS.
A process's touched pages of the segment count in its RSS (RssShmem) although tmpfs holds one copy for all: the
writer after copying a payload in, and a reader after copying one out, drop the slot's pages from their own page
tables (madvise MADV_DONTNEED; on a shared file mapping that unmaps, the data stays in tmpfs). With 10,000
VirtualServices that is 4.5 MiB per process per slot (9 MiB after a reload touched the second slot).

Lifetime: the writer holds a shared flock on the segment from create to close() (unmap + unlink); a reader's
close() only unmaps, and an existing mapping outlives the unlink. remove_stale_segments() unlinks segments whose
pid is dead AND whose lock nobody holds, so it never takes a live writer's segment, even across pid namespaces.

Costs (CPython 3.11, 2-CPU x86-64 VM): current_generation() ~40 ns; read() of 1 MiB ~280 us, ~90% of it crc32;
publish() of 1 MiB ~300 us. read() is synchronous and only sleeps (up to timeout_s) when the writer is stuck.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import sys
import time
import zlib
from typing import Self

if sys.byteorder != "little":  # header words are read through native memoryview casts
    raise ImportError("edge.shm needs a little-endian CPU: the segment format is little-endian")

SHM_DIR = "/dev/shm"
MAGIC = b"EDGETBL1"
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
DEFAULT_SLOT_CAPACITY_BYTES = 64 * 1024 * 1024
READ_TIMEOUT_S = 1.0
READ_RETRY_SLEEP_S = 50e-6
READ_SPIN_ATTEMPTS = 16
_PAGE_BYTES = mmap.PAGESIZE

_HEADER_FIELDS_BYTES = 64
# Indices into the first 64 header bytes seen as u64 words (offset // 8) and as u32 words (offset // 4).
_U32_VERSION = 8 // 4
_U64_CAPACITY = 16 // 8
_U64_SEQUENCE = 24 // 8
_U64_GENERATION = 32 // 8
_U32_ACTIVE_SLOT = 40 // 4
_U64_PAYLOAD_LENGTH = 48 // 8
_U32_CHECKSUM = 56 // 4

_FALLOCATE_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
# pid_max is at most 2**22 on Linux, so seven digits; anything else is not a name we made.
_SEGMENT_NAME_RE = re.compile(r"edge-([1-9][0-9]{0,6})-[0-9a-f]+-[a-z]+")


class ShmError(Exception):
    """Base class of this module's errors."""


class TableTooLarge(ShmError):
    """The table did not fit (slot capacity or free /dev/shm); nothing changed, the old table is still served."""

    def __init__(self, message: str, payload_bytes: int, slot_capacity_bytes: int) -> None:
        super().__init__(message)
        self.payload_bytes = payload_bytes
        self.slot_capacity_bytes = slot_capacity_bytes


class TableSegmentError(ShmError):
    """attach() found no segment, or something that is not a table segment of this layout version."""


class TableReadError(ShmError):
    """read() got no consistent copy within its timeout (writer died mid-publish, or the segment is corrupt)."""


def new_segment_name(kind: str) -> str:
    """`edge-<our pid>-<8 random hex>-<kind>`: the form remove_stale_segments recognises."""
    return f"edge-{os.getpid()}-{secrets.token_hex(4)}-{kind}"


def segment_owner_pid(name: str) -> int | None:
    """The supervisor pid embedded in a segment name, or None when the name is not one of ours."""
    match = _SEGMENT_NAME_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def _segment_path(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad shared-memory segment name {name!r}: use letters, digits, '.', '_', '-'")
    return os.path.join(SHM_DIR, name)


class TableWriter:
    """The supervisor's side. Not thread-safe: one publisher."""

    def __init__(self, name: str, fd: int, mapping: mmap.mmap, slot_capacity_bytes: int) -> None:
        # Use TableWriter.create().
        self._name = name
        self._fd = fd
        self._mmap = mapping
        self._slot_capacity = slot_capacity_bytes
        self._u64 = memoryview(mapping)[:_HEADER_FIELDS_BYTES].cast("Q")
        self._u32 = memoryview(mapping)[:_HEADER_FIELDS_BYTES].cast("I")
        self._sequence = 0
        self._generation = 0
        self._active_slot = 0
        self._fallocate_supported = True
        self._closed = False

    @classmethod
    def create(cls, name: str | None = None, slot_capacity_bytes: int = DEFAULT_SLOT_CAPACITY_BYTES) -> Self:
        """Create /dev/shm/<name> (default: new_segment_name("table")) holding generation 0, an empty table."""
        if name is None:
            name = new_segment_name("table")
        path = _segment_path(name)
        if not isinstance(slot_capacity_bytes, int) or slot_capacity_bytes <= 0:
            raise ValueError(f"slot_capacity_bytes must be a positive int, got {slot_capacity_bytes!r}")
        size = HEADER_BYTES + 2 * slot_capacity_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            # Held until close(); process death releases it. remove_stale_segments skips any segment whose
            # lock is held, even if the pid in its name looks dead (e.g. seen from another pid namespace).
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            os.ftruncate(fd, size)
            _reserve_header(fd)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            os.close(fd)
            raise
        writer = cls(name, fd, mapping, slot_capacity_bytes)
        writer._u32[_U32_VERSION] = LAYOUT_VERSION
        writer._u64[_U64_CAPACITY] = slot_capacity_bytes
        writer._u32[_U32_CHECKSUM] = zlib.crc32(b"")
        mapping[0 : len(MAGIC)] = MAGIC
        return writer

    @property
    def name(self) -> str:
        return self._name

    @property
    def slot_capacity_bytes(self) -> int:
        return self._slot_capacity

    @property
    def generation(self) -> int:
        """The last published generation (0 before the first publish)."""
        return self._generation

    def publish(self, payload: bytes | bytearray | memoryview) -> int:
        """Serve `payload` from now on; returns its generation. TableTooLarge leaves the previous table served."""
        if self._closed:
            raise ValueError(f"publish on closed TableWriter {self._name}")
        data = memoryview(payload).cast("B")
        size = data.nbytes
        if size > self._slot_capacity:
            raise TableTooLarge(
                f"table of {size} bytes exceeds the {self._slot_capacity}-byte slot of {self._name}; "
                f"generation {self._generation} stays served",
                size,
                self._slot_capacity,
            )
        target_slot = 1 - self._active_slot
        start = HEADER_BYTES + target_slot * self._slot_capacity
        if size:
            self._reserve(start, size)
            self._mmap[start : start + size] = data
            _drop_pages(self._mmap, start, size)
        checksum = zlib.crc32(data)
        generation = self._generation + 1
        u64 = self._u64
        u32 = self._u32
        u64[_U64_SEQUENCE] = self._sequence + 1
        u64[_U64_GENERATION] = generation
        u32[_U32_ACTIVE_SLOT] = target_slot
        u64[_U64_PAYLOAD_LENGTH] = size
        u32[_U32_CHECKSUM] = checksum
        u64[_U64_SEQUENCE] = self._sequence + 2
        self._sequence += 2
        self._generation = generation
        self._active_slot = target_slot
        return generation

    def _reserve(self, start: int, size: int) -> None:
        # Touching a tmpfs page that cannot be allocated raises SIGBUS and would kill the supervisor.
        if not self._fallocate_supported:
            return
        try:
            os.posix_fallocate(self._fd, start, size)
        except OSError as exc:
            if exc.errno in _FALLOCATE_UNSUPPORTED:
                self._fallocate_supported = False
                return
            raise TableTooLarge(
                f"no room in {SHM_DIR} for a table of {size} bytes ({exc.strerror}); "
                f"generation {self._generation} stays served",
                size,
                self._slot_capacity,
            ) from exc

    def close(self) -> None:
        """Unmap and unlink. Readers keep their mappings; new attaches fail."""
        if self._closed:
            return
        self._closed = True
        self._u64.release()
        self._u32.release()
        self._mmap.close()
        try:
            os.unlink(os.path.join(SHM_DIR, self._name))
        except FileNotFoundError:
            pass
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TableReader:
    """A worker's side. Never writes: the segment is mapped read-only."""

    def __init__(self, name: str, mapping: mmap.mmap, slot_capacity_bytes: int) -> None:
        # Use TableReader.attach().
        self._name = name
        self._mmap = mapping
        self._slot_capacity = slot_capacity_bytes
        self._slot_starts = (HEADER_BYTES, HEADER_BYTES + slot_capacity_bytes)
        self._u64 = memoryview(mapping)[:_HEADER_FIELDS_BYTES].cast("Q")
        self._u32 = memoryview(mapping)[:_HEADER_FIELDS_BYTES].cast("I")

    @classmethod
    def attach(cls, name: str) -> Self:
        path = _segment_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise TableSegmentError(f"no table segment {path}") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:
                raise TableSegmentError(f"{path} is {size} bytes, shorter than the {HEADER_BYTES}-byte header")
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)  # the mapping keeps the segment alive
        try:
            slot_capacity = _check_header(path, mapping, size)
        except BaseException:
            mapping.close()
            raise
        return cls(name, mapping, slot_capacity)

    @property
    def name(self) -> str:
        return self._name

    @property
    def slot_capacity_bytes(self) -> int:
        return self._slot_capacity

    def current_generation(self) -> int:
        """The published generation, unverified: one 8-byte load, for the per-request 'did it change?' check."""
        return self._u64[_U64_GENERATION]

    @property
    def generation(self) -> int:
        """Same as current_generation()."""
        return self._u64[_U64_GENERATION]

    def read(self, timeout_s: float = READ_TIMEOUT_S) -> tuple[int, bytes]:
        """A verified copy of the active table: (generation, payload). Raises TableReadError after timeout_s."""
        u64 = self._u64
        u32 = self._u32
        mapping = self._mmap
        attempts = 0
        deadline = None
        while True:
            sequence = u64[_U64_SEQUENCE]
            if sequence & 1:
                problem = "write in progress (odd sequence)"
            else:
                generation = u64[_U64_GENERATION]
                active_slot = u32[_U32_ACTIVE_SLOT]
                length = u64[_U64_PAYLOAD_LENGTH]
                checksum = u32[_U32_CHECKSUM]
                if active_slot > 1 or length > self._slot_capacity:
                    payload = None
                else:
                    start = self._slot_starts[active_slot]
                    payload = mapping[start : start + length]
                if u64[_U64_SEQUENCE] != sequence:
                    problem = "sequence changed during the copy"
                elif payload is None:
                    problem = f"header out of range (active slot {active_slot}, length {length})"
                elif zlib.crc32(payload) != checksum:
                    problem = "checksum mismatch"
                else:
                    _drop_pages(mapping, start, length)
                    return generation, payload
            attempts += 1
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout_s
            elif now >= deadline:
                raise TableReadError(
                    f"no consistent table in {SHM_DIR}/{self._name} after {attempts} attempts in {timeout_s}s, "
                    f"last: {problem}; the writer died mid-publish or the segment is corrupt"
                )
            if attempts > READ_SPIN_ATTEMPTS:
                time.sleep(READ_RETRY_SLEEP_S)

    def close(self) -> None:
        """Unmap; the segment stays (it belongs to the writer)."""
        if self._mmap.closed:
            return
        self._u64.release()
        self._u32.release()
        self._mmap.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _reserve_header(fd: int) -> None:
    try:
        os.posix_fallocate(fd, 0, HEADER_BYTES)
    except OSError as exc:
        if exc.errno not in _FALLOCATE_UNSUPPORTED:
            raise


def _drop_pages(mapping: mmap.mmap, start: int, length: int) -> None:
    """Unmap [start, start + length) from this process's page tables; the segment keeps the data (MAP_SHARED)."""
    if length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    aligned = start - start % _PAGE_BYTES
    mapping.madvise(mmap.MADV_DONTNEED, aligned, length + start - aligned)


def _check_header(path: str, mapping: mmap.mmap, size: int) -> int:
    """The slot capacity of a well-formed header; TableSegmentError naming the first problem otherwise."""
    magic = mapping[0 : len(MAGIC)]
    if magic != MAGIC:
        raise TableSegmentError(
            f"{path} is not an edge table segment: magic {magic!r}, expected {MAGIC!r} "
            f"(or its writer is still creating it)"
        )
    version = int.from_bytes(mapping[8:12], "little")
    if version != LAYOUT_VERSION:
        raise TableSegmentError(f"{path} has layout version {version}; this edge reads version {LAYOUT_VERSION}")
    slot_capacity = int.from_bytes(mapping[16:24], "little")
    expected_size = HEADER_BYTES + 2 * slot_capacity
    if slot_capacity == 0 or size != expected_size:
        raise TableSegmentError(
            f"{path} is {size} bytes but its header says 2 slots of {slot_capacity} bytes ({expected_size} bytes)"
        )
    return slot_capacity


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True


def remove_stale_segments() -> list[str]:
    """Unlink our segments (`edge-<pid>-…`) whose pid is dead and that no live process holds; returns their names.

    The supervisor calls this at start, so a SIGKILLed supervisor leaks nothing past the next start. A zombie
    counts as alive until its parent reaps it. Segments of other users, of live pids and with a held lock are kept.
    """
    removed = []
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return removed
    for name in entries:
        pid = segment_owner_pid(name)
        if pid is None or _pid_alive(pid):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # already gone, a symlink, or not ours to open
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer holds it
                continue
            try:
                if os.stat(path, follow_symlinks=False).st_ino != info.st_ino:
                    continue
                os.unlink(path)
            except FileNotFoundError:  # another supervisor removed it first
                continue
            removed.append(name)
        finally:
            os.close(fd)
    return sorted(removed)
