"""A real HTTP/2 upstream on loopback (h2c, or h2 over TLS with ALPN), built on the h2 library, whose behaviour
each test controls: what the gateway's HTTP/2 client sends, GOAWAY, resets and trailers.

    with H2Backend("h2a") as backend:
        ... ServiceEntry port with protocol HTTP2 (or GRPC) and endpoint 127.0.0.1:backend.port ...
        backend.requests()[-1]["headers"]      # what arrived (pseudo-headers included)

Rules:
- A listening socket, one daemon thread per connection; the h2 connection and its socket are used under one
  lock, so answers sent later (delays, held streams) come from timer threads safely.
- Paths decide the answer (anywhere in the path): /status/N (status N), /grpc/N (trailers-only gRPC answer with grpc-status N),
  /trailers (a body, then trailers grpc-status: 0 and x-trailer: yes), /delay/MS (answer after MS ms),
  /hang (never answered: a reset by the gateway is recorded in resets), /goaway (the first `goaway_after`
  such streams on one connection are held, then GOAWAY names the lowest and only it is answered: the others
  must come back on another connection); anything else: 200 with a JSON echo {instance, method, path,
  authority, headers, body}.
- Every request is recorded with its headers, body size and protocol ("h2", or "http/1.1": a connection whose
  first bytes are not the HTTP/2 preface is answered as HTTP/1.1 with the same JSON echo, so one backend shows
  which protocol the gateway chose); connections() counts connections accepted, closed() those that ended, and
  max_streams() the most streams open at once on one connection.
- PINGs are counted (pings()); with answer_pings = False they are dropped before h2 sees them, so no PING ACK
  ever comes back (an upstream that stopped answering, for http2KeepAlive).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from typing import Self

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hyperframe.frame import GoAwayFrame


class H2Backend:
    def __init__(self, name: str, *, tls: ssl.SSLContext | None = None, max_streams: int | None = None, goaway_after: int = 3):
        self.name = name
        self.tls = tls
        self.max_concurrent = max_streams
        self.goaway_after = goaway_after
        self.goaway_armed = True
        self.fail_grpc: int | None = None  # every answer trailers-only with this grpc-status (an unhealthy endpoint)
        self.answer_pings = True
        self._pings = 0
        self._closed = 0
        self.lock = threading.Lock()
        self._requests: list[dict] = []
        self.resets: list[tuple[str, int]] = []
        self.alpn: list[str | None] = []
        self._connections = 0
        self._max_streams = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped = True
        self.sock.close()

    def requests(self) -> list[dict]:
        with self.lock:
            return list(self._requests)

    def count(self) -> int:
        with self.lock:
            return len(self._requests)

    def connections(self) -> int:
        with self.lock:
            return self._connections

    def max_streams(self) -> int:
        with self.lock:
            return self._max_streams

    def pings(self) -> int:
        with self.lock:
            return self._pings

    def closed(self) -> int:
        with self.lock:
            return self._closed

    def reset(self) -> None:
        with self.lock:
            self._requests.clear()
            self.resets.clear()
            self._connections = 0
            self._max_streams = 0
            self._pings = 0
            self._closed = 0

    # ------------------------------------------------------------------------------------------ serving

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
                with self.lock:
                    self.alpn.append(sock.selected_alpn_protocol())
            _Connection(self, sock).run()
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()
            with self.lock:
                self._closed += 1


class _Connection:
    def __init__(self, backend: H2Backend, sock: socket.socket):
        self.backend = backend
        self.sock = sock
        self.lock = threading.Lock()
        settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: backend.max_concurrent} if backend.max_concurrent else {}
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.streams: dict[int, dict] = {}
        self.held: list[int] = []
        self.open = 0
        self.raw = b""  # inbound bytes not yet split into whole frames
        self.preface_left = 24

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def run(self) -> None:
        with self.backend.lock:
            self.backend._connections += 1
        data = self.sock.recv(65536)
        if data and not data.startswith(b"PRI "):
            self.serve_http1(data)
            return
        with self.lock:
            self.conn.initiate_connection()
            self.flush()
        while True:
            if not data:
                return
            data = self.frames(data)
            with self.lock:
                for event in self.conn.receive_data(data):
                    self.on_event(event)
                self.flush()
            data = self.sock.recv(65536)

    def frames(self, data: bytes) -> bytes:
        """Whole frames of the bytes so far (after the preface), PINGs counted and, unless answered, dropped."""
        self.raw += data
        out = bytearray()
        if self.preface_left:
            take = self.raw[: self.preface_left]
            out += take
            self.raw = self.raw[len(take) :]
            self.preface_left -= len(take)
        while len(self.raw) >= 9:
            length = int.from_bytes(self.raw[:3], "big")
            if len(self.raw) < 9 + length:
                break
            frame, self.raw = self.raw[: 9 + length], self.raw[9 + length :]
            if frame[3] == 0x6 and not frame[4] & 0x1:  # PING, not an ACK
                with self.backend.lock:
                    self.backend._pings += 1
                if not self.backend.answer_pings:
                    continue
            out += frame
        return bytes(out)

    def serve_http1(self, data: bytes) -> None:
        """HTTP/1.1 requests without bodies, each answered with the JSON echo (keep-alive)."""
        while True:
            while b"\r\n\r\n" not in data:
                more = self.sock.recv(65536)
                if not more:
                    return
                data += more
            head, data = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = [(k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
            with self.backend.lock:
                self.backend._requests.append({"headers": headers, "body_bytes": 0, "path": path, "stream": 0, "protocol": "http/1.1"})
            body = json.dumps({"instance": self.backend.name, "method": method, "path": path, "protocol": "http/1.1"}).encode()
            self.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-served-by: %s\r\ncontent-length: %d\r\n\r\n"
                              % (self.backend.name.encode(), len(body)) + body)

    def on_event(self, event) -> None:
        t = type(event)
        if t is h2.events.RequestReceived:
            self.streams[event.stream_id] = {"headers": event.headers, "body": b""}
            self.open += 1
            with self.backend.lock:
                self.backend._max_streams = max(self.backend._max_streams, self.open)
        elif t is h2.events.DataReceived:
            self.streams[event.stream_id]["body"] += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif t is h2.events.StreamEnded:
            self.on_request(event.stream_id)
        elif t is h2.events.StreamReset:
            self.open -= 1
            stream = self.streams.pop(event.stream_id, None)
            path = dict(stream["headers"]).get(":path", "") if stream else ""
            with self.backend.lock:
                self.backend.resets.append((path, int(event.error_code)))

    def on_request(self, sid: int) -> None:
        stream = self.streams[sid]
        headers = dict(stream["headers"])
        record = {"headers": stream["headers"], "body_bytes": len(stream["body"]), "path": headers.get(":path", ""), "stream": sid, "protocol": "h2"}
        with self.backend.lock:
            self.backend._requests.append(record)
        path = record["path"]
        if "/delay/" in path:
            threading.Timer(int(path.rsplit("/", 1)[1]) / 1000, self.answer_later, (sid,)).start()
        elif "/hang" in path:
            pass
        elif "/goaway" in path and self.backend.goaway_armed:
            self.held.append(sid)
            if len(self.held) >= self.backend.goaway_after:
                self.backend.goaway_armed = False
                first = min(self.held)
                # GOAWAY naming the first stream, written as a raw frame (h2 sends nothing after its own), then
                # that stream's answer: the others were never processed.
                goaway = GoAwayFrame(0)
                goaway.last_stream_id = first
                self.flush()
                self.sock.sendall(goaway.serialize())
                self.answer(first)
        else:
            self.answer(sid)

    def answer_later(self, sid: int) -> None:
        with self.lock:
            if sid in self.streams:
                self.answer(sid)
                self.flush()

    def answer(self, sid: int) -> None:
        stream = self.streams.pop(sid)
        self.open -= 1
        headers = dict(stream["headers"])
        path = headers.get(":path", "")
        fail = self.backend.fail_grpc
        if "/grpc/" in path or fail is not None:
            code = str(fail) if fail is not None else path.rsplit("/", 1)[1]
            self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", code), ("grpc-message", "from " + self.backend.name)], end_stream=True)
            return
        status = int(path.rsplit("/", 1)[1]) if "/status/" in path else 200
        body = json.dumps({
            "instance": self.backend.name, "method": headers.get(":method"), "path": path, "authority": headers.get(":authority"),
            "headers": [[k, v] for k, v in stream["headers"]], "body": stream["body"].decode("latin-1"),
        }).encode()  # fmt: skip
        response = [(":status", str(status)), ("content-type", "application/json"), ("x-served-by", self.backend.name)]
        trailers = "/trailers" in path
        if not trailers:
            response.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, response)
        self.conn.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.conn.send_headers(sid, [("grpc-status", "0"), ("x-trailer", "yes")], end_stream=True)


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
