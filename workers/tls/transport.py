# TLS over a connected non-blocking socket, for both sides: terminated client sessions and originated upstream
# sessions (HTTP and TCP alike), with the surface of workers/netio.py's transports.
#
# Rules:
# - An ssl.SSLObject between memory BIOs over the raw socket, try-first like workers/netio.py; a task waits only
#   when a call would block, with a real checkpoint every FAIRNESS_OPS calls that did not wait.
# - Reads wait in workers/readiness.py's edge-triggered set, as SocketTransport's do (the socket registered once at
#   its first wait, no epoll_ctl per wait; the `ready` flag kept by every socket read here); writes wait with
#   trio.lowlevel.wait_writable (rare: a full send buffer).
# - Unlike trio.SSLStream it sends the alert of a failed handshake ("certificate required") instead of dropping
#   it. (Requests/s measured on par with trio.SSLStream.)
# - recv() returns b"" on close_notify and on a bare EOF (HTTPS peers often skip close_notify); send_eof is
#   close_notify then FIN.
from __future__ import annotations

import errno
import socket
import ssl

import trio

from workers import readiness
from workers.netio import FAIRNESS_OPS, TransportClosed, close_socket, has_unread

TRANSPORT_RECV_BYTES = 64 * 1024


class TLSTransport:
    """TLS over a connected non-blocking socket: an ssl.SSLObject between two memory BIOs, with the
    recv/recv_nowait/send_all/send_eof/close surface of workers/netio.py transports.

    - Socket calls are try-first; a task waits (readiness set / wait_writable) only when a call would block,
      and yields with a real checkpoint every FAIRNESS_OPS calls that did not wait.
    - One reader and one writer may run at once (the HTTP proxy reads a request body while it relays the
      response). Encrypted bytes leave in the order OpenSSL produced them: whoever flushes takes every
      pending byte of the outgoing BIO, and a flush that has to wait holds `_send_lock` until it is done.
    - `prefix` is ciphertext already read from the socket (the ClientHello read for routing).
    - A failed handshake still sends what OpenSSL queued (the alert, e.g. "certificate required") before
      the caller closes the socket.
    - recv() returns b"" on close_notify and on a bare EOF (HTTPS clients often skip close_notify).
    """

    __slots__ = ("_fast_ops", "_incoming", "_outgoing", "_rs", "_send_lock", "closed", "sock", "ssl_object")

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, prefix: bytes = b"", *, server_side: bool = True, server_hostname: str | None = None):
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        if prefix:
            self._incoming.write(prefix)
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname)
        self._send_lock = trio.Lock()
        self._fast_ops = 0
        self.closed = False
        self._rs: readiness.ReadState | None = None  # registered at the first wait for bytes

    # -- socket edge

    def _recv_socket(self) -> bool:
        """One socket read into the incoming BIO (EOF marks it); False when it would block. Keeps the readiness
        flag: cleared when the socket showed drained, set after a full read (more may be queued unannounced)."""
        try:
            data = self.sock.recv(TRANSPORT_RECV_BYTES)
        except BlockingIOError:
            if self._rs is not None:
                self._rs.ready = False
            return False
        except OSError as exc:
            raise self._broken(exc) from exc
        if self._rs is not None:
            self._rs.ready = len(data) == TRANSPORT_RECV_BYTES
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
        return True

    async def _wait_readable(self) -> None:
        """Until the socket is readable, in the readiness set (registered at the first wait)."""
        if self.closed:
            raise trio.ClosedResourceError("transport closed")
        rs = self._rs
        if rs is None:
            rs = self._rs = readiness.watch(self.sock)
        await rs.wait()
        self._fast_ops = 0

    async def _fill(self) -> None:
        """Move ciphertext from the socket into the incoming BIO (EOF marks the BIO)."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError("transport closed")
            if self._recv_socket():
                return
            await self._wait_readable()

    async def _flush(self) -> None:
        """Send every byte OpenSSL has produced so far, in order."""
        outgoing = self._outgoing
        if not outgoing.pending:
            return
        lock = self._send_lock
        if lock.locked():
            async with lock:
                await self._send(outgoing.read())
            return
        data = outgoing.read()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._broken(exc) from exc
        if sent == len(data):
            return
        lock.acquire_nowait()
        try:
            await self._send(memoryview(data)[sent:])
        finally:
            lock.release()

    async def _send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        sock = self.sock
        while view:
            if self.closed:
                raise trio.ClosedResourceError("transport closed")
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:
                raise self._broken(exc) from exc

    def _flush_nowait(self) -> None:
        """Best effort, never waits: hand what OpenSSL queued (an alert, close_notify) to the kernel."""
        if self._send_lock.locked() or self.closed:
            return
        data = self._outgoing.read()
        if data:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def _broken(self, exc: OSError) -> Exception:
        if exc.errno == errno.EBADF or self.closed:
            return trio.ClosedResourceError("transport closed")
        return TransportClosed(str(exc))

    async def _fairness(self) -> None:
        self._fast_ops += 1
        if self._fast_ops >= FAIRNESS_OPS:
            self._fast_ops = 0
            await trio.lowlevel.checkpoint()

    # -- TLS

    async def do_handshake(self, *, hold_last_flight: bool = False) -> None:
        """Raises ssl.SSLError (after sending its alert) or TransportClosed. `hold_last_flight` (a server whose
        client speaks first): what the handshake's end queued, a TLS 1.3 server's session tickets, stays queued
        until the first send or the first wait for bytes (recv, recv_waiting: both flush first), so it leaves with
        the first response: one send fewer per new connection, and no client waits on it."""
        ssl_object = self.ssl_object
        while True:
            try:
                ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError:
                self._flush_nowait()
                raise
        if not hold_last_flight:
            await self._flush()  # the last flight (TLS 1.3 session tickets; a client's Finished)

    async def recv(self, max_bytes: int = TRANSPORT_RECV_BYTES) -> bytes:
        ssl_object = self.ssl_object
        waited = False
        while True:
            try:
                data = ssl_object.read(max_bytes)
            except ssl.SSLWantReadError:
                if self._outgoing.pending:
                    await self._flush()  # held session tickets, or a post-handshake reply (KeyUpdate)
                await self._fill()
                waited = True
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise TransportClosed(f"TLS error: {exc}") from exc
            if not waited:
                await self._fairness()
            return data

    async def recv_waiting(self, max_bytes: int = TRANSPORT_RECV_BYTES) -> bytes:
        """recv() for when bytes are unlikely to be there yet (a keep-alive connection between requests): with no
        record and no plaintext held in the session, wait for the socket first, saving the read that would fail
        with SSLWantReadError (~1.3 µs, an exception object built by the ssl module) and the recv() that would
        fail with EAGAIN, as SocketTransport.recv_waiting does."""
        if not self._incoming.pending and not self.ssl_object.pending():
            if self._outgoing.pending:
                await self._flush()  # held session tickets, or a post-handshake reply (KeyUpdate)
            await self._wait_readable()
            await self._fill()
        return await self.recv(max_bytes)

    def has_unread(self) -> bool:
        """Bytes (a record, a close_notify), EOF or an error waiting on the socket: a pooled connection that said
        something while idle is not reused (workers/upstream.py)."""
        return bool(self._incoming.pending) or has_unread(self.sock)

    def recv_nowait(self, max_bytes: int = TRANSPORT_RECV_BYTES) -> bytes | None:
        """Plaintext if some is ready now, b"" at EOF, None if a read would block."""
        ssl_object = self.ssl_object
        for _ in range(2):
            try:
                return ssl_object.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except ssl.SSLError as exc:
                raise TransportClosed(f"TLS error: {exc}") from exc
            if not self._recv_socket():
                return None
        return None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise trio.ClosedResourceError("transport closed")
        try:
            self.ssl_object.write(data)
        except ssl.SSLError as exc:
            raise TransportClosed(f"TLS error: {exc}") from exc
        await self._flush()
        await self._fairness()

    async def send_eof(self) -> None:
        """close_notify, then FIN: the peer reads EOF; reading from it goes on (TLS 1.3 half-close)."""
        if self.closed:
            return
        try:
            self.ssl_object.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # close_notify is queued; the peer's answer is not awaited
        except ssl.SSLError:
            pass
        try:
            await self._flush()
        except (TransportClosed, trio.ClosedResourceError):
            pass
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.unwatch()  # out of the readiness set first; a reader waiting there wakes with ClosedResourceError
            close_socket(self.sock)

    def close_nowait(self) -> None:
        """close_notify when the session is up (best effort, no wait), then close."""
        if not self.closed:
            try:
                self.ssl_object.unwrap()
            except (ssl.SSLError, ValueError):
                pass
            self._flush_nowait()
            self.close()

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    def unwatch(self) -> None:
        """Leave the readiness set (a parked connection: the parker watches it); the next wait registers again."""
        rs, self._rs = self._rs, None
        if rs is not None:
            rs.forget()

    def has_buffered(self) -> bool:
        """Whether ciphertext or plaintext already read waits in the session, or bytes to send (a held last flight):
        a connection with some is not parked (its socket would not wake the parker; what is queued would not leave)."""
        return bool(self._incoming.pending) or self.ssl_object.pending() > 0 or bool(self._outgoing.pending)

    # -- what the session negotiated

    def getpeercert(self, binary_form: bool = False):
        return self.ssl_object.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        return self.ssl_object.selected_alpn_protocol()

    def version(self) -> str | None:
        return self.ssl_object.version()
