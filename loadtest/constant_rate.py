# Open-loop (constant-rate) HTTP/1.1 load generator with latency measured from the SCHEDULED send time.
#
# Request i is due at t0 + i/rate, whatever happened before it. It goes out on the first idle
# connection; when every connection is busy it waits in a FIFO backlog, and that wait is part of its
# latency. So a server that stalls shows up as large latencies for every request scheduled during the
# stall, not as fewer samples: no coordinated omission (the closed-loop error of wrk/ab, which stop
# sending while they wait). wrk2 does the same in C but is not packaged in Debian.
#
# Connections: a fixed pool (--connections), one request in flight per connection (no pipelining),
# reopened if the server closes one. Responses: status line, headers, then a Content-Length body or a
# chunked body. Latencies are kept in full (rate x duration floats) and percentiles are exact.
#
# Figures (one "@@loadtest-json {...}" line on stdout, the same keys as wrk/report.lua):
#   latency_us   response end - scheduled time (the figure to quote)
#   service_us   response end - actual send time (what a closed-loop tool would report)
#   send_lag_us  actual send - scheduled time: the client's own lateness (a ticker thread wakes the loop;
#                see _tick) and this process shares the CPUs with the proxy, so ~100 µs of
#                lag is normal; a large p99 lag means the client, not the target, is the limit.
#   errors       responses with status >= 400 + requests lost with their connection + requests still
#                unanswered DRAIN_TIMEOUT_S after the last send
#
# asyncio Protocols (callbacks, no streams, no tasks per request) keep the client's per-request CPU
# small, which matters because the client competes with the proxy for the same cores.
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from loadtest.mix import SCRIPTS, MixEntry, sequence
from loadtest.report import percentile

CONNECT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 5.0
START_DELAY_S = 0.05
TICK_SWITCH_INTERVAL_S = 0.0002  # the ticker thread must get the GIL quickly when due
JSON_MARK = "@@loadtest-json "


class ResponseParser:
    """Finds the end of one HTTP/1.1 response in a buffer; a miss (incomplete) is None."""

    @staticmethod
    def complete(buf: bytearray) -> tuple[int, int] | None:
        """(status, bytes consumed) of the first complete response in buf, or None."""
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = bytes(buf[:head_end]).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        pos = head_end + 4
        if not chunked:
            return (status, pos + length) if len(buf) >= pos + length else None
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                return (status, trailer_end + 4) if trailer_end >= 0 else None
            pos = line_end + 2 + size + 2
            if pos > len(buf):
                return None


