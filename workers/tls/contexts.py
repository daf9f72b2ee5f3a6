# SSLContexts of a worker: building them from the table's TLS settings, and the per-worker cache that rebuilds them
# when their files change (rotation).
#
# Rules:
# - Server contexts: TLS 1.2–1.3 by default (Envoy's TLS_AUTO), Envoy's default cipher suites for TLS ≤ 1.2, the
#   chain's certificate, key and (MUTUAL) CA and CRL; ALPN as the listener serves it.
# - Origination (DestinationRule tls SIMPLE/MUTUAL, Istio's cluster_tls.go): SNI = `sni` or the request Host (auto
#   SNI). The server certificate is verified against `caCertificates` or the system store, then: with
#   subjectAltNames, one SAN must match them; without, and with no `sni`, the Host must match (auto SAN
#   validation); with `sni` and no SANs, only the chain is checked. insecureSkipVerify skips all checks. TCP
#   proxies have no Host: their contexts verify the chain and the SANs only.
# - Rotation: contexts are cached per (settings, ALPN). On use, at most every ROTATION_CHECK_INTERVAL_S, the files
#   the context came from are stat()ed (following symlinks, so Kubernetes' `..data` symlink swap shows as a new
#   inode); a changed signature rebuilds the context. A rebuild that fails (a half-written pair) keeps the previous
#   context and is retried on the next check. Sessions already established keep the context they started with.
from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence

import trio

from edge.table import ServerTLS, UpstreamTLS
from workers.netio import TransportClosed
from workers.tls.certs import ClientFiles, ServerFiles, TLSConfigError, certificate_sans, client_files, credential_paths, files_signature, openssl_cipher_names, sans_allowed, server_files
from workers.tls.sni import SniIndex
from workers.tls.transport import TLSTransport

ROTATION_CHECK_INTERVAL_S = 1.0
HTTP_ALPN = ("http/1.1",)

