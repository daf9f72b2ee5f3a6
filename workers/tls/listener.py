# TLS listeners (PROTO_HTTPS and PROTO_TLS): route on the ClientHello, then pass the bytes through or terminate.
#
# Rules:
# - Read the ClientHello first (workers/tls/sni.py), pick the filter chain by SNI (SniIndex: exact SNI → the
#   longest "*.suffix" → the first chain with no server names; no chain → closed, Envoy's filter_chain_not_found),
#   and only then create the TLS session, from that chain's own SSLContext, replaying the bytes read. (An
#   sni_callback that swaps `sslobj.context` is not enough: OpenSSL's SSL_set_SSL_CTX swaps the certificate only,
#   so the verify mode — MUTUAL — and the protocol versions would stay the first context's.)
# - A passthrough chain (tls None) splices the raw bytes, hello included (workers/l4/tcp.py). A terminating chain
#   serves HTTP (route_config, scheme "https", the chain's own router) or splices the decrypted bytes to its tcp
#   route (Gateway protocol TLS + SIMPLE). An HTTP chain offers ALPN h2,http/1.1; h2 chosen → workers/http2.
# - The ClientHello and the handshake share one deadline: Options.tls_handshake_timeout_s (Istio: 15 s).
# - Client certificates (MUTUAL, or OPTIONAL_MUTUAL when one is presented): the chain is verified by OpenSSL
#   against the chain's CA; SANs and pins are checked right after the handshake; a failure closes the connection
#   before any byte is read from it. A verified certificate is forwarded as x-forwarded-client-cert.
from __future__ import annotations

import socket
import ssl
import time
from typing import NamedTuple

import trio

from edge.table import ServerTLS
from workers.context import WorkerContext
from workers.http.downstream import Http1Downstream
from workers.http.server import serve_h2_connection, serve_http_connection
from workers.l4.tcp import new_tcp_log, proxy_l4
from workers.netio import TransportClosed
from workers.tls.certs import client_certificate_failure
from workers.tls.contexts import TLSContexts
from workers.tls.sni import ClientHello, ClientHelloReader, SNIParseError
from workers.tls.transport import TLSTransport
from workers.tls.xfcc import forwarded_client_cert

CLIENT_HELLO_READ_BYTES = 16 * 1024
# What a terminating HTTP chain offers by ALPN: HTTP/2 first, as Istio's gateways (Envoy: h2,http/1.1); a client
# that offers no ALPN gets HTTP/1.1 (or HTTP/2 with prior knowledge: workers/http/server.py reads its preface).
SERVER_ALPN = ("h2", "http/1.1")


class HelloRead(NamedTuple):
    hello: ClientHello | None
    buffered: bytes
    failure: str  # "" when hello is set


async def read_client_hello(sock: socket.socket) -> HelloRead:
    """Read from a non-blocking socket until the ClientHello is complete. Garbage, EOF and resets are a
    failure value; the caller bounds the time."""
    reader = ClientHelloReader()
    while True:
        try:
            data = sock.recv(CLIENT_HELLO_READ_BYTES)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        except OSError as exc:
            return HelloRead(None, b"", f"read failed: {exc.strerror or exc}")
        if not data:
            return HelloRead(None, b"", "closed before a ClientHello")
        try:
            hello = reader.feed(data)
        except SNIParseError as exc:
            return HelloRead(None, b"", f"not a TLS ClientHello: {exc}")
        if hello is not None:
            return HelloRead(hello, reader.buffered, "")


