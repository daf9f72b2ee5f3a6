"""Processes that tests/edge/test_shm.py starts, so writer and readers really are separate processes.

    python shm_helper.py hold                 create a table segment, print its name, sleep until killed
    python shm_helper.py write MAX_SECONDS    create a segment, print its name, republish until SIGTERM
    python shm_helper.py read NAME SECONDS    read() back to back for SECONDS, print a JSON verdict

Stress tables prove their own integrity, independent of the segment's crc32:
    generation u64 LE | body_length u64 LE | body (random bytes) | blake2b-128 of everything before it
"""

import hashlib
import json
import os
import random
import signal
import struct
import sys
import time

from edge.shm import TableReader, TableReadError, TableWriter

TABLE_HEAD = struct.Struct("<QQ")
DIGEST_BYTES = 16
MIN_BODY_BYTES = 1024
MAX_BODY_BYTES = 2 * 1024 * 1024
STRESS_SLOT_CAPACITY_BYTES = TABLE_HEAD.size + MAX_BODY_BYTES + DIGEST_BYTES
HOLD_MAX_S = 60.0
REPORTED_PROBLEMS = 10


def make_table(generation: int, rng: random.Random, noise: memoryview) -> bytes:
    size = rng.randint(MIN_BODY_BYTES, MAX_BODY_BYTES)
    start = rng.randrange(len(noise) - size)
    head = TABLE_HEAD.pack(generation, size)
    body = noise[start : start + size]
    digest = hashlib.blake2b(head, digest_size=DIGEST_BYTES)
    digest.update(body)
    return b"".join((head, body, digest.digest()))


def check_table(generation: int, payload: bytes) -> str | None:
    """None if `payload` is exactly the table the writer published as `generation`, else what is wrong."""
    if len(payload) < TABLE_HEAD.size + DIGEST_BYTES:
        return f"{len(payload)} bytes, too short"
    embedded_generation, size = TABLE_HEAD.unpack_from(payload)
    if embedded_generation != generation:
        return f"payload of generation {embedded_generation}"
    if len(payload) != TABLE_HEAD.size + size + DIGEST_BYTES:
        return f"{len(payload)} bytes, header says body of {size}"
    if hashlib.blake2b(payload[:-DIGEST_BYTES], digest_size=DIGEST_BYTES).digest() != payload[-DIGEST_BYTES:]:
        return "digest mismatch"
    return None


def hold() -> None:
    writer = TableWriter.create(slot_capacity_bytes=4096)
    writer.publish(b"held")
    print(writer.name, flush=True)
    time.sleep(HOLD_MAX_S)  # the test SIGKILLs us long before
    writer.close()


def write(max_seconds: float) -> None:
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    rng = random.Random()
    noise = memoryview(os.urandom(2 * MAX_BODY_BYTES))
    with TableWriter.create(slot_capacity_bytes=STRESS_SLOT_CAPACITY_BYTES) as writer:
        writer.publish(make_table(1, rng, noise))
        print(writer.name, flush=True)
        deadline = time.monotonic() + max_seconds
        while not stopping and time.monotonic() < deadline:
            writer.publish(make_table(writer.generation + 1, rng, noise))
        print(json.dumps({"published": writer.generation, "stopped_by_signal": bool(stopping)}), flush=True)


def read(name: str, seconds: float) -> None:
    reads = 0
    torn: list[str] = []
    failed: list[str] = []
    backwards: list[str] = []
    generations = set()
    last_generation = 0
    with TableReader.attach(name) as reader:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                generation, payload = reader.read()
            except TableReadError as exc:
                failed.append(str(exc))
                continue
            reads += 1
            problem = check_table(generation, payload)
            if problem is not None:
                torn.append(f"generation {generation}: {problem}")
            if generation < last_generation:
                backwards.append(f"read {generation} after {last_generation}")
            fast_generation = reader.current_generation()
            if fast_generation < generation:
                backwards.append(f"current_generation() {fast_generation} after read() {generation}")
            last_generation = generation
            generations.add(generation)
    verdict = {
        "reads": reads,
        "generations_seen": len(generations),
        "torn_count": len(torn),
        "failed_count": len(failed),
        "backwards_count": len(backwards),
        "torn": torn[:REPORTED_PROBLEMS],
        "failed": failed[:REPORTED_PROBLEMS],
        "backwards": backwards[:REPORTED_PROBLEMS],
    }
    print(json.dumps(verdict), flush=True)


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "hold":
        hold()
    elif role == "write":
        write(float(sys.argv[2]))
    elif role == "read":
        read(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(f"unknown role {role!r}")
