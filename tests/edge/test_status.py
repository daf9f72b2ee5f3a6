import h11
import pytest
import trio

from edge.admin import admin_refusal
from edge.status import (
    MAX_REQUEST_HEAD_BYTES,
    READY_PATH,
    ConnectionSlots,
    Request,
    Response,
    dispatch,
    serve_status,
    text,
)

IO_TIMEOUT_S = 5.0


class Readiness:
    def __init__(self):
        self.ready = False
        self.reason = "starting: 0 of 2 workers serve generation 1"

    def __call__(self):
        return self.ready, self.reason


async def exchange(port: int, raw: bytes, responses: int = 1) -> tuple[list[tuple[h11.Response, bytes]], bool]:
    """Send raw bytes, read `responses` responses; also report whether the server then closed the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = h11.Connection(h11.CLIENT)
    # h11 needs to know what it asked for: tell it about one GET per expected response.
    results: list[tuple[h11.Response, bytes]] = []
    async with stream:
        with trio.fail_after(IO_TIMEOUT_S):
            await stream.send_all(raw)
            head = None
            body = b""
            closed = False
            for _ in range(responses):
                client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                client.send(h11.EndOfMessage())
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            closed = True
                        client.receive_data(data)
                        continue
                    if isinstance(event, h11.Response):
                        head, body = event, b""
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        results.append((head, body))
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return results, True
                if client.our_state is h11.DONE and client.their_state is h11.DONE:
                    client.start_next_cycle()
            if not closed:
                with trio.move_on_after(0.2):
                    closed = await stream.receive_some(1) == b""
    return results, closed


def header(response: h11.Response, name: bytes) -> bytes | None:
    for key, value in response.headers:
        if key == name:
            return value
    return None


@pytest.fixture
async def status(nursery):
    readiness = Readiness()
    port = await nursery.start(lambda task_status: serve_status(0, readiness, bind="127.0.0.1", task_status=task_status))
    return port, readiness


def get(path: str, *, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: probe\r\n{extra}\r\n".encode()


async def test_ready_is_503_with_the_reason_until_ready_then_200(status):
    port, readiness = status
    [(response, body)], _ = await exchange(port, get(READY_PATH))
    assert response.status_code == 503
    assert body == b"starting: 0 of 2 workers serve generation 1\n"
    readiness.ready = True
    [(response, body)], _ = await exchange(port, get(READY_PATH))
    assert response.status_code == 200
    assert body == b"ready\n"
    assert header(response, b"content-type") == b"text/plain; charset=utf-8"


async def test_head_gets_the_length_without_the_body(status):
    port, readiness = status
    readiness.ready = True
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(get(READY_PATH, method="HEAD", extra="Connection: close\r\n"))
        data = b""
        with trio.fail_after(IO_TIMEOUT_S):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 6" in head.lower()
    assert body == b""


@pytest.mark.parametrize(
    ("raw", "status_code"),
    [
        (get("/"), 404),
        (get("/healthz/ready/"), 404),
        (get("/stats/prometheus"), 404),
        (get(READY_PATH, method="POST", extra="Content-Length: 0\r\n"), 405),
    ],
)
async def test_other_paths_and_methods(status, raw, status_code):
    port, _ = status
    [(response, _body)], _ = await exchange(port, raw)
    assert response.status_code == status_code
    if status_code == 405:
        assert header(response, b"allow") == b"GET, HEAD"


async def test_a_query_string_does_not_change_the_path(status):
    port, readiness = status
    readiness.ready = True
    [(response, _)], _ = await exchange(port, get(READY_PATH + "?verbose=1"))
    assert response.status_code == 200


async def test_keep_alive_and_pipelining_are_answered_in_order(status):
    port, readiness = status
    readiness.ready = True
    raw = get(READY_PATH) + get("/nope") + get(READY_PATH)
    results, closed = await exchange(port, raw, responses=3)
    assert [r.status_code for r, _ in results] == [200, 404, 200]
    assert not closed


@pytest.mark.parametrize(
    ("raw", "status_code"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /healthz/ready HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2 * MAX_REQUEST_HEAD_BYTES + b"\r\n\r\n", 431),
    ],
)
async def test_malformed_requests_get_a_status_and_the_connection_closes(status, raw, status_code):
    port, _ = status
    results, closed = await exchange(port, raw)
    assert [r.status_code for r, _ in results] == [status_code]
    assert closed


async def test_a_request_fed_byte_by_byte_is_answered(status):
    port, readiness = status
    readiness.ready = True
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for byte in get(READY_PATH, extra="Connection: close\r\n"):
            await stream.send_all(bytes([byte]))
        data = b""
        with trio.fail_after(IO_TIMEOUT_S):
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\nready\n")


async def test_dispatch_is_a_table_of_routes():
    async def hello(request: Request) -> Response:
        return text(200, f"hello {request.query}")

    routes = {"/hello": {"GET": hello}}
    assert (await dispatch(routes, Request("GET", "/hello", "x=1"))).body == b"hello x=1\n"
    assert (await dispatch(routes, Request("HEAD", "/hello"))).status == 200
    assert (await dispatch(routes, Request("PUT", "/hello"))).status == 405
    assert (await dispatch(routes, Request("GET", "/other"))).status == 404


# ------------------------------------------------------------------------------------- connection slots


def test_slots_evict_the_connection_waiting_longest_when_full():
    slots = ConnectionSlots(3)
    a, b, c = slots.admit(), slots.admit(), slots.admit()
    slots.answering(b)  # b is answering a request: never evicted
    slots.wait_for_request(a)  # a waits again: now the most recent waiter
    d = slots.admit()  # full: the longest waiter is c
    assert c.evicted and c.scope.cancel_called and not a.evicted and not b.evicted
    assert slots.statistics() == {"connections": 3, "waiting": 2, "limit": 3, "evictions": 1}
    slots.release(c)  # the evicted task ends: its slot went to d already
    assert slots.count == 3
    slots.answering(a)
    slots.answering(d)
    assert slots.admit() is None  # every connection is answering: the new one is refused
    for slot in (a, b, d):
        slots.release(slot)
    assert slots.count == 0 and not slots.waiting


# ------------------------------------------------------------------------------------------ admin guard


@pytest.mark.parametrize(("method", "headers", "refused"), [
    ("GET", {"host": "127.0.0.1:15000"}, False),
    ("GET", {"host": "localhost:15000"}, False),
    ("GET", {"host": "LOCALHOST"}, False),
    ("GET", {"host": "[::1]:15000"}, False),
    ("GET", {"host": "10.1.2.3:15000"}, False),
    ("GET", {"host": "attacker.example:15000"}, True),  # DNS rebinding
    ("GET", {}, True),
    ("GET", {"host": "127.0.0.1:15000", "origin": "http://attacker.example"}, False),  # reading needs CORS, which is never given
    ("POST", {"host": "127.0.0.1:15000"}, False),  # curl
    ("POST", {"host": "127.0.0.1:15000", "origin": "http://127.0.0.1:15000"}, False),  # the admin page
    ("POST", {"host": "127.0.0.1:15000", "origin": "http://attacker.example"}, True),
    ("POST", {"host": "127.0.0.1:15000", "origin": "null"}, True),
    ("POST", {"host": "127.0.0.1:15000", "sec-fetch-site": "cross-site"}, True),
    ("POST", {"host": "127.0.0.1:15000", "sec-fetch-site": "same-site"}, True),
    ("POST", {"host": "127.0.0.1:15000", "sec-fetch-site": "same-origin"}, False),
])  # fmt: skip
def test_admin_refusal(method, headers, refused):
    request = Request(method, "/reload", headers=tuple(headers.items()))
    assert (admin_refusal(request) is not None) is refused
