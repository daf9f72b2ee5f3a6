# The control channel between the supervisor and one worker: messages over a SOCK_SEQPACKET socketpair.
#
# Rules:
# - One packet = one message: a msgpack-encoded `Message` struct, optionally carrying file descriptors as
#   SCM_RIGHTS ancillary data (listening sockets). SEQPACKET keeps message boundaries, so no framing.
# - The supervisor speaks first: a worker starts with no sockets and no table; its first messages are
#   LISTENERS (with the sockets of its slot) and TABLE.
# - Supervisor → worker:
#     LISTENERS  add: sockets for listener keys (fds in the same order as `keys`); remove: keys to close
#     TABLE      generation N was published; load it now (workers also check per request)
#     PING       heartbeat; answer PONG with the same `seq`
#     DRAIN      stop accepting new connections, close keep-alive connections at request boundaries, finish
#                in-flight work until `deadline_s` (seconds from now), then exit 0
# - Worker → supervisor:
#     SERVING    the generation it now serves, and the listener keys it holds
#     PONG       heartbeat answer
#     DRAINED    nothing left in flight; exiting
# - Listener key: "<bind>:<gateway port>", e.g. "0.0.0.0:80" — stable across reloads, independent of the
#   port it is actually bound to (--port-map).
# - Blocking and non-blocking sockets both work; callers use trio's wait_readable (worker) or a thread /
#   selector (supervisor). MAX_MESSAGE_BYTES bounds a packet; MAX_FDS bounds descriptors per packet.
from __future__ import annotations

import os
import socket

import msgspec

MAX_MESSAGE_BYTES = 64 * 1024
MAX_FDS = 250

LISTENERS = "listeners"
TABLE = "table"
PING = "ping"
PONG = "pong"
DRAIN = "drain"
SERVING = "serving"
DRAINED = "drained"


class Message(msgspec.Struct, omit_defaults=True, kw_only=True):
    op: str
    generation: int = 0
    seq: int = 0
    keys: list[str] = []  # LISTENERS add (fds in this order) / SERVING held keys
    remove: list[str] = []
    deadline_s: float = 0.0
    pid: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def listener_key(bind: str, port: int) -> str:
    """The listener key of a table Listener: "<bind>:<gateway port>" (bind as the table spells it)."""
    return f"{bind}:{port}"


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_message(sock: socket.socket, message: Message, fds: list[int] | None = None) -> None:
    data = _encoder.encode(message)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def recv_message(sock: socket.socket) -> tuple[Message | None, list[int]]:
    """One message and the fds that came with it; (None, []) when the peer closed the channel."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE_BYTES, MAX_FDS)
    if not data:
        for fd in fds:
            _close_quietly(fd)
        return None, []
    return _decoder.decode(data), list(fds)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass

