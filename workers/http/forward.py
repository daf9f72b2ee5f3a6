# Forwarding a routed request: the weighted destination once per request, then tries against endpoints of its
# cluster under the route's retry policy (or Istio's default), and the local reply when the tries are spent.
#
# Rules:
# - The destination is picked once (balance.pick_weighted); each try picks an endpoint, avoiding endpoints already
#   tried unless the route hashes (the same key must find the same host, as Envoy drops the previous-hosts predicate
#   then). Each try's endpoint lease is started and finished (with the outlier verdict) or cancelled exactly once.
# - The cluster's circuit (DestinationRule connectionPool) bounds requests (503 UO with x-envoy-overloaded) and
#   retries (maxRetries: a retry over budget answers with what the last try got).
# - Retries only while nothing was sent to the client and the body can be replayed (workers/http/retry.py), within
#   the route timeout; per-try timeouts bound each try.
# - Mirrors start once the primary's body is whole (workers/http/mirror.py); WebSocket upgrades take their own
#   path (workers/http/websocket.py).
from __future__ import annotations

import trio

from workers.balance import pick_weighted
from workers.http.codec import ProtocolError
from workers.http.exchange import Exchange, RequestBodyError, acquire, answer_body_error, answer_failure, exchange_buffered, exchange_streaming
from workers.http.log import ClientGone, RequestLog
from workers.http.mirror import start_mirrors
from workers.http.replies import LOCAL_REPLIES, OVERLOADED
from workers.http.request import RequestInfo
from workers.http.respond import local_reply
from workers.http.retry import Outcome, TryResult, backoff, retriable
from workers.http.websocket import forward_upgrade
from workers.http2.client_exchange import try_h2
from workers.route_policies import hash_for_request


async def forward(down, request, req: RequestInfo, snapshot, rt, log: RequestLog, extra_response_headers) -> bool:
    """Forward the request; returns keep-alive. `extra_response_headers` (CORS) are added to the response."""
    ctx = down.ctx
    route = rt.route
    if not rt.destinations:
        await local_reply(down, log, LOCAL_REPLIES["cluster_not_found"], status=route.cluster_not_found_status)
        return not down.must_close
    dest = rt.destinations[pick_weighted(rt.cumulative, ctx.rng)]
    log.upstream_cluster = dest.wc.cluster or "-"
    if dest.cluster_runtime is None:
        await local_reply(down, log, LOCAL_REPLIES["cluster_not_found"], status=route.cluster_not_found_status)
        return not down.must_close
    policy = route.retry if route.retry is not None else snapshot.table.default_retry
    ex = Exchange(down, request, req, rt, dest, log, policy)
    if ex.body.protocol_error is not None:  # a broken body already parsed: answered before any upstream sees it
        return await answer_body_error(ex)
    ex.extra_response_headers = list(extra_response_headers)  # this request's own: a hash cookie may join them
    hash_policy = dest.wc.hash_policy or dest.cluster_runtime.cluster.hash_policy
    if hash_policy is not None:
        ex.hash_value, set_cookie = hash_for_request(hash_policy, request.headers, req.query, req.forwarded.client_ip)
        if set_cookie is not None:
            ex.extra_response_headers.append((b"set-cookie", set_cookie))
    circuit = ex.cluster_rt.circuit
    if not circuit.reserve_request():
        await local_reply(down, log, LOCAL_REPLIES["overflow"], extra=OVERLOADED, close=ex.body.present)
        return not down.must_close
    try:
        keep_alive = await (forward_upgrade(ex) if req.upgrade is not None else forward_with_retries(ex))
    finally:
        circuit.release_request()
        log.bytes_received = ex.body.bytes  # %BYTES_RECEIVED% and istio_request_bytes
    if rt.mirrors and ex.body.complete and ex.body.replayable:
        start_mirrors(ex)
    return keep_alive


async def forward_with_retries(ex: Exchange) -> bool:
    down = ex.down
    log = ex.log
    balancer = ex.cluster_rt.balancer
    circuit = ex.cluster_rt.circuit
    policy = ex.policy
    max_tries = 1 + (policy.attempts if policy is not None else 0)
    per_try = policy.per_try_timeout_s if policy is not None else 0.0
    avoid_tried = ex.hash_value is None and (policy is None or policy.ignore_previous_hosts)
    tried: list[int] = []
    result: TryResult | None = None
    attempt = 0
    retrying = False
    try:
        while True:
            attempt += 1
            log.attempts = attempt
            index = balancer.choose(trio.current_time(), ex.hash_value, tried if avoid_tried else ())
            if index is None:
                await local_reply(down, log, LOCAL_REPLIES["no_healthy_upstream"], close=not ex.body.can_replay)
                return not down.must_close
            tried.append(index)
            try_deadline = min(ex.deadline, trio.current_time() + per_try) if per_try > 0 else ex.deadline
            try:
                result = await try_once(ex, attempt, index, try_deadline)
            except ClientGone:
                log.flags = "DC"
                log.details = "downstream_remote_disconnect"
                down.reset()
                return False
            except RequestBodyError:
                return await answer_body_error(ex)
            if result.sent:
                return not down.must_close
            if attempt < max_tries and retriable(result, policy, ex.body) and trio.current_time() < ex.deadline:
                if not circuit.retry_budget_left():
                    break  # retry budget exhausted (maxRetries): answer with what we have
                if not retrying:
                    retrying = True
                    circuit.reserve_retry()
                if result.upstream is not None:
                    down.ctx.pools.discard(result.upstream)
                    result.upstream = None
                await trio.sleep(backoff(policy, attempt, down.ctx.rng))
                continue
            break
    finally:
        if retrying:
            circuit.release_retry()
    return await answer_failure(ex, result, attempt > 1)


async def try_once(ex: Exchange, attempt: int, index: int, try_deadline: float) -> TryResult:
    """One try against endpoint `index`, inside its balancer lease: settled with the try's outlier verdict, or
    with none (-1) when the try ended otherwise (the client left, the body broke, cancelled)."""
    balancer = ex.cluster_rt.balancer
    state = balancer.states[index]
    ex.log.upstream_host = state.address_text
    balancer.on_start(index)
    result: TryResult | None = None
    try:
        if ex.h2:  # an HTTP/2 cluster (or useClientProtocol with an HTTP/2 client): a stream, not a connection
            result = await try_h2(ex, attempt, state.endpoint, try_deadline)
            return result
        # An idle pooled connection is every request's case under load: taken without a coroutine of its own.
        upstream = ex.down.ctx.pools.take_idle(ex.cluster_rt.origination(state.endpoint, ex.host)[0])
        if upstream is None:
            acquired = await acquire(ex, state.endpoint, try_deadline)
            if isinstance(acquired, TryResult):
                result = acquired
                return result
            upstream = acquired
        ex.log.upstream_local = upstream.local
        try:
            head = upstream.codec.send_request(ex.request.method, ex.target, ex.try_headers(attempt, try_deadline))
        except ProtocolError as exc:
            ex.down.ctx.pools.discard(upstream)
            result = TryResult(Outcome.PROTOCOL_ERROR, reason=str(exc))
            return result
        exchange = exchange_buffered if ex.body.complete else exchange_streaming
        result = await exchange(ex, upstream, head, try_deadline)
        return result
    finally:
        balancer.settle(index, result.outlier_status if result is not None else -1, trio.current_time())
