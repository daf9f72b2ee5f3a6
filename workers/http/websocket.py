# WebSocket over HTTP/1.1 (Envoy's upgrade_configs for "websocket", which Istio's gateways enable): the upgrade
# handshake is proxied, then bytes are spliced both ways.
#
# Rules:
# - One try: a handshake is not retried once sent. The upstream's 101 goes to the client and the connection becomes
#   a byte pipe (workers/l4/splice.py, with its idle timeout and half-close) until either side closes; any other
#   answer is relayed and the client connection closes after it.
# - An upgrade request with a body is refused (400): its bytes could not be told apart from the tunnel's.
# - The 101's hop-by-hop headers other than Upgrade/Connection are dropped; `server` is ours, as for any response.
# - This is HTTP/1's own path: it uses the connection's codec and transport directly (HTTP/2's extended CONNECT
#   would be another path).
from __future__ import annotations

import trio

from workers import headers as hdr
from workers.context import STATE_SPLICED
from workers.http.codec import ProtocolError, Response
from workers.http.exchange import EXCHANGE_ERRORS, Exchange, acquire, answer_failure, failure, read_response_head, relay_response
from workers.http.replies import LOCAL_REPLIES
from workers.http.respond import local_reply
from workers.http.retry import TryResult
from workers.l4.splice import splice_bytes
from workers.netio import TransportClosed
from workers.upstream import UpstreamConnection

UPGRADE_RESPONSE_HOP_BY_HOP = hdr.HOP_BY_HOP - {b"upgrade", b"connection"}


async def forward_upgrade(ex: Exchange) -> bool:
    """Proxy the handshake; returns keep-alive (always False: this connection never returns to HTTP)."""
    down = ex.down
    log = ex.log
    down.reset()  # whatever happens, this connection does not return to HTTP keep-alive
    if ex.body.present or not await down.drain_body(0, down.ctx.options.request_headers_timeout_s):
        await local_reply(down, log, LOCAL_REPLIES["upgrade_with_body"])
        return False
    balancer = ex.cluster_rt.balancer
    index = balancer.choose(trio.current_time(), ex.hash_value)
    if index is None:
        await local_reply(down, log, LOCAL_REPLIES["no_healthy_upstream"], close=True)
        return False
    log.upstream_host = balancer.states[index].address_text
    log.attempts = 1
    with balancer.lease(index, trio.current_time) as lease:
        acquired = await acquire(ex, balancer.states[index].endpoint, ex.deadline)
        if isinstance(acquired, TryResult):
            lease.verdict = acquired.outlier_status
            return await answer_failure(ex, acquired, False)
        response = await _handshake(ex, acquired)
        if isinstance(response, TryResult):
            lease.verdict = response.outlier_status
            return await answer_failure(ex, response, False)
        lease.verdict = response.status_code  # finished when the relay or the splice ends, as the lease exits
        if response.status_code != 101:
            return await relay_response(ex, acquired, response)
        await _splice_upgraded(ex, acquired, response)
        return False


async def _handshake(ex: Exchange, upstream: UpstreamConnection) -> Response | TryResult:
    """Send the upgrade request; the upstream's answer (a 101 included), or how the try failed."""
    ex.log.upstream_local = upstream.local
    headers = ex.upstream_headers + [(b"x-envoy-attempt-count", b"1"), (b"connection", b"upgrade"), (b"upgrade", ex.req.upgrade)]
    codec = upstream.codec
    try:
        await upstream.transport.send_all(codec.send_request(ex.request.method, ex.target, headers) + codec.send_end())
        return await read_response_head(ex.down, upstream, watch_client=True, accept_switch=True)
    except EXCHANGE_ERRORS as exc:
        ex.down.ctx.pools.discard(upstream)
        return failure(exc)
    except BaseException:
        ex.down.ctx.pools.discard(upstream)
        raise


async def _splice_upgraded(ex: Exchange, upstream: UpstreamConnection, response: Response) -> None:
    down = ex.down
    log = ex.log
    ctx = down.ctx
    server = ctx.server_header
    headers = [(n, v) for n, v in response.headers if n not in UPGRADE_RESPONSE_HOP_BY_HOP and not (server and n == b"server")]
    if server:
        headers.append((b"server", server))
    log.status = 101
    log.details = "via_upstream"
    down.response_started = True
    down.state = STATE_SPLICED  # the splice's own idle timeout governs from here
    try:
        # The 101, then whatever the upstream sent behind it, go to the client in one send; what the client sent
        # behind its handshake opens the upstream direction of the splice.
        await down.transport.send_all(down.conn.send_switching(headers) + upstream.codec.take_switched_data())
        splice = await splice_bytes(down.transport, upstream.transport, ctx.options.idle_timeout_s, initial=down.conn.take_switched_data())
        log.bytes_received += splice.bytes_up
        log.bytes_sent += splice.bytes_down
    except (ProtocolError, TransportClosed, trio.ClosedResourceError):
        pass
    finally:
        ctx.pools.discard(upstream)
