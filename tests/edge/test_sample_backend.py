# Tests for edge/dev/sample_backend.py.
# Pure helpers get table tests; behaviour is checked against the real `python -m edge.dev.sample_backend` process on
# loopback ephemeral ports (found through the ready file), with real clients: h11 over trio streams, raw bytes,
# TLS with a trustme CA. Time-based behaviour (idle timeout, delay cap) runs the same server in-process under
# trio's autojump clock. Every spawned process is stopped by its PID in a fixture finalizer.

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
import trustme

from edge.dev import sample_backend
from edge.dev.sample_backend import BadPath, Listener, Route, headers_document, parse_listen_spec, pattern_bytes, route_for

REPO = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 20.0
CLIENT_TIMEOUT_S = 90.0  # longer than the server's 60 s idle timeout and delay cap, which tests observe
STOP_TIMEOUT_S = 10.0
TLS_HOSTNAME = "backend.test"
MIB = 1024 * 1024


def expected_pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    "target, expected",
    [
        (b"/", Route("request")),
        (b"/?a=1", Route("request")),
        (b"/headers", Route("request")),
        (b"/no/such/path?x=1", Route("request")),
        (b"/ip", Route("ip")),
        (b"/echo", Route("echo")),
        (b"/echo?x", Route("echo")),
        (b"/sha256", Route("sha256")),
        (b"/__stats", Route("stats")),
        (b"/__reset", Route("reset")),
        (b"/drop", Route("drop")),
        (b"/drop-rst", Route("drop_rst")),
        (b"/drop-mid", Route("drop_mid")),
        (b"/garbage", Route("garbage")),
        (b"/status/503", Route("status", 503)),
        (b"/status/100", Route("status", 100)),
        (b"/status/599?q", Route("status", 599)),
        (b"/delay/1.5", Route("delay", 1.5)),
        (b"/delay/0", Route("delay", 0.0)),
        (b"/delay/3600", Route("delay", 60.0)),
        (b"/bytes/0", Route("bytes", 0)),
        (b"/bytes/104857600", Route("bytes", 104857600)),
        (b"/stream-bytes/10", Route("stream_bytes", 10)),
        (b"/echoes", Route("request")),
        (b"/status", Route("request")),
    ],
)
def test_route_for_maps_targets_to_endpoints(target: bytes, expected: Route) -> None:
    assert route_for(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        b"/status/99", b"/status/600", b"/status/101", b"/status/abc", b"/status/", b"/status/-1",
        b"/delay/x", b"/delay/-1", b"/delay/nan", b"/delay/inf", b"/delay/",
        b"/bytes/-1", b"/bytes/1.5", b"/bytes/", b"/bytes/99999999999999999", b"/stream-bytes/x",
    ],
)
def test_route_for_rejects_bad_arguments(target: bytes) -> None:
    assert isinstance(route_for(target), BadPath)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("127.0.0.1:9001=reviews-v1", ("127.0.0.1", 9001, "reviews-v1")),
        ("127.0.0.1:0=a", ("127.0.0.1", 0, "a")),
        ("[::1]:9002=v6.b_c", ("::1", 9002, "v6.b_c")),
        ("localhost:65535=x", ("localhost", 65535, "x")),
    ],
)
def test_parse_listen_spec_accepts(spec: str, expected: tuple[str, int, str]) -> None:
    assert parse_listen_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["127.0.0.1:9001", "127.0.0.1:9001=", "127.0.0.1=a", ":9001=a", "127.0.0.1:x=a", "127.0.0.1:65536=a",
     "127.0.0.1:1=-a", "127.0.0.1:1=a b", "127.0.0.1:1=a\n"],
)
def test_parse_listen_spec_rejects(spec: str) -> None:
    with pytest.raises(Exception, match="HOST:PORT=NAME"):
        parse_listen_spec(spec)


def test_headers_document_joins_repeated_names_in_order() -> None:
    headers = [(b"a", b"1"), (b"b", b"x"), (b"a", b"2"), (b"a", b"3")]
    assert headers_document(headers) == {"a": "1, 2, 3", "b": "x"}


