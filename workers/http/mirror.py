# Request mirroring (Istio's `mirror` / `mirrors`, Envoy's request_mirror_policies): fire and forget.
#
# Rules:
# - A mirror starts only once the primary's body is whole and replayable; it gets `mirrorPercentage` of requests,
#   the primary's headers (the same x-request-id), its body re-framed with its length, and the Host with "-shadow"
#   appended (Envoy's default, unless --shadow-host-suffix is off).
# - A mirror to an HTTP/2 cluster is a stream on the same connections the primary requests use.
# - Its response is read and dropped; nothing about it reaches the client. At most MAX_MIRRORS_IN_FLIGHT per
#   worker, each bounded by MIRROR_TIMEOUT_S.
# - A mirror is a task of the worker's background nursery, so it has its own boundary: an unexpected error is
#   logged and counted like a connection's, and the worker goes on.
from __future__ import annotations

import trio

from workers.http.codec import CLOSED, END_OF_MESSAGE, NEED_DATA, ProtocolError
from edge.table import UPSTREAM_HTTP2
from workers.http.exchange import open_upstream
from workers.http2.client_exchange import send_mirror_h2
from workers.netio import TransportClosed
from workers.upstream import ConnectFailure, Overflow

MIRROR_TIMEOUT_S = 10.0
MAX_MIRRORS_IN_FLIGHT = 256
_MIRROR_REPLACED = frozenset({b"host", b"content-length", b"transfer-encoding"})


def shadow_host(host: bytes) -> bytes:
    name, sep, port = host.rpartition(b":")
    if sep and port.isdigit() and not host.endswith(b"]"):
        return name + b"-shadow:" + port
    return host + b"-shadow"


def start_mirrors(ex) -> None:
    """Start the route's mirrors of the exchange `ex` (workers/http/exchange.Exchange)."""
    ctx = ex.down.ctx
    rng = ctx.rng
    for mirror, cluster_rt in ex.rt.mirrors:
        if cluster_rt is None or ctx.mirrors_in_flight >= MAX_MIRRORS_IN_FLIGHT:
            continue
        if mirror.ppm < 1_000_000 and rng.randrange(1_000_000) >= mirror.ppm:
            continue
        host = shadow_host(ex.host) if ctx.options.shadow_host_suffix else ex.host
        headers = [(b"host", host)]
        headers += [h for h in ex.upstream_headers if h[0] not in _MIRROR_REPLACED]
        body = b"".join(ex.body.buffer)
        if ex.body.present:
            headers.append((b"content-length", str(len(body)).encode()))
        ctx.mirrors_in_flight += 1
        ctx.spawn(send_mirror, ctx, cluster_rt, ex.request.method, ex.target, host, headers, body, ex.h2 if cluster_rt is ex.cluster_rt else cluster_rt.cluster.upstream_protocol == UPSTREAM_HTTP2)


async def send_mirror(ctx, cluster_rt, method: bytes, target: bytes, host: bytes, headers: list, body: bytes, h2: bool = False) -> None:
    """One mirrored request, its response read and dropped (the task's boundary: see the module's rules); on a
    stream of the cluster's HTTP/2 connections when it speaks HTTP/2."""
    upstream = None
    try:
        with trio.move_on_after(MIRROR_TIMEOUT_S):
            if h2:
                await send_mirror_h2(ctx, cluster_rt, method, target, host, headers, body)
                return
            index = cluster_rt.balancer.choose(trio.current_time())
            if index is None:
                return
            upstream = await open_upstream(ctx, cluster_rt, cluster_rt.balancer.states[index].endpoint, host)
            codec = upstream.codec
            data = codec.send_request(method, target, headers)
            if body:
                data += codec.send_data(body)
            data += codec.send_end()
            await upstream.transport.send_all(data)
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    codec.receive_data(await upstream.transport.recv())
                elif event is END_OF_MESSAGE:
                    ctx.pools.release(upstream, True, cluster_rt.cluster.pool.max_requests_per_connection)
                    upstream = None
                    return
                elif event is CLOSED:
                    return
    except (ConnectFailure, Overflow, ProtocolError, TransportClosed, trio.ClosedResourceError, OSError):
        pass
    except Exception as exc:  # noqa: BLE001 - a mirror's boundary: it runs in the worker's background nursery
        ctx.records.connection_failed(exc, "mirror")
    finally:
        ctx.mirrors_in_flight -= 1
        if upstream is not None:
            ctx.pools.discard(upstream)
