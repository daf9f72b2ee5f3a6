"""The attack soak (issue 10): generated and mutated requests at `edge run --workers 2` while a legitimate client
runs, bounded in count and time.

Asserted:
- no worker PID changes, and nothing was counted as an unexpected error (edge_connection_errors_total);
- every attack connection gets its answer or a close within ATTACK_ANSWER_S;
- every legitimate request succeeds;
- the backend never receives a request the gateway did not route: every request carries a marker in its path,
  and every marked request the backend saw is in the gateway's access log as a request it sent upstream — a
  request hidden in a body (`/smuggled/…`) only ever reaches the backend as a request the gateway itself read
  (when a mutation took the outer request's framing away, making it a pipelined request of its own).
The figures (connections, requests, statuses) are printed for the notes (`pytest -s`).
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections import Counter

import pytest

from tests.e2e.fixed_backend import FixedBackend
from tests.e2e.harness import EdgeProcess, http_get
from tests.security.tools import codec, codec_args, gateway, route_all, static_service, statuses
from workers.paths import normalize_path, split_target

pytestmark = pytest.mark.e2e

HOST = "app.example.com"
ATTACK_CONNECTIONS = 2000
ATTACKERS = 4
ATTACK_ANSWER_S = 5.0
SEED = 10
INTERESTING = b"\r\n \t:;,=\"\\\x00\x7f\x80\xff0aZ-_/?#%@\x0b"
FORBIDDEN_ADMIN = """\
  - match: [{uri: {prefix: /admin}}]
    directResponse: {status: 403, body: {string: "no admin from outside"}}
"""


def templates(n: int) -> list[bytes]:
    """Requests of every framing kind, the hardening issue's cases among them; `n` marks them."""
    smuggled = b"GET /smuggled/%d HTTP/1.1\r\nHost: app.example.com\r\n\r\n" % n
    chunked_smuggle = b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
    return [
        b"GET /atk/%d HTTP/1.1\r\nHost: app.example.com\r\n\r\n" % n,
        b"POST /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: %d\r\n\r\n" % (n, len(smuggled)) + smuggled,
        b"POST /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nConnection: content-length\r\nContent-Length: %d\r\n\r\n" % (n, len(smuggled)) + smuggled,
        b"POST /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n" % n + chunked_smuggle,
        b"POST /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" % n + chunked_smuggle,
        b"POST /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nHost: evil.example\r\n\r\n" % n,
        b"GET /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nHost: evil.example\r\n\r\n" % n,
        b"GET /atk/%d HTTP/1.1\r\nHost: x:" % n + b"9" * 5000 + b"\r\n\r\n",
        b"GET /admin/atk/%d HTTP/1.1\r\nHost: app.example.com\r\n\r\n" % n,
        b"GET /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nX: a\r\n b\r\n\r\n" % n,
        b"GET /atk/%d HTTP/1.1\nHost: app.example.com\n\n" % n,
        b"GET /atk/%d HTTP/2.0\r\nHost: app.example.com\r\n\r\n" % n,
        b"POST /atk/%d HTTP/1.0\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n" % n + chunked_smuggle,
        b"POST /atk/%d HTTP/1.1\r\nHost: app.example.com\r\nTransfer-Encoding: chunked\r\n\r\n6 ; q=\"x y\"\r\nhello!\r\n0\r\n\r\n" % n,
        b"GET /atk/%d HTTP/1.1\r\nHost: app.example.com\r\n\r\nGET /atk/%d/second HTTP/1.1\r\nHost: app.example.com\r\n\r\n" % (n, n),
    ]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(0, 4)):
        if not out:
            break
        i = rng.randrange(len(out))
        byte = rng.choice(INTERESTING) if rng.random() < 0.7 else rng.randrange(256)
        op = rng.randrange(4)
        if op == 0:
            out[i] = byte
        elif op == 1:
            out.insert(i, byte)
        elif op == 2:
            del out[i]
        else:
            out[i:i] = out[i : i + rng.randint(1, 8)]
    return bytes(out)


def served_paths(answer: bytes) -> set[str]:
    """The paths the backend answered on this connection (its JSON bodies name them)."""
    return {json.loads(m)["path"] for m in re.findall(rb'\{"instance": "be"[^}]*\}', answer)}


