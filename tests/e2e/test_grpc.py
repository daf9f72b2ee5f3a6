# End to end with real gRPC: grpcio clients (h2c with prior knowledge to the gateway) and grpcio servers behind
# GRPC ServiceEntry ports (HTTP/2 upstream), one `edge run` for the module. Generic handlers with bytes in and
# out need no protoc. Unary and the three streaming kinds routed by service prefix, weighted routing counted,
# deadlines, a retry on UNAVAILABLE, trailers-only local replies (no route, fault abort, route timeout) and a
# client cancelling a stream, which the upstream server sees cancelled.
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from tests.e2e.harness import EdgeProcess, http_get

pytestmark = pytest.mark.e2e


class Server:
    """A grpcio server answering pkg.Echo/* (and every other service's methods) as `name`; `fail` aborts every
    call with UNAVAILABLE (an unhealthy endpoint)."""

    def __init__(self, name: str, fail: bool = False):
        self.name = name
        self.fail = fail
        self.calls = 0
        self.cancelled = threading.Event()
        self.remaining: list[float | None] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("pkg.Echo", self.handlers())] +
                                             [grpc.method_handlers_generic_handler(s, self.handlers()) for s in ("pkg.Weighted", "pkg.Retry", "pkg.Slow", "pkg.Fault")])
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def handlers(self) -> dict:
        same = dict(request_deserializer=None, response_serializer=None)
        return {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary, **same),
            "Sleep": grpc.unary_unary_rpc_method_handler(self.sleep, **same),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream, **same),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream, **same),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi, **same),
            "Forever": grpc.unary_stream_rpc_method_handler(self.forever, **same),
        }

    def _count(self, context) -> None:
        with self.lock:
            self.calls += 1
            self.remaining.append(context.time_remaining())
        if self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "endpoint down")

    def unary(self, request: bytes, context) -> bytes:
        self._count(context)
        context.set_trailing_metadata((("x-served-by", self.name),))
        return self.name.encode() + b":" + request

    def sleep(self, request: bytes, context) -> bytes:
        self._count(context)
        time.sleep(float(request))
        return b"late"

    def server_stream(self, request: bytes, context):
        self._count(context)
        for i in range(int(request)):
            yield b"%d" % i

    def client_stream(self, requests, context) -> bytes:
        self._count(context)
        return b"+".join(requests)

    def bidi(self, requests, context):
        self._count(context)
        for request in requests:
            yield request.upper()

    def forever(self, request: bytes, context):
        self._count(context)
        context.add_callback(self.cancelled.set)
        while context.is_active():
            yield b"tick"
            time.sleep(0.05)


def service_entry(host: str, servers: list[Server]) -> str:
    endpoints = "".join(f"  - address: 127.0.0.1\n    ports: {{grpc: {s.port}}}\n" for s in servers)
    return f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host.replace('.', '-')}}}
spec:
  hosts: [{host}]
  resolution: STATIC
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  endpoints:
{endpoints}---
"""


ROUTES = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: grpc, protocol: GRPC}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /pkg.Echo/}}]
    route: [{destination: {host: a.grpc}}]
  - match: [{uri: {prefix: /pkg.Weighted/}}]
    route:
    - {destination: {host: a.grpc}, weight: 75}
    - {destination: {host: b.grpc}, weight: 25}
  - match: [{uri: {prefix: /pkg.Retry/}}]
    retries: {attempts: 3, retryOn: unavailable}
    route: [{destination: {host: flaky.grpc}}]
  - match: [{uri: {prefix: /pkg.Slow/}}]
    timeout: 0.3s
    route: [{destination: {host: a.grpc}}]
  - match: [{uri: {prefix: /pkg.Fault/}}]
    fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}
    route: [{destination: {host: a.grpc}}]
"""


@pytest.fixture(scope="module")
def servers():
    a, b, bad = Server("a"), Server("b"), Server("bad", fail=True)
    for s in (a, b, bad):
        s.server.start()
    try:
        yield {"a": a, "b": b, "bad": bad}
    finally:
        for s in (a, b, bad):
            s.server.stop(0)


@pytest.fixture(scope="module")
def edge(tmp_path_factory, servers):
    a, b, bad = servers["a"], servers["b"], servers["bad"]
    config = service_entry("a.grpc", [a]) + service_entry("b.grpc", [b]) + service_entry("flaky.grpc", [bad, a]) + ROUTES
    with EdgeProcess(tmp_path_factory.mktemp("grpc"), {"grpc.yaml": config}, workers=1) as edge:
        yield edge


@pytest.fixture(scope="module")
def env(edge, servers):
    channel = grpc.insecure_channel(f"127.0.0.1:{edge.port(80)}")
    grpc.channel_ready_future(channel).result(timeout=10)
    yield channel, servers
    channel.close()


def call(channel, method: str, request: bytes = b"x", timeout: float = 10.0):
    return channel.unary_unary(method).with_call(request, timeout=timeout)


def test_unary_and_trailers_cross_both_ways(env):
    channel, _ = env
    response, call_info = call(channel, "/pkg.Echo/Unary", b"hello")
    assert response == b"a:hello"
    assert ("x-served-by", "a") in call_info.trailing_metadata()  # response trailers reached the h2 client
    assert call_info.code() == grpc.StatusCode.OK


def test_streaming_calls(env):
    channel, _ = env
    assert list(channel.unary_stream("/pkg.Echo/ServerStream")(b"5", timeout=10)) == [b"0", b"1", b"2", b"3", b"4"]
    assert channel.stream_unary("/pkg.Echo/ClientStream")(iter([b"a", b"b", b"c"]), timeout=10) == b"a+b+c"
    # Bidirectional: each answer comes back before the next request is sent (full duplex through the gateway).
    requests: list[bytes] = []
    ready = threading.Semaphore(0)

    def produce():
        for word in (b"one", b"two", b"three"):
            requests.append(word)
            yield word
            ready.acquire(timeout=5)

    answers = []
    for answer in channel.stream_stream("/pkg.Echo/Bidi")(produce(), timeout=10):
        answers.append(answer)
        ready.release()
    assert answers == [b"ONE", b"TWO", b"THREE"]


def test_weighted_routing_by_service(env):
    channel, servers = env
    before = servers["a"].calls, servers["b"].calls
    for _ in range(200):
        call(channel, "/pkg.Weighted/Unary")
    to_a = servers["a"].calls - before[0]
    assert to_a + servers["b"].calls - before[1] == 200
    assert 122 <= to_a <= 178, to_a  # 75 %: the window is ± 4.5 standard deviations


def test_no_route_is_unimplemented(env):
    channel, _ = env
    with pytest.raises(grpc.RpcError) as info:
        call(channel, "/other.Service/Method")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # Envoy: 404 NR → 12


def test_fault_abort_with_grpc_status(env):
    channel, _ = env
    with pytest.raises(grpc.RpcError) as info:
        call(channel, "/pkg.Fault/Unary")
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "fault filter abort")


def test_route_timeout_is_unavailable_and_client_deadline_reaches_the_server(env):
    channel, servers = env
    with pytest.raises(grpc.RpcError) as info:
        call(channel, "/pkg.Slow/Sleep", b"2")
    # Envoy's local reply for the route timeout: 504 mapped by httpToGrpcStatus.
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, "upstream request timeout")
    with pytest.raises(grpc.RpcError) as info:
        call(channel, "/pkg.Echo/Sleep", b"2", timeout=0.5)
    # The client's own deadline, the server's (grpc-timeout forwarded) or the gateway's (the same header): whichever
    # fires first answers; all three end the call within its deadline.
    assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    remaining = servers["a"].remaining[-1]
    # The upstream got the deadline as the time left (rounded up to the millisecond, as Envoy writes it).
    assert remaining is not None and remaining <= 0.501


def test_retry_on_unavailable(env):
    channel, servers = env
    for _ in range(6):
        response, _ = call(channel, "/pkg.Retry/Unary")
        assert response == b"a:x"
    assert servers["bad"].calls >= 1  # some tries met the failing endpoint and were retried on the other


def test_client_cancel_cancels_the_upstream_call(env):
    channel, servers = env
    stream = channel.unary_stream("/pkg.Echo/Forever")(b"", timeout=10)
    assert next(stream) == b"tick"
    stream.cancel()
    assert servers["a"].cancelled.wait(5)


def test_istio_metrics_carry_the_grpc_status(env, edge):
    # Istio's istio_stats: request_protocol "grpc", grpc_response_status from the trailers (OK), the trailers-only
    # headers of a local reply (no route → 12, route timeout → 14).
    channel, _ = env
    call(channel, "/pkg.Echo/Unary")
    for method in ("/other.Service/Method", "/pkg.Slow/Sleep"):
        with pytest.raises(grpc.RpcError):
            call(channel, method, b"2")
    text = http_get(edge.metrics_port, "/stats/prometheus")[1].decode()
    lines = [line for line in text.splitlines() if line.startswith("istio_requests_total{")]
    statuses = {(_label(line, "grpc_response_status"), _label(line, "request_protocol")) for line in lines}
    assert {("0", "grpc"), ("12", "grpc"), ("14", "grpc")} <= statuses, lines


def _label(line: str, name: str) -> str:
    return line.split(f'{name}="', 1)[1].split('"', 1)[0]
