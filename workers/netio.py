# Byte transports for the worker's data path: a raw non-blocking socket (TLS sessions run on
# workers/tls/transport.TLSTransport, which has the same surface).
#
# Rules:
# - A socket call that succeeds at once costs no scheduler pass: try the non-blocking call first and wait only when
#   it would block. Reads wait in workers/readiness.py (the socket registered once, edge-triggered: no epoll_ctl
#   per wait), writes with trio.lowlevel.wait_writable (rare: a full send buffer). To keep every connection fair to
#   the others, a transport yields with a real checkpoint after FAIRNESS_OPS calls in a row that did not
#   wait (bulk streaming); a request/response exchange waits anyway, so it never pays for the checkpoint.
# - recv() returns b"" at EOF and raises TransportClosed (a trio.BrokenResourceError) when the peer reset
#   the connection; send_all() raises TransportClosed when the peer is gone. Callers catch exactly that.
# - Closing is idempotent; close() notifies trio first, so a task parked on the socket wakes with
#   ClosedResourceError instead of waiting forever on a recycled fd.
from __future__ import annotations

import errno
import select
import socket

import trio

from workers import readiness

FAIRNESS_OPS = 16
RECV_BYTES = 64 * 1024

_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN, errno.EHOSTUNREACH, errno.ENETUNREACH})


class TransportClosed(trio.BrokenResourceError):
    """The peer reset or went away."""


class SocketTransport:
    """A connected non-blocking socket.socket used without trio's stream wrappers."""

    __slots__ = ("sock", "_fast_ops", "closed", "_rs")

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self._fast_ops = 0
        self.closed = False
        self._rs: readiness.ReadState | None = None  # registered at the first wait for bytes

    async def _fairness(self) -> None:
        self._fast_ops += 1
        if self._fast_ops >= FAIRNESS_OPS:
            self._fast_ops = 0
            await trio.lowlevel.checkpoint()

    async def recv(self, max_bytes: int = RECV_BYTES) -> bytes:
        sock = self.sock
        try:
            data = sock.recv(max_bytes)
        except BlockingIOError:
            if self._rs is not None:
                self._rs.ready = False  # drained: the next arrival is a new event
        except OSError as exc:
            raise self._broken(exc) from exc
        else:
            if self._rs is not None:
                self._rs.ready = len(data) == max_bytes  # a full read may leave bytes no new event announces
            await self._fairness()
            return data
        return await self.recv_waiting(max_bytes)

    async def recv_waiting(self, max_bytes: int = RECV_BYTES) -> bytes:
        """recv() for when bytes are unlikely to be there yet: wait for readability first, saving the
        system call that would fail."""
        sock = self.sock
        rs = self._rs
        if rs is None:
            if self.closed:
                raise trio.ClosedResourceError("transport closed")
            rs = self._rs = readiness.watch(sock)
        while True:
            if self.closed:
                raise trio.ClosedResourceError("transport closed")
            if rs.ready:  # an event came while nobody waited: read at once (counted for fairness)
                await self._fairness()  # (cancelled here, the flag stays set for the next reader)
                rs.ready = False
            else:
                await rs.wait()
                self._fast_ops = 0  # a real wait was a scheduler pass
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._broken(exc) from exc
            if len(data) == max_bytes:
                rs.ready = True  # more may be queued, and no new event will say so
            return data

    def has_unread(self) -> bool:
        """Whether the peer sent something we have not read (bytes, EOF or a reset), looking without taking it:
        an idle pooled connection must say nothing before its next request."""
        return has_unread(self.sock)

    def recv_nowait(self, max_bytes: int = RECV_BYTES) -> bytes | None:
        """Bytes if some are ready now, b"" at EOF, None if the call would block."""
        try:
            data = self.sock.recv(max_bytes)
        except BlockingIOError:
            if self._rs is not None:
                self._rs.ready = False
            return None
        except OSError as exc:
            raise self._broken(exc) from exc
        if self._rs is not None:
            self._rs.ready = len(data) == max_bytes
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._broken(exc) from exc
        if sent == len(data):
            await self._fairness()
            return
        view = memoryview(data)[sent:]
        while view:
            if self.closed:
                raise trio.ClosedResourceError("transport closed")
            await trio.lowlevel.wait_writable(sock)
            self._fast_ops = 0
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._broken(exc) from exc
            view = view[sent:]

    async def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        await trio.lowlevel.checkpoint()

    def _broken(self, exc: OSError) -> Exception:
        if exc.errno == errno.EBADF or self.closed:
            return trio.ClosedResourceError("transport closed")
        return TransportClosed(str(exc))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            rs, self._rs = self._rs, None
            if rs is not None:
                rs.forget()  # out of the readiness set first; a reader waiting there wakes with ClosedResourceError
            close_socket(self.sock)

    def unwatch(self) -> None:
        """Leave the readiness set (a parked connection: the parker watches it); the next wait registers again."""
        rs, self._rs = self._rs, None
        if rs is not None:
            rs.forget()

    close_nowait = close  # what aclose does, without the checkpoint (a parked connection closed by a sweep)

    def has_buffered(self) -> bool:
        """Whether bytes already read wait in the transport (never: a socket transport keeps none)."""
        return False

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


Transport = SocketTransport  # the plain-socket transport; workers/tls/transport.TLSTransport has the same surface



def close_socket(sock: socket.socket) -> None:
    """Close a socket a task may be parked on: trio is told first, so that task wakes with ClosedResourceError
    instead of waiting on a recycled fd. Idempotent."""
    if sock.fileno() >= 0:
        try:
            trio.lowlevel.notify_closing(sock)
        except (RuntimeError, ValueError):
            pass
        sock.close()


def has_unread(sock: socket.socket) -> bool:
    """A poll without waiting: input, EOF, an error or a hang-up all count."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


async def open_tcp_socket(host: str, port: int) -> socket.socket:
    """Connect a non-blocking TCP socket to an IP literal; raises OSError on failure."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((host, port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, errno.errorcode.get(err, "connect failed"))
        else:
            await trio.lowlevel.checkpoint()
    except BaseException:
        try:
            trio.lowlevel.notify_closing(sock)
        except (RuntimeError, ValueError):
            pass
        sock.close()
        raise
    return sock


def set_tcp_keepalive(sock: socket.socket, keepalive: tuple[int, float, float]) -> None:
    """DestinationRule tcp.tcpKeepalive: (probes, time_s, interval_s); 0 leaves the OS default."""
    probes, idle_s, interval_s = keepalive
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if probes:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, int(probes))
        if idle_s:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle_s)))
        if interval_s:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(interval_s)))
    except (OSError, AttributeError):  # a platform without the TCP_KEEP* options keeps its defaults
        pass
