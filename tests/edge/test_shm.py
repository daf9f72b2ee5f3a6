import array
import json
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest

from edge.shm import (
    DEFAULT_SLOT_CAPACITY_BYTES,
    HEADER_BYTES,
    LAYOUT_VERSION,
    MAGIC,
    SHM_DIR,
    TableReader,
    TableReadError,
    TableSegmentError,
    TableTooLarge,
    TableWriter,
    new_segment_name,
    remove_stale_segments,
    segment_owner_pid,
)

HELPER = Path(__file__).with_name("shm_helper.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_SLOT_BYTES = 4096
# The documented header: magic, version, reserved, capacity, sequence, generation, active slot, reserved,
# payload length, checksum, reserved.
HEADER_FIELDS = struct.Struct("<8sIIQQQIIQII")
SEQUENCE_OFFSET = 24
ACTIVE_SLOT_OFFSET = 40
QUICK_TIMEOUT_S = 0.05
PROCESS_TIMEOUT_S = 20.0
STRESS_SECONDS = 3.0
STRESS_READERS = 3
STRESS_WRITER_MAX_S = STRESS_SECONDS + PROCESS_TIMEOUT_S
MIN_GENERATIONS_PER_READER = 30


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def poke(name: str, offset: int, data: bytes) -> None:
    """Write raw bytes into a segment, as a crashed writer or a stray process could."""
    fd = os.open(shm_path(name), os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def raw_header(name: str) -> tuple:
    fd = os.open(shm_path(name), os.O_RDONLY)
    try:
        return HEADER_FIELDS.unpack(os.pread(fd, HEADER_FIELDS.size, 0))
    finally:
        os.close(fd)


def unlink_if_present(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass


@pytest.fixture
def writer():
    table_writer = TableWriter.create(slot_capacity_bytes=SMALL_SLOT_BYTES)
    try:
        yield table_writer
    finally:
        table_writer.close()


@pytest.fixture
def processes():
    """Helper processes; whatever still runs at teardown is SIGKILLed and reaped, and its segments removed."""
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    killed = False
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            killed = True
        proc.wait(PROCESS_TIMEOUT_S)
        proc.stdout.close()
        proc.stderr.close()
    if killed:
        remove_stale_segments()


def first_line(proc: subprocess.Popen) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], PROCESS_TIMEOUT_S)
    assert ready, f"helper pid {proc.pid} printed nothing in {PROCESS_TIMEOUT_S}s"
    line = proc.stdout.readline().strip()
    assert line, f"helper pid {proc.pid} exited early: {proc.stderr.read()}"
    return line


def finish(proc: subprocess.Popen) -> dict:
    proc.wait(PROCESS_TIMEOUT_S)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, f"helper pid {proc.pid} exited {proc.returncode}: {err}"
    return json.loads(out)


# --- publish and read -------------------------------------------------------------------------------------------


def test_round_trip(writer):
    assert writer.publish(b"routing table v1") == 1
    with TableReader.attach(writer.name) as reader:
        assert reader.read() == (1, b"routing table v1")


def test_fresh_segment_serves_generation_zero_empty_table(writer):
    with TableReader.attach(writer.name) as reader:
        assert reader.current_generation() == 0
        assert reader.read() == (0, b"")


def test_generation_increments_and_the_latest_table_is_served(writer):
    with TableReader.attach(writer.name) as reader:
        for expected_generation in range(1, 8):
            payload = f"table {expected_generation}".encode() * expected_generation
            assert writer.publish(payload) == expected_generation
            assert writer.generation == expected_generation
            assert reader.current_generation() == expected_generation
            assert reader.generation == expected_generation
            assert reader.read() == (expected_generation, payload)


@pytest.mark.parametrize("sizes", [[3000, 10, 2000, 1, 4096, 0, 7], [0, 0, 5, 0]])
def test_each_read_returns_exactly_the_published_length(writer, sizes):
    # Slots are reused every other publish; a shorter table must not pick up the tail of an older, longer one.
    with TableReader.attach(writer.name) as reader:
        for size in sizes:
            payload = secrets.token_bytes(size)
            generation = writer.publish(payload)
            assert reader.read() == (generation, payload)


def test_empty_payload(writer):
    writer.publish(b"something")
    assert writer.publish(b"") == 2
    with TableReader.attach(writer.name) as reader:
        assert reader.read() == (2, b"")


def test_payload_exactly_at_capacity_in_both_slots(writer):
    first, second = secrets.token_bytes(SMALL_SLOT_BYTES), secrets.token_bytes(SMALL_SLOT_BYTES)
    with TableReader.attach(writer.name) as reader:
        writer.publish(first)
        assert reader.read() == (1, first)
        writer.publish(second)
        assert reader.read() == (2, second)


def test_too_large_payload_raises_and_the_previous_table_stays(writer):
    writer.publish(b"last good table")
    too_large = r"4097 bytes exceeds the 4096-byte slot .*generation 1 stays served"
    with pytest.raises(TableTooLarge, match=too_large) as info:
        writer.publish(b"x" * (SMALL_SLOT_BYTES + 1))
    assert (info.value.payload_bytes, info.value.slot_capacity_bytes) == (SMALL_SLOT_BYTES + 1, SMALL_SLOT_BYTES)
    assert writer.generation == 1
    with TableReader.attach(writer.name) as reader:
        assert reader.read() == (1, b"last good table")
        assert writer.publish(b"next") == 2
        assert reader.read() == (2, b"next")


def test_any_bytes_like_payload(writer):
    with TableReader.attach(writer.name) as reader:
        writer.publish(bytearray(b"from a bytearray"))
        assert reader.read() == (1, b"from a bytearray")
        writer.publish(memoryview(b"__from a memoryview slice__")[2:-2])
        assert reader.read() == (2, b"from a memoryview slice")
        words = array.array("I", [1, 2, 3])
        writer.publish(words)
        assert reader.read() == (3, words.tobytes())


def test_readers_attached_before_and_after_publishes_see_the_latest(writer):
    early = TableReader.attach(writer.name)
    try:
        writer.publish(b"one")
        writer.publish(b"two")
        late = TableReader.attach(writer.name)
        try:
            writer.publish(b"three")
            assert early.read() == (3, b"three")
            assert late.read() == (3, b"three")
            assert early.current_generation() == late.current_generation() == 3
        finally:
            late.close()
    finally:
        early.close()


def test_header_bytes_match_the_documented_layout(writer):
    writer.publish(b"first")
    writer.publish(b"second table")
    magic, version, reserved1, capacity, sequence, generation, active, reserved2, length, checksum, reserved3 = (
        raw_header(writer.name)
    )
    assert (magic, version, capacity) == (MAGIC, LAYOUT_VERSION, SMALL_SLOT_BYTES)
    assert (sequence, generation, active) == (4, 2, 0)  # two flips; slot B, then back to slot A
    assert (length, checksum) == (len(b"second table"), zlib.crc32(b"second table"))
    assert reserved1 == reserved2 == reserved3 == 0
    with open(shm_path(writer.name), "rb") as segment:
        segment.seek(HEADER_BYTES)
        assert segment.read(len(b"second table")) == b"second table"
        segment.seek(HEADER_BYTES + SMALL_SLOT_BYTES)
        assert segment.read(len(b"first")) == b"first"
    assert os.stat(shm_path(writer.name)).st_size == HEADER_BYTES + 2 * SMALL_SLOT_BYTES


def test_default_slots_are_large_but_only_touched_pages_are_allocated():
    with TableWriter.create() as big:
        assert big.slot_capacity_bytes == DEFAULT_SLOT_CAPACITY_BYTES == 64 * 1024 * 1024
        big.publish(b"x" * 1000)
        info = os.stat(shm_path(big.name))
        assert info.st_size == HEADER_BYTES + 2 * DEFAULT_SLOT_CAPACITY_BYTES
        assert info.st_blocks * 512 <= 16 * 1024  # the header page and one payload page, not 128 MiB



def rss_shmem_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssShmem:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssShmem in /proc/self/status")


def test_writer_and_reader_do_not_keep_the_payload_pages_mapped():
    # tmpfs holds the table once; the processes that copied it in or out drop its pages from their RSS.
    payload = secrets.token_bytes(8 * 1024 * 1024)
    with TableWriter.create() as big:
        before = rss_shmem_bytes()
        for _ in range(2):  # both slots
            big.publish(payload)
        with TableReader.attach(big.name) as reader:
            assert reader.read() == (2, payload)
            assert reader.read() == (2, payload)  # the dropped pages fault back in from the segment
            assert rss_shmem_bytes() - before < 2 * 1024 * 1024
        assert os.stat(shm_path(big.name)).st_blocks * 512 >= 2 * len(payload)  # the data stays in tmpfs

# --- verification: never torn data -------------------------------------------------------------------------------


def test_read_never_returns_a_payload_that_fails_its_checksum(writer):
    writer.publish(b"A" * 100)
    active_slot = raw_header(writer.name)[6]
    poke(writer.name, HEADER_BYTES + active_slot * SMALL_SLOT_BYTES + 50, b"B")
    with TableReader.attach(writer.name) as reader:
        with pytest.raises(TableReadError, match="checksum mismatch"):
            reader.read(timeout_s=QUICK_TIMEOUT_S)
        assert reader.current_generation() == 1


def test_read_gives_up_clearly_when_a_writer_died_mid_flip(writer):
    writer.publish(b"table")
    poke(writer.name, SEQUENCE_OFFSET, struct.pack("<Q", 3))
    with TableReader.attach(writer.name) as reader:
        with pytest.raises(TableReadError, match=r"write in progress .*died mid-publish"):
            reader.read(timeout_s=QUICK_TIMEOUT_S)


def test_read_waits_out_a_flip_in_progress(writer):
    writer.publish(b"table")
    poke(writer.name, SEQUENCE_OFFSET, struct.pack("<Q", 3))
    finish_flip = threading.Timer(QUICK_TIMEOUT_S, poke, (writer.name, SEQUENCE_OFFSET, struct.pack("<Q", 2)))
    finish_flip.start()
    try:
        with TableReader.attach(writer.name) as reader:
            assert reader.read(timeout_s=PROCESS_TIMEOUT_S) == (1, b"table")
    finally:
        finish_flip.cancel()
        finish_flip.join()


def test_out_of_range_header_is_retried_not_trusted(writer):
    writer.publish(b"table")
    poke(writer.name, ACTIVE_SLOT_OFFSET, struct.pack("<I", 7))
    with TableReader.attach(writer.name) as reader:
        with pytest.raises(TableReadError, match="header out of range"):
            reader.read(timeout_s=QUICK_TIMEOUT_S)


# --- attach and close ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "data", "message"),
    [
        (0, b"NOTEDGE!", r"not an edge table segment: magic b'NOTEDGE!', expected b'EDGETBL1'"),
        (0, b"\0" * 8, r"not an edge table segment"),
        (8, struct.pack("<I", 99), r"layout version 99; this edge reads version 1"),
        (16, struct.pack("<Q", 8192), r"header says 2 slots of 8192 bytes"),
        (16, struct.pack("<Q", 0), r"header says 2 slots of 0 bytes"),
    ],
)
def test_attach_rejects_a_bad_header(writer, offset, data, message):
    poke(writer.name, offset, data)
    with pytest.raises(TableSegmentError, match=message):
        TableReader.attach(writer.name)


