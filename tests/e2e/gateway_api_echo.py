"""The Gateway API conformance suite's echo backend (echo-basic), on loopback, for the e2e tests that need what
the sample backend does not do: set response headers the request asks for, delay by a query parameter, fail a
given number of times per request id (retry simulation), and record every request it gets (mirrors).

    with EchoBackends({"infra-backend-v1": "gateway-conformance-infra", "web-backend": "gateway-conformance-web-backend"}) as echo:
        echo.port("infra-backend-v1")
        echo.seen("infra-backend-v2")          # [Seen(method, path, headers), ...]

Rules (what the conformance suite's expectations read from echo-basic):
- The answer is JSON {"path" (with query), "host", "method", "headers" {lowercase name: [values]}, "namespace",
  "pod"}; "pod" is the backend's name, so "which backend answered" is answer["pod"].
- `X-Echo-Set-Header: Name:value,Name2:value2` sets those response headers (conformance/utils/http MakeRequest).
- `?delay=1s` (a Go duration: ms or s) sleeps before answering (the timeout tests).
- `?responseCode=500&succeedAfter=2&uuid=X` answers responseCode to the first succeedAfter requests carrying
  that uuid, then 200 (the retry tests' simulation, counted per backend).
- A ThreadingHTTPServer per backend in daemon threads of the test process, HTTP/1.1 keep-alive; stop() closes
  them. Nothing here is a mock: the gateway talks to it over real sockets.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

_GO_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)$")
MAX_DELAY_S = 10.0


class Seen:
    __slots__ = ("method", "path", "headers")

    def __init__(self, method: str, path: str, headers: dict[str, list[str]]):
        self.method = method
        self.path = path
        self.headers = headers


def _delay_s(text: str) -> float:
    m = _GO_DURATION.match(text)
    if m is None:
        return 0.0
    value = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    return min(value, MAX_DELAY_S)


class _Backend:
    def __init__(self, name: str, namespace: str):
        self.name = name
        self.namespace = namespace
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.failures: dict[str, int] = {}  # retry simulation: uuid → requests answered so far
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def status_for(self, query: dict[str, list[str]]) -> int:
        code = query.get("responseCode", [""])[0]
        uuid = query.get("uuid", [""])[0]
        if not code.isdigit() or not uuid:
            return 200
        with self.lock:
            count = self.failures.get(uuid, 0)
            self.failures[uuid] = count + 1
        return int(code) if count < int(query.get("succeedAfter", ["0"])[0] or 0) else 200


def _handler(backend: _Backend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as two writes: without NODELAY the body waits for the peer's delayed ACK.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            headers: dict[str, list[str]] = {}
            for k, v in self.headers.items():
                headers.setdefault(k.lower(), []).append(v)
            with backend.lock:
                backend.seen.append(Seen(self.command, self.path, headers))
            query = parse_qs(urlsplit(self.path).query)
            if "delay" in query:
                time.sleep(_delay_s(query["delay"][0]))
            status = backend.status_for(query)
            body = json.dumps({
                "path": self.path, "host": self.headers.get("host", ""), "method": self.command, "headers": headers,
                "namespace": backend.namespace, "pod": backend.name,
            }).encode()  # fmt: skip
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for item in self.headers.get("x-echo-set-header", "").split(","):
                name, sep, value = item.partition(":")
                if sep and name.strip():
                    self.send_header(name.strip(), value.strip())
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_HEAD = do_PATCH = _answer

    return Handler


class EchoBackends:
    def __init__(self, namespaces: dict[str, str]):
        """namespaces: backend name → the namespace it answers as (echo-basic's NAMESPACE)."""
        self.backends = {name: _Backend(name, namespace) for name, namespace in namespaces.items()}

    def __enter__(self) -> Self:
        try:
            for backend in self.backends.values():
                server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(backend))
                server.daemon_threads = True
                backend.server = server
                backend.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name=f"echo-{backend.name}")
                backend.thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        for backend in self.backends.values():
            if backend.server is not None:
                backend.server.shutdown()
                backend.server.server_close()
                backend.server = None
            if backend.thread is not None:
                backend.thread.join(5)
                backend.thread = None

    def port(self, name: str) -> int:
        server = self.backends[name].server
        assert server is not None
        return server.server_address[1]

    def seen(self, name: str) -> list[Seen]:
        backend = self.backends[name]
        with backend.lock:
            return list(backend.seen)

    def service_entry(self, host: str, name: str, port: int = 8080) -> str:
        """A STATIC ServiceEntry for `host` (a Service's cluster name) whose one endpoint is backend `name`."""
        return (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            f"metadata:\n  name: {re.sub(r'[^a-z0-9-]', '-', host)}\n"
            f"spec:\n  hosts:\n  - {host}\n  resolution: STATIC\n"
            f"  ports:\n  - number: {port}\n    name: http\n    protocol: HTTP\n"
            f"  endpoints:\n  - address: 127.0.0.1\n    ports:\n      http: {self.port(name)}\n"
        )