class Connection(asyncio.Protocol):
    def __init__(self, client: OpenLoopClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.inflight: tuple[float, float] | None = None  # (scheduled, sent)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.inflight is not None:
            try:
                done = ResponseParser.complete(self.buf)
            except (ValueError, IndexError):
                self.client.protocol_errors += 1
                self.transport.close()
                return
            if done is None:
                return
            status, consumed = done
            del self.buf[:consumed]
            scheduled, sent = self.inflight
            self.inflight = None
            self.client.completed(self, status, scheduled, sent)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


class OpenLoopClient:
    def __init__(self, host: str, port: int, requests: list[bytes], rate: float, duration: float,
                 connections: int) -> None:
        self.host, self.port = host, port
        self.requests = requests
        self.rate, self.duration, self.connections = rate, duration, connections
        self.idle: deque[Connection] = deque()
        self.open_connections: set[Connection] = set()
        self.backlog: deque[float] = deque()
        self.next_request = 0
        self.dispatched = 0
        self.latency: list[float] = []
        self.service: list[float] = []
        self.send_lag: list[float] = []
        self.status_errors = 0
        self.lost_requests = 0  # in flight when their connection closed
        self.connect_failures = 0
        self.protocol_errors = 0
        self.stopping = False
        self.last_completion = 0.0

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: Connection(self), self.host, self.port), CONNECT_TIMEOUT_S
        )
        self.open_connections.add(conn)
        self._became_idle(conn)

    def _reopen(self) -> None:
        async def reopen() -> None:
            try:
                await self._open()
            except (TimeoutError, OSError):
                self.connect_failures += 1

        if not self.stopping:
            asyncio.get_running_loop().create_task(reopen())

    def _became_idle(self, conn: Connection) -> None:
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)

    def _send(self, conn: Connection, scheduled: float) -> None:
        request = self.requests[self.next_request % len(self.requests)]
        self.next_request += 1
        now = time.monotonic()
        conn.inflight = (scheduled, now)
        self.send_lag.append(now - scheduled)
        conn.transport.write(request)

    def dispatch(self, scheduled: float) -> None:
        self.dispatched += 1
        if self.idle:
            self._send(self.idle.popleft(), scheduled)
        else:
            self.backlog.append(scheduled)

    def completed(self, conn: Connection, status: int, scheduled: float, sent: float) -> None:
        now = time.monotonic()
        self.last_completion = now
        self.latency.append(now - scheduled)
        self.service.append(now - sent)
        if status >= 400:
            self.status_errors += 1
        self._became_idle(conn)

    def lost(self, conn: Connection) -> None:
        self.open_connections.discard(conn)
        if conn.inflight is not None:
            self.lost_requests += 1
            conn.inflight = None
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._reopen()

    async def run(self) -> dict:
        await asyncio.gather(*(self._open() for _ in range(self.connections)))
        loop = asyncio.get_running_loop()
        self.total = max(1, round(self.rate * self.duration))
        self.interval = 1.0 / self.rate
        self.t0 = time.monotonic() + START_DELAY_S
        self.all_sent = asyncio.Event()
        ticker = threading.Thread(target=self._tick, args=(loop,), name="constant-rate-ticker", daemon=True)
        gc.disable()  # the latency lists hold floats only; a collection pause would be the client's
        previous_switch = sys.getswitchinterval()
        sys.setswitchinterval(TICK_SWITCH_INTERVAL_S)
        ticker.start()
        try:
            await asyncio.wait_for(self.all_sent.wait(), self.duration + DRAIN_TIMEOUT_S + START_DELAY_S)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while self._unfinished() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        finally:
            self.stopping = True
            sys.setswitchinterval(previous_switch)
            gc.enable()
            ticker.join(timeout=1.0)
        unfinished = self._unfinished()
        for conn in list(self.open_connections):
            conn.transport.close()
        await asyncio.sleep(0)  # let connection_lost run before the loop closes
        return self._result(self.t0, unfinished)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: sleep precisely (nanosleep) until the next due time, then wake the event loop.

        asyncio's own timers round up to whole milliseconds (epoll_wait), which at 2000 req/s would
        make every send up to 1 ms late; a sleeping thread plus call_soon_threadsafe is ~tens of µs.
        """
        sent = 0
        while sent < self.total and not self.stopping:
            delay = self.t0 + sent * self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                loop.call_soon_threadsafe(self._dispatch_due)
            except RuntimeError:  # the loop is closed: the run was cut short
                return
            sent = min(self.total, math.floor((time.monotonic() - self.t0) / self.interval) + 1)

    def _dispatch_due(self) -> None:
        now = time.monotonic()
        due = min(self.total, math.floor((now - self.t0) / self.interval) + 1) if now >= self.t0 else 0
        while self.dispatched < due:
            self.dispatch(self.t0 + self.dispatched * self.interval)
        if self.dispatched >= self.total:
            self.all_sent.set()

    def _unfinished(self) -> int:
        return self.dispatched - len(self.latency) - self.lost_requests

    def _result(self, t0: float, unfinished: int) -> dict:
        latency = sorted(self.latency)
        service = sorted(self.service)
        lag = sorted(self.send_lag)
        elapsed = max(self.last_completion - t0, 1e-9)

        def us(values: list[float], q: float) -> int:
            v = percentile(values, q)
            return -1 if math.isnan(v) else round(v * 1e6)

        errors = self.status_errors + self.lost_requests + unfinished
        return {
            "tool": "constant_rate",
            "target_rate": self.rate,
            "scheduled": self.dispatched,
            "requests": len(latency),
            "duration_us": round(elapsed * 1e6),
            "rps": len(latency) / elapsed,
            "errors": errors,
            "errors_detail": {
                "status": self.status_errors, "lost": self.lost_requests, "unfinished": unfinished,
                "connect_failures": self.connect_failures, "protocol": self.protocol_errors,
            },
            "latency_us": {
                "p50": us(latency, 50), "p90": us(latency, 90), "p99": us(latency, 99),
                "p999": us(latency, 99.9), "max": us(latency, 100),
                "mean": round(sum(latency) / len(latency) * 1e6, 1) if latency else -1,
            },
            "service_us": {"p50": us(service, 50), "p99": us(service, 99), "max": us(service, 100)},
            "send_lag_us": {"p50": us(lag, 50), "p99": us(lag, 99), "max": us(lag, 100)},
            "connections": self.connections,
        }


def build_requests(script: str, host_header: str) -> list[bytes]:
    if script in SCRIPTS:
        return [e.request_bytes() for e in sequence(SCRIPTS[script])]
    return [MixEntry("GET", host_header, "/", 0, 1).request_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.constant_rate", description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of scheduled sends")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--script", choices=("plain", "mix", "mix-get"), default="plain")
    parser.add_argument("--host", default=None, help="Host header of the plain script (default: the URL's)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.connections <= 0:
        parser.error("--rate, --duration and --connections must be positive")
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname or not url.port:
        parser.error("--url must look like http://127.0.0.1:PORT")
    client = OpenLoopClient(url.hostname, url.port, build_requests(args.script, args.host or url.netloc),
                            args.rate, args.duration, args.connections)
    try:
        result = asyncio.run(client.run())
    except (TimeoutError, OSError) as exc:
        print(f"constant_rate: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    print(JSON_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