def test_attach_rejects_a_file_shorter_than_the_header():
    name = new_segment_name("table")
    with open(shm_path(name), "xb") as segment:
        segment.write(MAGIC)
    try:
        with pytest.raises(TableSegmentError, match=r"is 8 bytes, shorter than the 4096-byte header"):
            TableReader.attach(name)
    finally:
        unlink_if_present(name)


def test_attach_to_a_missing_segment():
    with pytest.raises(TableSegmentError, match="no table segment /dev/shm/edge-1-00000000-missing"):
        TableReader.attach("edge-1-00000000-missing")


@pytest.mark.parametrize("name", ["", "a/b", "../etc", ".hidden", "x" * 300, b"edge-1-ab-table"])
def test_bad_segment_names_are_refused(name):
    with pytest.raises(ValueError, match="bad shared-memory segment name"):
        TableReader.attach(name)
    with pytest.raises(ValueError, match="bad shared-memory segment name"):
        TableWriter.create(name=name, slot_capacity_bytes=SMALL_SLOT_BYTES)


@pytest.mark.parametrize("capacity", [0, -1, 1.5])
def test_bad_slot_capacity_is_refused(capacity):
    with pytest.raises(ValueError, match="slot_capacity_bytes must be a positive int"):
        TableWriter.create(slot_capacity_bytes=capacity)


