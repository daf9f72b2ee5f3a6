"""A real HTTP/1.1 upstream on loopback that answers every request with one status, after an optional delay.

The sample backend answers by path, so every endpoint of a cluster behaves alike; retries to another endpoint,
outlier ejection and slow mirrors need one endpoint that fails while the others work. This is that endpoint:

    with FixedBackend("bad", status=500) as bad:
        ... ServiceEntry endpoints: bad.port and a sample backend ...
        bad.status = 200                 # it recovers (takes effect on the next request)
        assert bad.count() == 3

Rules:
- A ThreadingHTTPServer in a daemon thread of the test process, keep-alive (HTTP/1.1, Content-Length), one
  handler thread per connection. The body of every request (Content-Length or chunked) is read in full before
  the answer; a chunked body that breaks off gets no answer (the connection closes).
- The answer is JSON {"instance", "method", "path", "status"} with `x-served-by: NAME`, like the sample backend.
- Every request is recorded (method, path, lowercase headers, body length) under a lock; count() and
  requests() read the record. Nothing here is a mock: the gateway talks to it over a real socket.
- stop() (also on __exit__) shuts the server down and closes its socket; handler threads of slow requests are
  daemon threads and die with their connections.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class Seen:
    __slots__ = ("method", "path", "headers", "body_bytes", "at")

    def __init__(self, method: str, path: str, headers: dict[str, str], body_bytes: int):
        self.method = method
        self.path = path
        self.headers = headers
        self.body_bytes = body_bytes
        self.at = time.monotonic()


class FixedBackend:
    def __init__(self, name: str, *, status: int = 200, delay_s: float = 0.0):
        self.name = name
        self.status = status
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def count(self) -> int:
        with self._lock:
            return len(self._seen)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._seen.append(seen)

    def __enter__(self) -> Self:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _read_chunked(self) -> int | None:
                """The length of a chunked body read whole, None when it ended early or broke."""
                total = 0
                while True:
                    line = self.rfile.readline(4096)
                    if not line.endswith(b"\r\n"):
                        return None
                    try:
                        size = int(line.split(b";")[0].strip(), 16)
                    except ValueError:
                        return None
                    if size == 0:
                        while (trailer := self.rfile.readline(4096)) not in (b"\r\n", b""):
                            pass
                        return total if trailer else None
                    data = self.rfile.read(size + 2)
                    if len(data) != size + 2:
                        return None
                    total += size

            def _answer(self) -> None:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    received = self._read_chunked()
                    if received is None:
                        self.close_connection = True
                        return
                else:
                    length = int(self.headers.get("content-length") or 0)
                    remaining = length
                    while remaining > 0:
                        chunk = self.rfile.read(min(remaining, 65536))
                        if not chunk:
                            break
                        remaining -= len(chunk)
                    received = length - remaining
                headers = {k.lower(): v for k, v in self.headers.items()}
                backend._record(Seen(self.command, self.path, headers, received))
                if backend.delay_s:
                    time.sleep(backend.delay_s)
                status = backend.status
                body = json.dumps({"instance": backend.name, "method": self.command, "path": self.path, "status": status}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.send_header("x-served-by", backend.name)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_HEAD = do_PATCH = _answer

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                # A client (the gateway) that closed its side first is part of many tests; stay quiet about it.
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        server = Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=f"fixed-backend-{self.name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