@codec
def test_attack_soak(tmp_path, codec):
    rng = random.Random(SEED)
    attacks = []
    for n in range(ATTACK_CONNECTIONS):
        base = rng.choice(templates(n))
        attacks.append(base if rng.random() < 0.3 else mutate(rng, base))
    config = {"gw.yaml": gateway(HOST), "vs.yaml": route_all(HOST, "be.local", FORBIDDEN_ADMIN)}
    with FixedBackend("be") as backend:
        config["se.yaml"] = static_service("be.local", backend.port)
        access_log = tmp_path / "access.json"
        args = (*codec_args(codec), "--request-headers-timeout", "2", "--access-log", str(access_log), "--access-log-format", "json")
        with EdgeProcess(tmp_path, config, gateway_ports=(80,), extra_args=args) as edge:
            port = edge.port(80)
            pids = edge.worker_pids()
            legit: list[tuple[str, int]] = []
            answered: set[str] = set()
            slow: list[bytes] = []
            codes: Counter = Counter()
            lock = threading.Lock()
            stop = threading.Event()
            next_attack = iter(range(ATTACK_CONNECTIONS))

            def legitimate() -> None:
                n = 0
                while not stop.is_set():
                    path = f"/legit/{n}"
                    try:
                        code, body, _ = http_get(port, path, host=HOST, timeout_s=5)
                        ok = code == 200 and f'"path": "{path}"'.encode() in body
                    except OSError:
                        ok = False
                    legit.append((path, ok))
                    n += 1
                    time.sleep(0.02)

            def attacker() -> None:
                while True:
                    with lock:
                        i = next(next_attack, None)
                    if i is None:
                        return
                    data = attacks[i]
                    answer = b""
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=ATTACK_ANSWER_S) as sock:
                            sock.sendall(data)
                            sock.shutdown(socket.SHUT_WR)
                            while chunk := sock.recv(65536):
                                answer += chunk
                    except TimeoutError:
                        with lock:
                            slow.append(data)
                        continue
                    except ConnectionResetError:
                        pass  # a close is an answer too
                    with lock:
                        answered.update(served_paths(answer))
                        codes.update(statuses(answer) or ["closed"])

            client = threading.Thread(target=legitimate, daemon=True)
            client.start()
            started = time.monotonic()
            threads = [threading.Thread(target=attacker, daemon=True) for _ in range(ATTACKERS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            elapsed = time.monotonic() - started
            stop.set()
            client.join(10)

            seen = [s.path for s in backend.requests()]
            _, metrics, _ = http_get(edge.metrics_port, "/stats/prometheus")
            errors = re.search(rb"^edge_connection_errors_total (\S+)$", metrics, re.M)
            print(
                f"\nattack soak ({codec}): {ATTACK_CONNECTIONS} attack connections in {elapsed:.1f} s, statuses {dict(codes)}; "
                f"{len(legit)} legitimate requests, {sum(not ok for _, ok in legit)} failed; backend saw {len(seen)} requests; "
                f"worker PIDs {pids} → {edge.worker_pids()}"
            )
            assert not any(t.is_alive() for t in threads)
            assert slow == [], f"{len(slow)} attack connections got neither an answer nor a close within {ATTACK_ANSWER_S} s: {slow[:3]!r}"
            assert edge.worker_pids() == pids
            assert legit and all(ok for _, ok in legit), [p for p, ok in legit if not ok][:5]
            assert errors is not None and float(errors.group(1)) == 0
            edge.stop()  # flushes the access log
            routed = set()
            for line in access_log.read_text().splitlines():
                record = json.loads(line)
                if record["upstream_host"] is not None:  # sent upstream; the log keeps the target as the client wrote it
                    _, path, query = split_target(record["path"].encode("latin-1"))
                    routed.add((normalize_path(path) + (b"?" + query if query else b"")).decode("latin-1"))
            unrouted = [p for p in seen if p not in routed]
            assert unrouted == []
            assert answered <= routed
            assert not [p for p in seen if p.startswith("/admin")]
            assert sorted(p for p in seen if p.startswith("/legit")) == sorted(p for p, _ in legit)