def test_reader_close_keeps_the_segment_writer_close_removes_it():
    table_writer = TableWriter.create(slot_capacity_bytes=SMALL_SLOT_BYTES)
    try:
        table_writer.publish(b"kept")
        first = TableReader.attach(table_writer.name)
        first.close()
        first.close()
        assert os.path.exists(shm_path(table_writer.name))
        survivor = TableReader.attach(table_writer.name)
    finally:
        table_writer.close()
    table_writer.close()
    try:
        assert not os.path.exists(shm_path(table_writer.name))
        assert survivor.read() == (1, b"kept")  # an existing mapping outlives the unlink
        with pytest.raises(TableSegmentError, match="no table segment"):
            TableReader.attach(table_writer.name)
        with pytest.raises(ValueError, match="closed TableWriter"):
            table_writer.publish(b"late")
    finally:
        survivor.close()


def test_create_refuses_an_existing_name(writer):
    with pytest.raises(FileExistsError):
        TableWriter.create(name=writer.name, slot_capacity_bytes=SMALL_SLOT_BYTES)
    with TableReader.attach(writer.name) as reader:
        assert reader.read() == (0, b"")


# --- names and stale cleanup --------------------------------------------------------------------------------------


def test_new_names_carry_our_pid():
    name = new_segment_name("table")
    assert name.startswith(f"edge-{os.getpid()}-") and name.endswith("-table")
    assert segment_owner_pid(name) == os.getpid()
    with TableWriter.create(slot_capacity_bytes=SMALL_SLOT_BYTES) as default_named:
        assert segment_owner_pid(default_named.name) == os.getpid()


