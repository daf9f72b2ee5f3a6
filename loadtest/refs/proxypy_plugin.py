# proxy.py reverse-proxy plugin for the load test: every path on every Host goes to the backend named
# by $LOADTEST_BACKEND ("127.0.0.1:PORT"), keeping the request's path, query and headers.
#
# Loaded only by proxy.py running in loadtest/.refvenv (this directory is put on its PYTHONPATH);
# nothing in the project imports it, and the project venv does not have proxy.py.
#
# Why not proxy.py's stock ReverseProxyPlugin or a static route (checked against proxy.py 2.4.10):
# - its routes are hard-coded (httpbingo.org) and a static route replaces the request path with the
#   upstream URL's path, so every request would become GET /;
# - for a Url choice, ReverseProxy opens a NEW upstream connection for every request of a keep-alive
#   client connection and drops the previous one while its fd is still registered in the threadless
#   selector; the next selector.modify() raises FileNotFoundError, which kills the acceptor's event
#   loop (all its connections hang). wrk's keep-alive traffic triggers this on the second request.
# So handle_route returns a TcpServerConnection instead: one upstream connection per client
# connection, reused for that client's next requests (upstream keep-alive, like nginx's
# `keepalive`), with the request queued on it here because ReverseProxy only forwards for Url choices.
# The access log is switched off (on_access_log returns None), like `access_log off` in nginx.
from __future__ import annotations

import os
from typing import Any

from proxy.core.connection import TcpServerConnection
from proxy.http.parser import HttpParser
from proxy.http.server import ReverseProxyBasePlugin

_host, _, _port = os.environ["LOADTEST_BACKEND"].rpartition(":")
BACKEND_HOST = _host
BACKEND_PORT = int(_port)


class BackendReverseProxy(ReverseProxyBasePlugin):
    """One instance per client connection (proxy.py builds plugins per connection)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._upstream: TcpServerConnection | None = None

    def routes(self) -> list[str]:
        return [r"/"]  # a dynamic route (str) matching every path: handle_route decides

    def handle_route(self, request: HttpParser, pattern: Any) -> TcpServerConnection:
        upstream = self._upstream
        if upstream is None or upstream.closed:
            upstream = TcpServerConnection(BACKEND_HOST, BACKEND_PORT)
            upstream.connect()
            self._upstream = upstream
        upstream.queue(memoryview(request.build()))
        return upstream

    def on_access_log(self, context: dict[str, Any]) -> dict[str, Any] | None:
        return None
