"""Readiness cannot be starved remotely (issue 10, item 4).

Before: the status port (15021, exposed to load balancers) took 256 connections in all and its 10 s timeout was
per read, so 256 sockets each sending a byte every 5 s kept /healthz/ready unreachable for as long as they
lasted, and the load balancer took the replica out. Now a request must be whole within 5 s whatever trickles in,
and a new connection beyond the limit takes the place of the connection that has waited longest.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.e2e.harness import EdgeProcess, http_get
from tests.security.tools import gateway

pytestmark = pytest.mark.e2e

TRICKLERS = 300  # more than the status port's 256 connections
TRICKLE_FOR_S = 7.0


def test_slow_connections_cannot_starve_the_readiness_probe(tmp_path):
    with EdgeProcess(tmp_path, {"gw.yaml": gateway()}, gateway_ports=(80,)) as edge:
        stop = threading.Event()
        socks: list[socket.socket] = []
        closed_at: dict[int, float] = {}
        started = time.monotonic()
        for _ in range(TRICKLERS):
            sock = socket.create_connection(("127.0.0.1", edge.status_port), timeout=5)
            sock.sendall(b"G")
            socks.append(sock)

        def trickle() -> None:
            while not stop.is_set():
                for i, sock in enumerate(socks):
                    if i in closed_at:
                        continue
                    try:
                        sock.sendall(b"E")  # one byte a second: never a whole request
                    except OSError:
                        closed_at[i] = time.monotonic() - started
                stop.wait(1.0)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        probes = []
        try:
            while time.monotonic() - started < TRICKLE_FOR_S:
                # A probe that finds no room waits: the client's timeout (2 s) fails the test then.
                probes.append(http_get(edge.status_port, "/healthz/ready", timeout_s=2.0)[0])
                time.sleep(0.5)
        finally:
            stop.set()
            thread.join(5)
            for sock in socks:
                sock.close()
        assert probes and all(code == 200 for code in probes), probes
        # Every trickling connection was cut: evicted by a newer one, or at its request deadline (5 s).
        assert len(closed_at) == TRICKLERS
