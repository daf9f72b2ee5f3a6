# Local replies sent to the client: the I/O half of workers/http/replies.py, over the per-request downstream
# interface (workers/http/downstream.py).
#
# Rules:
# - A local reply to a gRPC request is a trailers-only HTTP 200 carrying grpc-status and grpc-message (Envoy's
#   sendLocalReply for gRPC requests; the mapping is workers/route_policies.py's).
# - local_reply answers through the codec, with the LOCAL_REPLIES entry's flags and details written on the
#   request's log; a request body we did not read is drained when small (RETRY_BUFFER_BYTES) so the connection stays
#   usable, else the reply closes the connection. Draining gateways and `close` entries close it too.
# - closing replies (send_closing_reply) bypass the codec, whose state is unusable or beside the point, and are
#   bounded by SEND_GRACE_S: a client that does not read cannot hold a connection that is closing anyway.
from __future__ import annotations

import trio

from workers.http.codec import REASONS
from workers.http.log import RequestLog
from workers.http.replies import LocalReply, closing_reply, reply_headers, with_flag
from workers.http.retry import RETRY_BUFFER_BYTES
from workers.headers import header_value
from workers.route_policies import grpc_local_reply_headers, grpc_status_of, is_grpc

SEND_GRACE_S = 1.0  # how long a reply on a failed or timed-out connection may take before the close wins


async def local_reply(
    down,
    log: RequestLog,
    reply: LocalReply,
    *,
    status: int = 0,
    body: bytes | None = None,
    close: bool = False,
    extra: list | None = None,
    response_ops=None,
    content_type: bytes | None = b"text/plain",
) -> None:
    """Answer from the gateway itself. `status` and `body` override the entry's (configured replies). A gRPC
    request gets it as a trailers-only 200 (workers/route_policies.grpc_local_reply_headers)."""
    status = status or reply.status
    if body is None:
        body = reply.body
    request = log.request
    if request is not None and request.method == b"POST" and is_grpc(header_value(request.headers, b"content-type")):
        extra = grpc_local_reply_headers(status, body, [*reply.headers, *(extra or ())])
        reply = reply._replace(headers=())
        log.grpc_status = grpc_status_of(extra)
        status, body, content_type = 200, b"", None
    log.status = status
    log.flags = with_flag("DI", reply.flags) if log.flags == "DI" else reply.flags  # a fault delay stays on record
    log.details = reply.details
    ctx = down.ctx
    if reply.headers:
        extra = [*reply.headers, *(extra or ())]
    headers = reply_headers(body, content_type, ctx.server_header, extra, response_ops)
    log.response_headers = headers
    if ctx.draining or close or reply.close:
        down.reset()
    # A request body we did not read: small ones are drained so the connection stays usable.
    if down.request_body_pending and not down.must_close:
        if not await down.drain_body(RETRY_BUFFER_BYTES, ctx.options.request_headers_timeout_s):
            down.reset()
    down.start_response(status, REASONS.get(status, b""), headers)
    if body:
        down.queue_data(body)  # one send with the head and the end, whatever its size (a local reply is small)
    log.bytes_sent += len(body)
    await down.send_end()


async def send_before_close(down, data: bytes) -> None:
    """A last reply on a connection that is closing anyway: bounded, and a client already gone is no error."""
    with trio.move_on_after(SEND_GRACE_S):
        try:
            await down.transport.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def send_closing_reply(down, log: RequestLog, reply: LocalReply, status: int = 0, body: bytes = b"", content_type: bytes | None = None) -> None:
    """A reply written without the codec, then the close; the request's log is finished here."""
    log.status = status or reply.status
    if reply.flags != "-":
        log.flags = reply.flags
    log.details = reply.details
    down.reset()
    down.response_started = True
    try:
        await down.transport.send_all(closing_reply(down.ctx.server_header, log.status, body, content_type))
    finally:
        down.ctx.records.request(log)