@pytest.mark.parametrize("offset, length", [(0, 0), (0, 1), (0, 300), (250, 2), (251, 251), (12345, 65536),
                                            (65536, 70000), (10**9 + 7, 1000)])
def test_pattern_bytes_is_i_mod_251_from_any_offset(offset: int, length: int) -> None:
    assert pattern_bytes(offset, length) == bytes((offset + i) % 251 for i in range(length))


def test_listener_validates_kind_context_and_name() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with pytest.raises(ValueError, match="ssl_context"):
        Listener("127.0.0.1", 0, "a", "https")
    with pytest.raises(ValueError, match="ssl_context"):
        Listener("127.0.0.1", 0, "a", "http", context)
    with pytest.raises(ValueError, match="kind"):
        Listener("127.0.0.1", 0, "a", "udp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        Listener("127.0.0.1", 0, "bad name")


# ---------------------------------------------------------------- the real process


@dataclasses.dataclass
class BackendProcess:
    proc: subprocess.Popen[bytes]
    ready_file: Path
    ready: dict

    def port(self, name: str) -> int:
        (entry,) = [e for e in self.ready["listeners"] if e["name"] == name]
        return entry["port"]


def spawn_backend(workdir: Path, *args: str) -> BackendProcess:
    ready_file = workdir / "backend.ready"
    log = open(workdir / "backend.stderr", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.dev.sample_backend", *args, "--ready-file", str(ready_file)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
    )
    log.close()
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        # The ready file appears by rename, so existing means complete; stop early if the process died.
        while not ready_file.exists():
            if proc.poll() is not None:
                raise AssertionError(f"backend exited {proc.returncode}: {(workdir / 'backend.stderr').read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError("backend did not write its ready file in time")
            time.sleep(0.01)
        return BackendProcess(proc, ready_file, json.loads(ready_file.read_bytes()))
    except BaseException:
        stop_backend(proc)
        raise


def stop_backend(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclasses.dataclass(frozen=True)
class TlsMaterial:
    ca: trustme.CA
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        context.set_alpn_protocols(["http/1.1"])
        return context


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    ca = trustme.CA()
    cert = ca.issue_cert(TLS_HOSTNAME, "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    return TlsMaterial(ca, cert_file, key_file)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial) -> Iterator[BackendProcess]:
    process = spawn_backend(
        tmp_path_factory.mktemp("backend"),
        "--listen", "127.0.0.1:0=reviews-v1",
        "--tcp-echo", "127.0.0.1:0=tcp-v1",
        "--listen", "127.0.0.1:0=reviews-v2",
        "--listen-tls", "127.0.0.1:0=reviews-tls",
        "--listen", "127.0.0.1:0=stats-probe",
        "--tls-cert", str(tls_material.cert_file),
        "--tls-key", str(tls_material.key_file),
    )
    try:
        yield process
        exit_status = process.proc.poll()
    finally:
        stop_backend(process.proc)
    # Every test above threw bad traffic at this one process: it must still be running, with no traceback.
    stderr = (process.ready_file.parent / "backend.stderr").read_text()
    assert exit_status is None, f"backend died with {exit_status}: {stderr}"
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def v1(backend: BackendProcess) -> int:
    return backend.port("reviews-v1")


# ---------------------------------------------------------------- clients


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[tuple[int, dict[str, str]]]

    def json(self) -> dict:
        return json.loads(self.body)


class HttpClient:
    """h11 client over a trio stream; one task may send while another reads (full duplex)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> h11.Event:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            with trio.fail_after(CLIENT_TIMEOUT_S):
                self.conn.receive_data(await self.stream.receive_some(65536))
        return event

    async def send_request(self, method: str, target: str, headers: list[tuple[str, str]] = (), *,
                           content_length: int | None = None, chunked: bool = False) -> None:
        all_headers = [("host", TLS_HOSTNAME), *headers]
        if chunked:
            all_headers.append(("transfer-encoding", "chunked"))
        elif content_length is not None:
            all_headers.append(("content-length", str(content_length)))
        await self.send(h11.Request(method=method, target=target, headers=all_headers))

    async def read_response(self, on_data: Callable[[bytes], None] | None = None) -> Reply:
        informational = []
        while type(event := await self.next_event()) is h11.InformationalResponse:
            informational.append((event.status_code, headers_document(list(event.headers))))
        assert type(event) is h11.Response, event
        chunks: list[bytes] = []
        while type(data := await self.next_event()) is h11.Data:
            (on_data or chunks.append)(data.data)
        assert type(data) is h11.EndOfMessage, data
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(event.status_code, headers_document(list(event.headers)), b"".join(chunks), informational)

    async def request(self, method: str = "GET", target: str = "/", headers: list[tuple[str, str]] = (),
                      body: bytes = b"", *, chunked: bool = False) -> Reply:
        await self.send_request(method, target, headers, content_length=len(body) if body else None,
                                chunked=chunked)
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())
        return await self.read_response()

    def reusable(self) -> bool:
        return self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_client(port: int, *, ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str = TLS_HOSTNAME) -> HttpClient:
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname=server_hostname, https_compatible=True)
        await stream.do_handshake()
    return HttpClient(stream)


async def get(port: int, target: str = "/", **kwargs) -> Reply:
    client = await open_client(port)
    try:
        return await client.request("GET", target, **kwargs)
    finally:
        await client.aclose()


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    received = bytearray()
    with trio.fail_after(CLIENT_TIMEOUT_S):
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)


async def raw_exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        return await receive_until_eof(stream)


# ---------------------------------------------------------------- HTTP behaviour


def test_ready_file_reports_bound_listeners_in_command_line_order(backend: BackendProcess) -> None:
    assert backend.ready["pid"] == backend.proc.pid
    listeners = backend.ready["listeners"]
    assert [(e["name"], e["kind"], e["host"]) for e in listeners] == [
        ("reviews-v1", "http", "127.0.0.1"),
        ("tcp-v1", "tcp-echo", "127.0.0.1"),
        ("reviews-v2", "http", "127.0.0.1"),
        ("reviews-tls", "https", "127.0.0.1"),
        ("stats-probe", "http", "127.0.0.1"),
    ]
    ports = [e["port"] for e in listeners]
    assert all(port > 0 for port in ports) and len(set(ports)) == len(ports)


@pytest.mark.parametrize("target", ["/", "/headers", "/no/such/path?q=1&r=%20x"])
async def test_request_document_describes_the_request(backend: BackendProcess, v1: int, target: str) -> None:
    reply = await get(v1, target, headers=[("X-Trace", "a"), ("x-trace", "b"), ("Accept", "*/*")])
    assert reply.status == 200
    assert reply.headers["x-served-by"] == "reviews-v1"
    assert reply.headers["content-type"] == "application/json"
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert reply.json() == {
        "instance": "reviews-v1",
        "method": "GET",
        "path": target,
        "http_version": "1.1",
        "headers": {"host": TLS_HOSTNAME, "x-trace": "a, b", "accept": "*/*"},
        "body_bytes": 0,
        "tls": None,
    }


async def test_each_listener_answers_with_its_own_instance_name(backend: BackendProcess) -> None:
    for name in ("reviews-v1", "reviews-v2", "stats-probe"):
        reply = await get(backend.port(name))
        assert reply.headers["x-served-by"] == name
        assert reply.json()["instance"] == name


@pytest.mark.parametrize("chunked", [False, True])
async def test_request_body_is_read_and_counted(v1: int, chunked: bool) -> None:
    client = await open_client(v1)
    body = os.urandom(300_000)
    reply = await client.request("PUT", "/anything", body=body, chunked=chunked)
    assert reply.json()["body_bytes"] == len(body)
    assert reply.json()["method"] == "PUT"
    assert client.reusable()
    assert (await client.request("GET", "/")).json()["body_bytes"] == 0
    await client.aclose()


async def test_ip_reports_the_peer_address(v1: int) -> None:
    reply = await get(v1, "/ip")
    assert reply.json() == {"origin": "127.0.0.1"}
    assert reply.headers["x-served-by"] == "reviews-v1"


@pytest.mark.parametrize("status", [200, 201, 404, 418, 500, 503, 599])
async def test_status_answers_final_codes_with_the_request_document(v1: int, status: int) -> None:
    client = await open_client(v1)
    reply = await client.request("GET", f"/status/{status}")
    assert reply.status == status
    assert reply.headers["x-served-by"] == "reviews-v1"
    assert reply.json()["path"] == f"/status/{status}"
    assert client.reusable()
    await client.aclose()


@pytest.mark.parametrize("status", [204, 304])
async def test_status_without_body_has_no_framing_and_keeps_the_connection(v1: int, status: int) -> None:
    first_request = f"GET /status/{status} HTTP/1.1\r\nhost: a\r\n\r\n".encode()
    response = await raw_exchange(v1, first_request + b"GET /ip HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    first, _, rest = response.partition(b"\r\n\r\n")
    assert first.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"x-served-by: reviews-v1" in first
    assert b"content-length" not in first.lower() and b"transfer-encoding" not in first.lower()
    # The next response starts right after the empty line: no body bytes were sent.
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest.endswith(b'{"origin":"127.0.0.1"}')


@pytest.mark.parametrize("status", [100, 102, 103])
async def test_status_informational_is_followed_by_a_final_200(v1: int, status: int) -> None:
    client = await open_client(v1)
    reply = await client.request("GET", f"/status/{status}")
    assert reply.informational == [(status, {"x-served-by": "reviews-v1"})]
    assert reply.status == 200
    assert reply.json()["path"] == f"/status/{status}"
    assert client.reusable()
    await client.aclose()


@pytest.mark.parametrize("target", ["/status/99", "/status/600", "/status/101", "/status/abc", "/delay/x",
                                    "/delay/-1", "/delay/nan", "/bytes/-1", "/stream-bytes/1.5"])
async def test_bad_arguments_get_400_and_the_connection_stays_usable(v1: int, target: str) -> None:
    client = await open_client(v1)
    reply = await client.request("POST", target, body=b"x" * 1000)
    assert reply.status == 400
    assert reply.headers["x-served-by"] == "reviews-v1"
    assert reply.json()["error"]
    assert (await client.request("GET", "/ip")).status == 200
    await client.aclose()


async def test_delay_answers_with_the_request_document(v1: int) -> None:
    reply = await get(v1, "/delay/0.01")
    assert reply.status == 200
    assert reply.json()["path"] == "/delay/0.01"


@pytest.mark.parametrize("size", [0, 1, 251, 65536, 65537, 200_001])
async def test_bytes_sends_the_pattern_with_content_length(v1: int, size: int) -> None:
    reply = await get(v1, f"/bytes/{size}")
    assert reply.status == 200
    assert reply.headers["content-length"] == str(size)
    assert "transfer-encoding" not in reply.headers
    assert reply.body == expected_pattern(size)


async def test_stream_bytes_sends_64k_chunks(v1: int) -> None:
    size = 2 * 65536 + 18928
    request = f"GET /stream-bytes/{size} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode()
    response = await raw_exchange(v1, request)
    head, _, wire = response.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower() and b"content-length" not in head.lower()
    sizes, body = [], bytearray()
    while True:
        size_line, _, wire = wire.partition(b"\r\n")
        chunk_size = int(size_line, 16)
        if chunk_size == 0:
            assert wire == b"\r\n"
            break
        sizes.append(chunk_size)
        body += wire[:chunk_size]
        assert wire[chunk_size : chunk_size + 2] == b"\r\n"
        wire = wire[chunk_size + 2 :]
    assert sizes == [65536, 65536, 18928]
    assert bytes(body) == expected_pattern(size)


async def test_head_gets_get_headers_without_body(v1: int) -> None:
    client = await open_client(v1)
    framings = [("/bytes/10", ("content-length", "10")), ("/stream-bytes/10", ("transfer-encoding", "chunked"))]
    for target, framing in framings:
        reply = await client.request("HEAD", target)
        assert reply.status == 200
        assert reply.headers[framing[0]] == framing[1]
        assert reply.body == b""
        assert client.reusable()
    reply = await client.request("HEAD", "/")
    assert int(reply.headers["content-length"]) > 0 and reply.body == b""
    await client.aclose()


async def echo_full_duplex(client: HttpClient, body_blocks: list[bytes], *, chunked: bool) -> tuple[Reply, bytes, int]:
    """Sends body_blocks to /echo while reading the reply; returns (reply without body, sha256, length)."""
    digest, received = hashlib.sha256(), 0

    def on_data(data: bytes) -> None:
        nonlocal received
        digest.update(data)
        received += len(data)

    async def send_body() -> None:
        total = sum(map(len, body_blocks))
        await client.send_request("POST", "/echo", content_length=None if chunked else total, chunked=chunked)
        for block in body_blocks:
            await client.send(h11.Data(data=block))
        await client.send(h11.EndOfMessage())

    reply = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_body)
        reply = await client.read_response(on_data)
    return reply, digest.digest(), received


@pytest.mark.parametrize("chunked", [False, True])
async def test_echo_streams_megabytes_back(v1: int, chunked: bool) -> None:
    blocks = [os.urandom(100_000) for _ in range(40)]
    client = await open_client(v1)
    reply, digest, received = await echo_full_duplex(client, blocks, chunked=chunked)
    assert received == 4_000_000
    assert digest == hashlib.sha256(b"".join(blocks)).digest()
    assert reply.headers["x-served-by"] == "reviews-v1"
    if chunked:
        assert reply.headers["transfer-encoding"] == "chunked" and "content-length" not in reply.headers
    else:
        assert reply.headers["content-length"] == "4000000" and "transfer-encoding" not in reply.headers
    assert client.reusable()
    await client.aclose()


async def test_echo_answers_before_the_request_body_ends(v1: int) -> None:
    client = await open_client(v1)
    await client.send_request("POST", "/echo", chunked=True)
    await client.send(h11.Data(data=b"first part"))
    response = await client.next_event()
    assert type(response) is h11.Response and response.status_code == 200
    first = await client.next_event()
    assert type(first) is h11.Data and first.data == b"first part"
    await client.send(h11.Data(data=b"second"))
    await client.send(h11.EndOfMessage())
    second = await client.next_event()
    assert type(second) is h11.Data and second.data == b"second"
    assert type(await client.next_event()) is h11.EndOfMessage
    await client.aclose()


async def test_echo_without_body_answers_content_length_zero(v1: int) -> None:
    reply = await get(v1, "/echo")
    assert reply.status == 200 and reply.headers["content-length"] == "0" and reply.body == b""


@pytest.mark.parametrize("chunked", [False, True])
async def test_sha256_hashes_the_request_body(v1: int, chunked: bool) -> None:
    body = os.urandom(1_500_000)
    client = await open_client(v1)
    reply = await client.request("POST", "/sha256", body=body, chunked=chunked)
    assert reply.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    await client.aclose()


@pytest.mark.parametrize("target", ["/", "/echo", "/sha256"])
async def test_expect_100_continue_is_answered_before_the_body_is_sent(v1: int, target: str) -> None:
    client = await open_client(v1)
    body = b"z" * 5000
    await client.send_request("POST", target, [("expect", "100-continue")], content_length=len(body))
    informational = await client.next_event()
    assert type(informational) is h11.InformationalResponse
    assert informational.status_code == 100
    assert headers_document(list(informational.headers))["x-served-by"] == "reviews-v1"
    await client.send(h11.Data(data=body))
    await client.send(h11.EndOfMessage())
    reply = await client.read_response()
    assert reply.status == 200
    if target == "/":
        assert reply.json()["body_bytes"] == len(body)
    elif target == "/echo":
        assert reply.body == body
    else:
        assert reply.json()["sha256"] == hashlib.sha256(body).hexdigest()
    await client.aclose()


async def test_http10_client_gets_close_delimited_responses(v1: int) -> None:
    response = await raw_exchange(v1, b"GET /stream-bytes/70000 HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert b"x-served-by: reviews-v1" in head
    assert body == expected_pattern(70000)

    response = await raw_exchange(v1, b"GET /q HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert json.loads(body)["http_version"] == "1.0" and json.loads(body)["path"] == "/q"


async def test_pipelined_requests_are_answered_in_order(v1: int) -> None:
    requests = b"".join(f"GET /status/{s} HTTP/1.1\r\nhost: a\r\n\r\n".encode() for s in (201, 202))
    response = await raw_exchange(v1, requests + b"GET /status/203 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", response)
    assert statuses == [b"201", b"202", b"203"]


async def test_malformed_request_gets_400_then_close_and_the_server_survives(v1: int) -> None:
    response = await raw_exchange(v1, b"THIS IS NOT HTTP\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"x-served-by: reviews-v1" in response
    assert (await get(v1, "/ip")).status == 200


async def test_oversized_headers_get_431(v1: int) -> None:
    response = await raw_exchange(v1, b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 431 ")
    assert (await get(v1, "/ip")).status == 200


# ---------------------------------------------------------------- broken upstream behaviours


async def test_drop_closes_without_any_response(v1: int) -> None:
    assert await raw_exchange(v1, b"GET /drop HTTP/1.1\r\nhost: a\r\n\r\n") == b""
    assert (await get(v1, "/ip")).status == 200


async def test_drop_rst_resets_the_connection(v1: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", v1)
    async with stream:
        await stream.send_all(b"GET /drop-rst HTTP/1.1\r\nhost: a\r\n\r\n")
        with pytest.raises(trio.BrokenResourceError) as caught:
            await receive_until_eof(stream)
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert (await get(v1, "/ip")).status == 200


async def test_drop_mid_truncates_the_response_body(v1: int) -> None:
    client = await open_client(v1)
    await client.send_request("GET", "/drop-mid")
    await client.send(h11.EndOfMessage())
    response = await client.next_event()
    assert type(response) is h11.Response
    assert headers_document(list(response.headers))["content-length"] == "1000"
    received = b""
    with pytest.raises(h11.RemoteProtocolError):
        while type(event := await client.next_event()) is h11.Data:
            received += event.data
    assert received == expected_pattern(10)
    await client.aclose()


async def test_garbage_is_not_http(v1: int) -> None:
    raw = await raw_exchange(v1, b"GET /garbage HTTP/1.1\r\nhost: a\r\n\r\n")
    assert raw == sample_backend.GARBAGE
    client = await open_client(v1)
    await client.send_request("GET", "/garbage")
    await client.send(h11.EndOfMessage())
    with pytest.raises(h11.RemoteProtocolError):
        await client.next_event()
    await client.aclose()


def reset_on_close(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize(
    "request_bytes, read_first, reset",
    [
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-partial", False, False),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000, False, True),
        (b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n" + b"y" * 1000, True, True),
        (b"GET /bytes/104857600 HTTP/1.1\r\nhost: a\r\n\r\n", True, False),
        (b"GET /stream-bytes/104857600 HTTP/1.1\r\nhost: a\r\n\r\n", True, True),
    ],
)
async def test_clients_vanishing_mid_exchange_leave_the_server_serving(
    backend: BackendProcess, v1: int, request_bytes: bytes, read_first: bool, reset: bool
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", v1)
    await stream.send_all(request_bytes)
    if read_first:
        with trio.fail_after(CLIENT_TIMEOUT_S):
            assert await stream.receive_some(65536)
    if reset:
        reset_on_close(stream)
    await stream.aclose()
    assert (await get(v1, "/ip")).status == 200
    assert backend.proc.poll() is None


# ---------------------------------------------------------------- keep-alive accounting


async def stats(client: HttpClient) -> dict:
    return (await client.request("GET", "/__stats")).json()


async def test_stats_count_requests_and_reused_connections(backend: BackendProcess) -> None:
    port = backend.port("stats-probe")
    a, b = await open_client(port), await open_client(port)
    await a.request("POST", "/__reset")
    for _ in range(10):
        assert (await a.request("GET", "/")).status == 200
    for _ in range(5):
        assert (await b.request("GET", "/headers")).status == 200
    expected = {"instance": "stats-probe", "connections_total": 2, "connections_open": 2, "requests_total": 15}
    assert await stats(a) == expected
    assert await stats(b) == expected  # admin requests are not counted

    # After a reset, a pooled connection counts once more when it carries its next request.
    reset = (await a.request("POST", "/__reset")).json()
    assert reset == {**expected, "connections_total": 0, "requests_total": 0}
    await b.request("GET", "/")
    await b.request("GET", "/")
    assert await stats(a) == {**expected, "connections_total": 1, "requests_total": 2}
    await a.aclose()
    await b.aclose()


async def test_connections_open_follows_client_closes_in_process(nursery: trio.Nursery) -> None:
    (bound,) = await nursery.start(sample_backend.serve_sample_backend, [Listener("127.0.0.1", 0, "inproc")])
    assert (bound.name, bound.kind, bound.host) == ("inproc", "http", "127.0.0.1") and bound.port > 0
    clients = [await open_client(bound.port) for _ in range(3)]
    for client in clients:
        await client.request("GET", "/")
    assert (await stats(clients[0]))["connections_open"] == 3
    await clients[1].aclose()
    await clients[2].aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert await stats(clients[0]) == {
        "instance": "inproc", "connections_total": 3, "connections_open": 1, "requests_total": 3,
    }
    await clients[0].aclose()


# ---------------------------------------------------------------- timeouts (in-process, virtual time)


async def test_idle_connections_are_closed_after_60s(autojump_clock: trio.testing.MockClock,
                                                     nursery: trio.Nursery) -> None:
    http, echo = await nursery.start(
        sample_backend.serve_sample_backend,
        [Listener("127.0.0.1", 0, "idle"), Listener("127.0.0.1", 0, "idle-echo", "tcp-echo")],
    )
    client = await open_client(http.port)
    await trio.sleep(59)
    assert (await client.request("GET", "/")).status == 200  # 59 s idle is still fine, and restarts the clock
    started = trio.current_time()
    assert await receive_until_eof(client.stream) == b""
    assert trio.current_time() - started == pytest.approx(sample_backend.IDLE_TIMEOUT_S)
    await client.aclose()

    stream = await trio.open_tcp_stream("127.0.0.1", echo.port)
    started = trio.current_time()
    assert await receive_until_eof(stream) == b"idle-echo\n"
    assert trio.current_time() - started == pytest.approx(sample_backend.IDLE_TIMEOUT_S)
    await stream.aclose()


async def test_delay_sleeps_and_is_capped_at_60s(autojump_clock: trio.testing.MockClock,
                                                 nursery: trio.Nursery) -> None:
    (bound,) = await nursery.start(sample_backend.serve_sample_backend, [Listener("127.0.0.1", 0, "delay")])
    client = await open_client(bound.port)
    for target, expected_s in [("/delay/2.5", 2.5), ("/delay/3600", 60.0)]:
        started = trio.current_time()
        reply = await client.request("GET", target)
        assert reply.status == 200 and reply.json()["path"] == target
        assert trio.current_time() - started == pytest.approx(expected_s)
    await client.aclose()


# ---------------------------------------------------------------- raw TCP echo


async def test_tcp_echo_greets_echoes_and_closes_after_half_close(backend: BackendProcess) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", backend.port("tcp-v1"))
    payload = os.urandom(2_000_000)
    received = bytearray()

    async def send_then_half_close() -> None:
        for offset in range(0, len(payload), 100_000):
            await stream.send_all(payload[offset : offset + 100_000])
        await stream.send_eof()

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send_then_half_close)
        received += await receive_until_eof(stream)
    assert bytes(received[:7]) == b"tcp-v1\n"
    assert bytes(received[7:]) == payload


# ---------------------------------------------------------------- TLS


async def test_tls_listener_serves_https_with_alpn_and_reports_sni(backend: BackendProcess,
                                                                   tls_material: TlsMaterial) -> None:
    port = backend.port("reviews-tls")
    client = await open_client(port, ssl_context=tls_material.client_context())
    assert client.stream.selected_alpn_protocol() == "http/1.1"
    reply = await client.request("POST", "/anything", body=b"secret")
    assert reply.headers["x-served-by"] == "reviews-tls"
    document = reply.json()
    assert document["instance"] == "reviews-tls" and document["body_bytes"] == 6
    assert document["tls"]["sni"] == TLS_HOSTNAME
    assert document["tls"]["alpn"] == "http/1.1"
    assert document["tls"]["version"].startswith("TLSv1.")
    blocks = [os.urandom(100_000) for _ in range(10)]
    reply, digest, received = await echo_full_duplex(client, blocks, chunked=True)  # same connection, kept alive
    assert received == 1_000_000 and digest == hashlib.sha256(b"".join(blocks)).digest()
    await client.aclose()


async def test_tls_listener_survives_a_plaintext_client(backend: BackendProcess, tls_material: TlsMaterial) -> None:
    port = backend.port("reviews-tls")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        try:
            response = await receive_until_eof(stream)
        except trio.BrokenResourceError:
            response = b""
    assert not response.startswith(b"HTTP/")
    client = await open_client(port, ssl_context=tls_material.client_context())
    assert (await client.request("GET", "/ip")).json() == {"origin": "127.0.0.1"}
    await client.aclose()


async def test_plain_listener_reports_no_tls(v1: int) -> None:
    assert (await get(v1)).json()["tls"] is None


# ---------------------------------------------------------------- process lifecycle and command line


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "at least one"),
        (["--listen", "127.0.0.1:0"], "HOST:PORT=NAME"),
        (["--listen", "127.0.0.1:0=a", "--tls-cert", "x.pem", "--tls-key", "y.pem"], "only by --listen-tls"),
        (["--listen-tls", "127.0.0.1:0=a"], "needs --tls-cert and --tls-key"),
        (["--listen-tls", "127.0.0.1:0=a", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.pem"],
         "cannot load"),
    ],
)
def test_bad_command_lines_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "edge.dev.sample_backend", *args], cwd=REPO,
                            capture_output=True, timeout=STOP_TIMEOUT_S)
    assert result.returncode == 2
    assert message in result.stderr.decode()


def test_port_in_use_exits_1(tmp_path: Path, backend: BackendProcess) -> None:
    taken = backend.port("reviews-v1")
    result = subprocess.run(
        [sys.executable, "-m", "edge.dev.sample_backend", "--listen", f"127.0.0.1:{taken}=a",
         "--ready-file", str(tmp_path / "ready")],
        cwd=REPO, capture_output=True, timeout=STOP_TIMEOUT_S,
    )
    assert result.returncode == 1
    assert b"cannot listen" in result.stderr
    assert not (tmp_path / "ready").exists()


def test_sigterm_exits_0_and_removes_the_ready_file(tmp_path: Path) -> None:
    process = spawn_backend(tmp_path, "--listen", "127.0.0.1:0=short-lived", "--listen", "[::1]:0=v6")
    try:
        assert [e["host"] for e in process.ready["listeners"]] == ["127.0.0.1", "::1"]
        os.kill(process.proc.pid, signal.SIGTERM)
        assert process.proc.wait(STOP_TIMEOUT_S) == 0
        assert not process.ready_file.exists()
    finally:
        stop_backend(process.proc)


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_100mb_both_ways_with_bounded_memory(tmp_path: Path) -> None:
    # A fresh process, so its peak RSS reflects only this test; a body-buffering server would exceed 100 MiB.
    process = spawn_backend(tmp_path, "--listen", "127.0.0.1:0=big")
    try:
        port = process.port("big")
        size = 100 * MIB
        block = os.urandom(MIB)
        client = await open_client(port)
        reply, digest, received = await echo_full_duplex(client, [block] * 100, chunked=True)
        assert reply.status == 200 and received == size
        assert digest == hashlib.sha256(block * 100).digest()

        for target in (f"/bytes/{size}", f"/stream-bytes/{size}"):
            digest, received = hashlib.sha256(), 0

            def on_data(data: bytes) -> None:
                nonlocal received
                digest.update(data)
                received += len(data)

            await client.send_request("GET", target)
            await client.send(h11.EndOfMessage())
            reply = await client.read_response(on_data)
            assert reply.status == 200 and received == size
            expected = hashlib.sha256()
            for offset in range(0, size, MIB):
                expected.update(pattern_bytes(offset, MIB))
            assert digest.digest() == expected.digest()
        await client.aclose()
        assert peak_rss_bytes(process.proc.pid) < 80 * MIB
    finally:
        stop_backend(process.proc)
