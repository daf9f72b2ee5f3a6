# Retry decisions of the HTTP proxy, pure: how a try ended (Outcome, TryResult), whether the route's policy retries
# it, the backoff before the next try, and the local reply when the tries are spent.
#
# Rules (Envoy's router, as Istio configures it: retryOn, attempts, perTryTimeout, retryRemoteLocalities aside):
# - connect-failure retries a failed connect; reset retries a reset or a broken response; 5xx covers both and
#   5xx statuses and per-try timeouts; gateway-error covers connect failures, resets, per-try timeouts and 502/503/504;
#   retriable-4xx is 409; retriable-status-codes lists its own. refused-stream retries an HTTP/2 stream the upstream
#   refused (REFUSED_STREAM, or above a GOAWAY's last-stream-id: never processed). cancelled, deadline-exceeded,
#   internal, resource-exhausted and unavailable retry on the grpc-status of the response headers
#   (workers/route_policies.grpc_status_retriable).
# - A try can be retried only while its request body can be replayed: not yet read, or read whole within
#   RETRY_BUFFER_BYTES.
# - Backoff: full jitter, base 25 ms (or the policy's), capped at RETRY_BACKOFF_MAX_FACTOR × base (Envoy's).
# - Out of tries, the reply names the failure (UT, UO, UPE, UF/UC, or URX once the request was retried).
from __future__ import annotations

from workers.http.framing import ProtocolError
from workers.http.replies import LOCAL_REPLIES, LocalReply
from workers.route_policies import grpc_status_retriable

RETRY_BUFFER_BYTES = 1024 * 1024  # Envoy's per_request_buffer_limit_bytes default for retries and mirrors
RETRY_BACKOFF_BASE_S = 0.025  # Envoy's default base interval
RETRY_BACKOFF_MAX_FACTOR = 10  # Envoy's default max interval: 10 × base


class Outcome:
    """Why a try ended without a response going downstream."""

    CONNECT_FAILURE = "connect_failure"
    OVERFLOW = "overflow"
    RESET = "reset"
    REFUSED = "refused"  # an HTTP/2 stream the upstream refused (never processed)
    TIMEOUT = "timeout"
    PER_TRY_TIMEOUT = "per_try_timeout"
    PROTOCOL_ERROR = "protocol_error"
    STATUS = "status"  # a response came; `sent` says whether it went downstream


class TryResult:
    __slots__ = ("kind", "status", "reason", "upstream", "response", "sent", "grpc_status")

    def __init__(self, kind: str, status: int = 0, reason: str = "", upstream=None, response=None):
        self.kind = kind
        self.status = status
        self.reason = reason
        self.upstream = upstream  # held only for a retriable response that was not sent
        self.response = response
        self.sent = False
        self.grpc_status = -1  # the grpc-status of the response headers (a trailers-only gRPC response), -1 = none

    @property
    def outlier_status(self) -> int:
        """What outlier detection counts: the status, 0 for a failure with no response, -1 for no verdict."""
        if self.kind == Outcome.STATUS:
            return self.status
        if self.kind == Outcome.PROTOCOL_ERROR:
            return 502
        if self.kind == Outcome.OVERFLOW:
            return -1
        return 0


class BodyState:
    """The client's request body across tries."""

    __slots__ = ("present", "chunked", "complete", "buffer", "replayable", "consumed", "bytes", "client_failed", "upstream_failed", "dechunked", "protocol_error")

    def __init__(self, present: bool, chunked: bool):
        self.present = present
        self.chunked = chunked
        self.complete = not present
        self.buffer: list[bytes] = []
        self.replayable = True
        self.consumed = False
        self.bytes = 0
        self.client_failed = False
        self.upstream_failed = False
        self.dechunked = False  # a chunked body read whole before forwarding goes upstream with its length
        self.protocol_error: ProtocolError | None = None  # the client's body broke the framing rules

    @property
    def can_replay(self) -> bool:
        return not self.consumed or (self.complete and self.replayable)

    def keep(self, chunk: bytes) -> None:
        """A chunk on its way upstream: counted, and kept for a replay while the body stays small enough."""
        self.consumed = True
        self.bytes += len(chunk)
        if self.replayable:
            if self.bytes <= RETRY_BUFFER_BYTES:
                self.buffer.append(bytes(chunk))
            else:
                self.replayable = False
                self.buffer.clear()


def retriable(result: TryResult, policy, body: BodyState) -> bool:
    if policy is None or policy.attempts <= 0 or not body.can_replay:
        return False
    retry_on = policy.retry_on
    kind = result.kind
    if kind == Outcome.CONNECT_FAILURE:
        return "connect-failure" in retry_on or "5xx" in retry_on or "gateway-error" in retry_on or "reset" in retry_on
    if kind in (Outcome.RESET, Outcome.PROTOCOL_ERROR):
        # Envoy counts an upstream reset (a broken response included) as a 5xx for both policies.
        return "reset" in retry_on or "5xx" in retry_on or "gateway-error" in retry_on
    if kind == Outcome.REFUSED:
        return "refused-stream" in retry_on or "reset" in retry_on or "5xx" in retry_on or "gateway-error" in retry_on
    if kind == Outcome.PER_TRY_TIMEOUT:
        return "5xx" in retry_on or "gateway-error" in retry_on
    if kind == Outcome.STATUS:
        return status_retriable(result.status, policy, result.grpc_status)
    return False


def status_retriable(status: int, policy, grpc_status: int = -1) -> bool:
    if policy is None or policy.attempts <= 0:
        return False
    retry_on = policy.retry_on
    if grpc_status > 0 and grpc_status_retriable(grpc_status, retry_on):
        return True
    if status >= 500 and "5xx" in retry_on:
        return True
    if status in (502, 503, 504) and "gateway-error" in retry_on:
        return True
    if status == 409 and "retriable-4xx" in retry_on:
        return True
    return status in policy.retriable_status_codes


def backoff(policy, attempt: int, rng) -> float:
    base = policy.backoff_base_s if policy is not None and policy.backoff_base_s > 0 else RETRY_BACKOFF_BASE_S
    return min(base * RETRY_BACKOFF_MAX_FACTOR, rng.random() * base * (2 ** (attempt - 1)))


def failure_reply(kind: str, retried: bool) -> tuple[LocalReply, list]:
    """The local reply for a request whose last try ended in `kind`, with its extra headers."""
    if kind in (Outcome.TIMEOUT, Outcome.PER_TRY_TIMEOUT):
        return LOCAL_REPLIES["upstream_timeout"], []
    if kind == Outcome.OVERFLOW:
        return LOCAL_REPLIES["upstream_overflow"], [(b"x-envoy-overloaded", b"true")]
    if kind == Outcome.PROTOCOL_ERROR:
        return LOCAL_REPLIES["upstream_protocol_error"], []
    if kind == Outcome.CONNECT_FAILURE:
        return LOCAL_REPLIES["connect_failure_retried" if retried else "connect_failure"], []
    return LOCAL_REPLIES["upstream_reset_retried" if retried else "upstream_reset"], []