TLS_VERSIONS = {
    "TLSV1_0": ssl.TLSVersion.TLSv1,
    "TLSV1_1": ssl.TLSVersion.TLSv1_1,
    "TLSV1_2": ssl.TLSVersion.TLSv1_2,
    "TLSV1_3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_MIN_VERSION = ssl.TLSVersion.TLSv1_2  # TLS_AUTO as a minimum (Envoy server default)
DEFAULT_MAX_VERSION = ssl.TLSVersion.TLSv1_3  # TLS_AUTO as a maximum

# Envoy's default server cipher suites for TLS ≤ 1.2 (TLS 1.3 suites are not configurable, as in BoringSSL).
ENVOY_DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
# Envoy (BoringSSL) curve names → OpenSSL names.
ECDH_CURVES = {"X25519": "X25519", "P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}


def _tls_version(name: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    return TLS_VERSIONS.get(name, default)


def _set_ciphers(ctx: ssl.SSLContext, names: Sequence[str], legacy: bool) -> None:
    usable = []
    for name in openssl_cipher_names(names):
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.set_ciphers(name)
        except ssl.SSLError:
            continue  # unknown to OpenSSL: dropped, as Envoy drops invalid names
        usable.append(name)
    if not usable:
        raise TLSConfigError(f"none of the cipher suites {list(names)} is known to OpenSSL")
    spec = ":".join(usable)
    # OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures) at its default security level.
    ctx.set_ciphers(spec + (":@SECLEVEL=0" if legacy else ""))


def _load_crl(ctx: ssl.SSLContext, crl: str) -> None:
    """A certificate revocation list, checked for the peer's own certificate (Envoy checks the leaf by default)."""
    if not crl:
        return
    try:
        ctx.load_verify_locations(cafile=crl)
    except (OSError, ssl.SSLError) as exc:
        raise _load_error("CRL", crl, exc) from None
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _load_error(what: str, path: str, exc: Exception) -> TLSConfigError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return TLSConfigError(f"cannot load {what} {path}: {reason}")


def build_server_context(tls: ServerTLS, files: ServerFiles, alpn: Sequence[str] = HTTP_ALPN) -> ssl.SSLContext:
    """The SSLContext of one terminating filter chain; TLSConfigError when it cannot be built."""
    if not files.cert or not files.key:
        raise TLSConfigError("no server certificate: set serverCertificate/privateKey or credentialName")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # As BoringSSL in Envoy: no TLS 1.2 renegotiation (it would make writes wait for reads).
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    minimum = _tls_version(tls.min_version, DEFAULT_MIN_VERSION)
    maximum = _tls_version(tls.max_version, DEFAULT_MAX_VERSION)
    if minimum > maximum:
        raise TLSConfigError(f"minProtocolVersion {tls.min_version} is above maxProtocolVersion {tls.max_version}")
    legacy = minimum < ssl.TLSVersion.TLSv1_2
    _set_ciphers(ctx, tls.cipher_suites or ENVOY_DEFAULT_CIPHERS, legacy)
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum
    for cert, key in ((files.cert, files.key), *files.extra):
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("certificate/key", f"{cert} / {key}", exc) from None
    if tls.ecdh_curves:
        curve = ECDH_CURVES.get(tls.ecdh_curves[0], tls.ecdh_curves[0])
        try:
            ctx.set_ecdh_curve(curve)
        except (ValueError, ssl.SSLError) as exc:
            raise TLSConfigError(f"unknown ECDH curve {tls.ecdh_curves[0]}: {exc}") from None
    if tls.mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        if not files.ca:
            raise TLSConfigError(f"{tls.mode} needs caCertificates or a ca.crt in the credential")
        try:
            ctx.load_verify_locations(cafile=files.ca)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("client CA", files.ca, exc) from None
        _load_crl(ctx, files.crl)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.mode == "MUTUAL" else ssl.CERT_OPTIONAL
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class _SANCheckingSSLObject(ssl.SSLObject):
    """An SSLObject that refuses, right after the handshake, a peer whose SANs are not allowed by its
    context's `subject_alt_names` (Python's ssl has no verify callback)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        context = self.context
        allowed = getattr(context, "subject_alt_names", ())
        if allowed and context.verify_mode != ssl.CERT_NONE and not sans_allowed(certificate_sans(self.getpeercert()), allowed):
            error = ssl.SSLCertVerificationError(1, f"certificate verify failed: SANs match none of {list(allowed)}")
            # Shaped like OpenSSL's own verification errors, which callers read.
            error.library, error.reason = "SSL", "CERTIFICATE_VERIFY_FAILED"
            error.verify_code, error.verify_message = 1, f"SANs match none of {list(allowed)}"
            raise error


class UpstreamContext(ssl.SSLContext):
    """A client context that also checks the server certificate's SANs against `subject_alt_names`."""

    sslobject_class = _SANCheckingSSLObject
    subject_alt_names: tuple[str, ...] = ()


def build_upstream_tls_context(tls: UpstreamTLS, credentials_dir: str | None, *, for_http: bool = True) -> ssl.SSLContext:
    """An SSLContext for TLS origination (DestinationRule trafficPolicy.tls SIMPLE/MUTUAL).

    for_http: the caller passes the request Host as server_hostname when `sni` is empty, and it is
    verified (auto SAN validation). TCP proxies have no Host and verify the chain and SANs only."""
    return _build_upstream(tls, client_files(tls, credentials_dir), for_http=for_http)


def _build_upstream(tls: UpstreamTLS, files: ClientFiles, *, for_http: bool | str) -> ssl.SSLContext:
    ctx = UpstreamContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if files.ca:
                ctx.load_verify_locations(cafile=files.ca)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("CA", files.ca, exc) from None
        _load_crl(ctx, files.crl)
        ctx.subject_alt_names = tuple(tls.subject_alt_names)
        # Auto SAN validation: only when neither SANs nor an explicit SNI are configured (cluster_tls.go).
        ctx.check_hostname = bool(for_http) and not tls.subject_alt_names and not tls.sni
    if tls.mode == "MUTUAL":
        if not files.cert or not files.key:
            raise TLSConfigError("MUTUAL needs clientCertificate/privateKey or credentialName")
        try:
            ctx.load_cert_chain(files.cert, files.key)
        except (OSError, ssl.SSLError) as exc:
            raise _load_error("client certificate/key", f"{files.cert} / {files.key}", exc) from None
    if for_http:  # "h2": an HTTP/2 cluster offers h2 alone (Istio's ALPNH2Only)
        ctx.set_alpn_protocols(["h2"] if for_http == "h2" else list(HTTP_ALPN))
    return ctx


class _Entry:
    __slots__ = ("checked_at", "context", "error", "signature")

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self.signature: tuple | None = None
        self.checked_at = -1e18
        self.error = ""


class TLSContexts:
    """Per-worker SSLContexts, rebuilt when their files change (see the module rules)."""

    def __init__(self, credentials_dir: str | None, log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.credentials_dir = credentials_dir
        self.log = log or (lambda message: None)
        self.clock = clock
        self.entries: dict[tuple, _Entry] = {}
        self.rebuilds = 0
        self.sni_indexes: dict[int, tuple[object, SniIndex]] = {}
        self._generation = -1

    # -- contexts

    def server(self, tls: ServerTLS, alpn: Sequence[str] = HTTP_ALPN) -> ssl.SSLContext | None:
        """The context of a terminating chain, None while it cannot be built (logged once per reason)."""
        return self._get(("server", tls, tuple(alpn)))

    def upstream(self, tls: UpstreamTLS, *, for_http: bool | str = True) -> ssl.SSLContext:
        """The origination context; raises TLSConfigError while it cannot be built."""
        key = ("upstream", tls, for_http)
        ctx = self._get(key)
        if ctx is None:
            raise TLSConfigError(self.entries[key].error)
        return ctx

    def upstream_l4(self, tls: UpstreamTLS) -> ssl.SSLContext | None:
        """The origination context of a TCP proxy (no Host to verify), None while it cannot be built."""
        return self._get(("upstream", tls, False))

    async def connect_l4(self, sock: socket.socket, tls: UpstreamTLS) -> TLSTransport | None:
        """TLS origination for a TCP proxy over a connected socket; None when it cannot be established
        (the caller bounds the time and closes the socket)."""
        ctx = self.upstream_l4(tls)
        if ctx is None:
            return None
        transport = TLSTransport(sock, ctx, server_side=False, server_hostname=tls.sni or None)
        try:
            await transport.do_handshake()
        except (ssl.SSLError, TransportClosed, trio.ClosedResourceError):
            return None
        return transport

    def _get(self, key: tuple) -> ssl.SSLContext | None:
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry()
        now = self.clock()
        if now - entry.checked_at < ROTATION_CHECK_INTERVAL_S:
            return entry.context
        entry.checked_at = now
        kind, tls, option = key
        files = server_files(tls, self.credentials_dir) if kind == "server" else client_files(tls, self.credentials_dir)
        signature = files_signature(credential_paths(files))
        if signature == entry.signature and (entry.context is not None or entry.error):
            return entry.context
        try:
            if kind == "server":
                context = build_server_context(tls, files, option)
            else:
                context = _build_upstream(tls, files, for_http=option)
        except TLSConfigError as exc:
            message = str(exc)
            if message != entry.error:
                state = "keeping the previous certificate" if entry.context is not None else "connections using it are refused"
                self.log(f"TLS {kind} context: {message}; {state}")
            entry.error = message
            if entry.context is None:
                entry.signature = signature
            # else: keep the old signature so the next check retries (a half-written pair completes)
            return entry.context
        if entry.context is not None:
            self.log(f"TLS {kind} context reloaded: {', '.join(credential_paths(files))}")
        self.rebuilds += 1
        entry.context = context
        entry.signature = signature
        entry.error = ""
        return context

    # -- per-table state

    def follow(self, compiled) -> None:
        """On a new table generation, forget SNI indexes and contexts no chain or cluster uses any more."""
        if compiled.generation == self._generation:
            return
        self._generation = compiled.generation
        self.sni_indexes.clear()
        live: set = set()
        for lr in compiled.listeners.values():
            for chain in lr.listener.filter_chains:
                if chain.tls is not None:
                    live.add(chain.tls)
        for cr in compiled.clusters.values():
            if cr.cluster.tls is not None:
                live.add(cr.cluster.tls)
        for key in [k for k in self.entries if k[1] not in live]:
            del self.entries[key]

    def sni_index(self, lr) -> SniIndex:
        cached = self.sni_indexes.get(id(lr))
        if cached is not None and cached[0] is lr:
            return cached[1]
        index = SniIndex(lr.listener.filter_chains)
        self.sni_indexes[id(lr)] = (lr, index)
        return index