async def serve_tls(ctx: WorkerContext, sock: socket.socket, key: str) -> bool | None:
    """PROTO_HTTPS and PROTO_TLS listeners: route on the ClientHello, then pass through or terminate. True when
    the HTTP connection was parked (open, owned by the parker: workers/parking.py)."""
    snapshot = ctx.current()
    lr = snapshot.listeners.get(key) if snapshot is not None else None
    if lr is None:
        return
    contexts: TLSContexts = ctx.tls
    contexts.follow(snapshot)
    deadline = trio.current_time() + snapshot.options.tls_handshake_timeout_s
    with trio.move_on_at(deadline):
        read = await read_client_hello(sock)
    if read.hello is None:  # garbage, EOF or the deadline: nothing to answer (Envoy closes too)
        return
    server_name = read.hello.server_name
    index = contexts.sni_index(lr).select(server_name)
    if index is None:
        _log_no_chain(ctx, sock, key, server_name)
        return
    chain = lr.listener.filter_chains[index]
    if chain.tls is None:
        if chain.tcp is not None:
            await proxy_l4(ctx, snapshot, sock, chain.tcp, new_tcp_log(sock, key, server_name), read.buffered)
        return
    context = contexts.server(chain.tls, SERVER_ALPN if chain.route_config is not None else ())
    if context is None:
        return
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        return
    transport = TLSTransport(sock, context, read.buffered)
    parked = None
    try:
        # An HTTP client speaks first: the session tickets leave with the first response (TLSTransport.do_handshake).
        if not await _handshake(transport, deadline, chain.route_config is not None) or _refused_client(transport, chain.tls):
            return None
        if chain.route_config is not None:
            down = Http1Downstream(ctx, transport, peer, local, "https", key, index, server_name or "", _client_cert_header(transport, chain.tls))
            if transport.selected_alpn_protocol() == "h2":
                await serve_h2_connection(down, b"")
            else:
                parked = await serve_http_connection(down)
        elif chain.tcp is not None:
            await proxy_l4(ctx, snapshot, transport, chain.tcp, new_tcp_log(sock, key, server_name))
    finally:
        if not parked:
            await transport.aclose()
    return parked


def _log_no_chain(ctx: WorkerContext, sock: socket.socket, key: str, server_name: str | None) -> None:
    """Envoy's `"- - -" 0 NR filter_chain_not_found` line; no TCP counters (no filter chain ran)."""
    log = new_tcp_log(sock, key, server_name)
    log.flags = "NR"
    log.details = "filter_chain_not_found"
    log.duration_ms = int((time.time() - log.start) * 1000)
    ctx.records.tcp_refused(log)


async def _handshake(transport: TLSTransport, deadline: float, hold_last_flight: bool) -> bool:
    with trio.move_on_at(deadline):
        try:
            await transport.do_handshake(hold_last_flight=hold_last_flight)
        except ssl.SSLError:
            await _linger(transport.sock)  # the alert was sent: let the client read it
            return False
        except (TransportClosed, trio.ClosedResourceError):
            return False
        return True
    return False  # Options.tls_handshake_timeout_s


LINGER_S = 1.0  # at most this long after a refused handshake (nginx's lingering close, bounded far below its 5 s)
LINGER_BYTES = 64 * 1024  # and at most this much of what the client had already sent is read and dropped


async def _linger(sock: socket.socket) -> None:
    """A lingering close after a refused handshake's alert: FIN, then read and drop what the client sent meanwhile
    (a TLS 1.3 client sends its request right after its Finished). Closing with those bytes unread would make the
    kernel answer with a reset, which can destroy the alert ("certificate required") before the client reads it."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    taken = 0
    with trio.move_on_after(LINGER_S):
        while taken < LINGER_BYTES:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(LINGER_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            taken += len(data)


def _client_cert_header(transport: TLSTransport, tls: ServerTLS) -> bytes | None:
    """x-forwarded-client-cert for the certificate a MUTUAL/OPTIONAL_MUTUAL client presented (verified by the
    handshake), None without one."""
    if tls.mode not in ("MUTUAL", "OPTIONAL_MUTUAL"):
        return None
    der = transport.getpeercert(binary_form=True)
    if not der:
        return None
    return forwarded_client_cert(der, transport.getpeercert() or {})


def _refused_client(transport: TLSTransport, tls: ServerTLS) -> bool:
    if tls.mode not in ("MUTUAL", "OPTIONAL_MUTUAL"):
        return False
    return client_certificate_failure(tls, transport.getpeercert(), transport.getpeercert(binary_form=True)) is not None