@pytest.mark.parametrize(
    ("name", "pid"),
    [
        ("edge-1234-0a1b2c3d-table", 1234),
        ("edge-4194304-ff-stats", 4194304),
        ("edge-1-0-table", 1),
        ("edge-0-0a1b2c3d-table", None),  # pid 0 would make os.kill probe our own process group
        ("edge-01234-0a1b2c3d-table", None),
        ("edge-12345678-0a1b2c3d-table", None),  # beyond Linux pid_max
        ("edge-1234-XYZ-table", None),
        ("edge-1234-0a1b2c3d", None),
        ("edge-1234-0a1b2c3d-table.bak", None),
        ("edge--0a1b2c3d-table", None),
        ("sem.edge-1234-0a1b2c3d-table", None),
        ("other-1234-0a1b2c3d-table", None),
    ],
)
def test_segment_owner_pid(name, pid):
    assert segment_owner_pid(name) == pid


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(PROCESS_TIMEOUT_S)
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)
    return child.pid


def test_stale_cleanup_removes_the_segment_of_a_sigkilled_process_only(processes, writer):
    holder = processes("hold")
    stale_name = first_line(holder)
    assert segment_owner_pid(stale_name) == holder.pid
    holder.kill()
    holder.wait(PROCESS_TIMEOUT_S)  # a zombie still counts as alive
    assert os.path.exists(shm_path(stale_name))
    writer.publish(b"ours, alive")
    try:
        removed = remove_stale_segments()
        assert stale_name in removed
        assert not os.path.exists(shm_path(stale_name))
        assert writer.name not in removed
        with TableReader.attach(writer.name) as reader:
            assert reader.read() == (1, b"ours, alive")
        assert stale_name not in remove_stale_segments()
    finally:
        unlink_if_present(stale_name)


def test_stale_cleanup_keeps_a_dead_pids_segment_that_a_live_process_holds():
    # The lock guards against pid confusion, e.g. a writer in another pid namespace sharing /dev/shm.
    name = f"edge-{dead_pid()}-{secrets.token_hex(4)}-table"
    with TableWriter.create(name=name, slot_capacity_bytes=SMALL_SLOT_BYTES) as held:
        held.publish(b"held")
        assert name not in remove_stale_segments()
        with TableReader.attach(name) as reader:
            assert reader.read() == (1, b"held")


def test_stale_cleanup_keeps_an_unlocked_segment_of_a_live_pid():
    os.kill(1, 0)  # pid 1 exists in every pid namespace
    name = f"edge-1-{secrets.token_hex(4)}-table"
    with open(shm_path(name), "xb"):
        pass
    try:
        assert name not in remove_stale_segments()
        assert os.path.exists(shm_path(name))
    finally:
        unlink_if_present(name)


# --- one writer process, several reader processes -------------------------------------------------------------------


def test_concurrent_republishing_never_yields_a_torn_table(processes):
    writer_proc = processes("write", str(STRESS_WRITER_MAX_S))
    name = first_line(writer_proc)
    try:
        readers = [processes("read", name, str(STRESS_SECONDS)) for _ in range(STRESS_READERS)]
        verdicts = [finish(reader) for reader in readers]
    finally:
        if writer_proc.poll() is None:
            writer_proc.send_signal(signal.SIGTERM)
        writer_proc.wait(PROCESS_TIMEOUT_S)
        leaked = os.path.exists(shm_path(name))
        unlink_if_present(name)
    writer_verdict = finish(writer_proc)
    assert not leaked, "the writer process did not unlink its segment"
    assert writer_verdict["stopped_by_signal"], "the writer stopped before the readers did"
    for verdict in verdicts:
        assert verdict["torn_count"] == 0, verdict["torn"]
        assert verdict["failed_count"] == 0, verdict["failed"]
        assert verdict["backwards_count"] == 0, verdict["backwards"]
        assert verdict["generations_seen"] >= MIN_GENERATIONS_PER_READER, (verdict, writer_verdict)
    print(f"writer published {writer_verdict['published']}; readers: {verdicts}")
